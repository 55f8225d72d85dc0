"""
Fingerprint a batch's items and reuse the outputs of those unchanged since an earlier run.

An item's fingerprint covers its model, prompt, parameters and each input image's identity (read with
HEAD requests within a budget); an item whose fingerprint matches a ``COMPLETED`` item of an earlier
run, with its outputs present, is copied instead of submitted.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from airflow_provider_firered.batch.earlier_runs import copy_outputs
from airflow_provider_firered.batch.items import fingerprint, source_identities
from airflow_provider_firered.batch.manifest import previous_entries
from airflow_provider_firered.exceptions import FireRedError
from airflow_provider_firered.utils import metrics
from airflow_provider_firered.utils.metrics import Metric

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from airflow_provider_firered.batch.earlier_runs import EarlierBatch
    from airflow_provider_firered.batch.items import BatchItem
    from airflow_provider_firered.batch.manifest import ManifestEntry
    from airflow_provider_firered.batch.settings import BatchLog
    from airflow_provider_firered.batch.state import BatchState
    from airflow_provider_firered.gateway.connection import GatewaySettings

#: Seconds one fingerprint phase (the HEAD requests of a wave's items) may take at most; the URLs not
#: identified by then count as changed (their items are edited, not reused, on the next night).
FINGERPRINT_BUDGET = 120.0


def fingerprint_items(
    batch: BatchState, items: list[BatchItem], settings: GatewaySettings, threads: int
) -> None:
    """
    Fingerprint those of ``items`` not fingerprinted yet.

    The phase ends at :data:`FINGERPRINT_BUDGET` or the batch's deadline, whichever comes first: an
    image not identified in time leaves its item unfingerprinted (changed, for the next night).

    :param batch: the batch's state, whose entries keep the fingerprints.
    :param items: the items to fingerprint.
    :param settings: the connection's settings (host policy, timeout).
    :param threads: how many HEAD requests run at once.
    """
    todo = [item for item in items if batch.entries[item.key].fingerprint is None]
    if not todo:
        return
    deadline = time.time() + FINGERPRINT_BUDGET
    if batch.deadline > 0:
        deadline = min(deadline, batch.deadline)
    identities = source_identities(
        (url for item in todo for url in item.images), settings, threads=threads, deadline=deadline
    )
    for item in todo:
        batch.entries[item.key].fingerprint = fingerprint(item, identities)


def reuse_unchanged(
    batch: BatchState,
    previous: Iterable[str],
    root: Path | ObjectStoragePath,
    *,
    max_bytes: int,
    threads: int,
    log: BatchLog,
) -> None:
    """
    Copy the queued items unchanged since ``previous`` instead of submitting them.

    An unchanged item that ended ``FAILED`` there is not paid for again: ``FAILED`` is the gateway's
    verdict on this very input, and it was charged (``force=True``, or any change to the item, edits
    it).

    :param batch: the batch's state.
    :param previous: the earlier runs' output roots.
    :param root: this batch's output root.
    :param max_bytes: the most bytes one copied output may hold (the connection's
        ``max_download_bytes``).
    :param threads: how many items are copied at once.
    :param log: where to say why an item cannot reuse its outputs.
    """
    todo = [item for item in batch.queue if batch.entries[item.key].fingerprint is not None]
    if not todo:
        return
    earlier = previous_entries(previous)
    for item in list(todo):
        entry = earlier.get(item.key, (None, None))[0]
        verdict, reason = earlier_verdict(entry, batch.entries[item.key].fingerprint)
        if entry is not None and verdict == "FAILED":
            batch.fail(item, "FAILED", reason)
            batch.entries[item.key].request_id = entry.request_id
            todo.remove(item)

    def reuse(item: BatchItem) -> tuple[BatchItem, list[str] | None]:
        return item, _reuse(batch, item, earlier.get(item.key), root, max_bytes, log)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        copied = list(pool.map(reuse, todo))
    reused: Counter[str] = Counter()
    for item, outputs in copied:
        if outputs is not None:
            batch.reused(item, outputs, earlier[item.key][0].request_id)
            reused[item.model] += 1
    for model, n in reused.items():  # counted once copied: a dry run's plan copies nothing
        metrics.count(Metric.EDITS_REUSED, n, model=model)


def _reuse(
    batch: BatchState,
    item: BatchItem,
    earlier: tuple[ManifestEntry, EarlierBatch] | None,
    root: Path | ObjectStoragePath,
    max_bytes: int,
    log: BatchLog,
) -> list[str] | None:
    """
    Copy an unchanged item's earlier outputs into its folder; None when it cannot be reused.

    Only regular image files inside the earlier run's own folder are copied, within ``max_bytes``
    (see :func:`~airflow_provider_firered.batch.earlier_runs.copy_outputs`).
    """
    if earlier is None:
        return None
    entry, earlier_batch = earlier
    if earlier_verdict(entry, batch.entries[item.key].fingerprint)[0] != "UNCHANGED":
        return None
    try:
        return copy_outputs(entry, earlier_batch, root / item.key, max_bytes=max_bytes)
    except (OSError, FireRedError) as err:
        log.info("Item %s cannot reuse its earlier outputs (%s): editing it", item.key, err)
        return None


def earlier_verdict(entry: ManifestEntry | None, mine: str | None) -> tuple[str, str]:
    """
    Return what an earlier run's entry means for an item now: a code and the reason in words.

    ``UNCHANGED``: its outputs are copied (if they can be); ``FAILED``: it fails again without being
    paid for; anything else (``NEW``, ``CHANGED``, ``NOT_DONE``): it is edited.

    :param entry: the item's entry in the earlier runs, if any.
    :param mine: the item's fingerprint now (None when its inputs could not be identified).
    """
    if entry is None:
        return "NEW", "not in the earlier runs"
    if mine is None or entry.fingerprint != mine:
        return "CHANGED", "changed since the earlier run (or its inputs could not be identified)"
    if entry.status == "FAILED":
        return "FAILED", (
            f"unchanged since an earlier run where it ended FAILED (request {entry.request_id}): "
            f"{entry.error}; not submitted again"
        )
    if entry.status == "COMPLETED" and entry.outputs and entry.outcome in ("edited", "reused"):
        return "UNCHANGED", f"unchanged since the earlier run (request {entry.request_id}): outputs copied"
    return "NOT_DONE", f"the earlier run did not complete it ({entry.outcome}, {entry.status})"


def plan_reuse(batch: BatchState, previous: Iterable[str]) -> dict[str, tuple[str, str]]:
    """
    Return what the earlier runs mean for each item still to submit, by key, copying nothing.

    :param batch: the batch's state, its items fingerprinted.
    :param previous: the earlier runs' output roots.
    """
    earlier = previous_entries(previous)
    return {
        item.key: earlier_verdict(earlier.get(item.key, (None, None))[0], batch.entries[item.key].fingerprint)
        for item in batch.queue
    }
