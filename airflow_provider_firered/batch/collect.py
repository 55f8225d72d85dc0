"""
Collect a batch's jobs: download what completed, and find what still runs after a user's clear.

Both run ``download_threads`` at a time, each thread with its own media session, on the connection's
settings resolved once beforehand.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from airflow_provider_firered.exceptions import FireRedApiError, FireRedError
from airflow_provider_firered.gateway.results import JobStatus
from airflow_provider_firered.media.hosts import new_media_session

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from airflow_provider_firered.batch.items import BatchItem
    from airflow_provider_firered.batch.settings import BatchLog
    from airflow_provider_firered.batch.state import BatchState, Completed
    from airflow_provider_firered.batch.store import StoredRequest
    from airflow_provider_firered.gateway.results import JobStatusResult
    from airflow_provider_firered.hooks.firered import FireRedHook


def download_completed(
    batch: BatchState,
    completed: list[Completed],
    hook: FireRedHook,
    root: Path | ObjectStoragePath,
    threads: int,
) -> None:
    """
    Download the completed jobs' outputs to ``<root>/<key>/``, several at once; record each in ``batch``.

    A failure to download or save an item's outputs fails that item (``DOWNLOAD``), not the batch.

    :param batch: the batch's state.
    :param completed: the completed jobs (:meth:`BatchState.settle`).
    :param hook: the FireRed hook (connection settings, download bounds).
    :param root: the batch's output root.
    :param threads: how many downloads run at once.
    """
    if not completed:
        return
    local = threading.local()

    def fetch(job: Completed) -> tuple[BatchItem, list[str] | FireRedError]:
        item, rid, ended = job
        if not hasattr(local, "session"):
            local.session = new_media_session()
        result = {"request_id": rid, "media_urls": list(ended.media_urls), "media_type": ended.media_type}
        try:
            paths = hook.download_outputs(
                result, root / item.key, max_outputs=item.max_outputs, session=local.session
            )
        except FireRedError as err:
            return item, err
        except OSError as err:  # this item's folder, not the batch: recorded against the item
            return item, FireRedError(f"its outputs could not be saved: {err}")
        return item, paths

    hook.settings  # noqa: B018  resolved once here, not in every thread
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for item, outcome in pool.map(fetch, completed):
            batch.downloaded(item, outcome)


def still_running_after_clear(
    cleared: dict[str, StoredRequest], hook: FireRedHook, threads: int, log: BatchLog
) -> dict[str, StoredRequest]:
    """
    Return, of the jobs stored before a user's clear for items left unchanged, those still running.

    One status read each, ``threads`` at once; a job still ``QUEUED`` or ``PROCESSING`` is kept. A
    clear asks for new edits, but such a job was never collected (its task was stopped by a user
    while deferred, or crashed) and is paid for: it is collected instead of paying again. A job that
    ended, or that the gateway forgot (``404``), is submitted afresh, as a clear asks.

    :param cleared: item key -> its request stored before the clear, for the same edit.
    :param hook: the FireRed hook.
    :param threads: how many status reads run at once.
    :param log: where to say what was found.
    """
    if not cleared:
        return {}

    def read(request: StoredRequest) -> JobStatusResult | None:
        try:
            return hook.get_status(request.request_id)
        except FireRedApiError as err:
            if err.status_code == 404:  # forgotten by the gateway: nothing left to collect
                return None
            raise

    hook.settings  # noqa: B018  resolved once here, not in every thread
    with ThreadPoolExecutor(max_workers=min(threads, len(cleared))) as pool:
        statuses = list(pool.map(read, cleared.values()))
    running = {
        key: request
        for (key, request), status in zip(cleared.items(), statuses, strict=True)
        if status is not None and status.status in (JobStatus.QUEUED, JobStatus.PROCESSING)
    }
    log.info(
        "The task was cleared after %d unchanged item(s) were submitted: %d still running, collected "
        "instead of paying for them again; the rest are submitted afresh, as asked",
        len(cleared),
        len(running),
    )
    return running
