"""Operator that runs many FireRed edits in one task: waves of submits, one trigger, one manifest."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeGuard

from airflow.providers.common.compat.sdk import BaseOperator, conf

from airflow_provider_firered.batch.earlier_runs import copy_outputs
from airflow_provider_firered.batch.items import BatchItem, check_items, fingerprint, source_identities
from airflow_provider_firered.batch.manifest import (
    ManifestEntry,
    manifest_path,
    previous_entries,
    read_manifest,
    write_manifest,
)
from airflow_provider_firered.batch.state import (
    RESUBMITTED_STATUSES,
    RESUMED_STATUSES,
    BatchState,
    StoredRequest,
    cleared_request,
    edit_digest,
    stored_request,
)
from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedBatchFailedError,
    FireRedConnectionError,
    FireRedError,
    FireRedSubmitUncertainError,
    FireRedValidationError,
    airflow_errors,
)
from airflow_provider_firered.gateway.options import DEFAULT_MODEL
from airflow_provider_firered.gateway.results import JobStatus, JobStatusResult, SubmitResult
from airflow_provider_firered.gateway.wait_policy import WaitPolicy, validate_timeout
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.media.output_paths import as_target
from airflow_provider_firered.triggers.firered_batch import RESUME_AFTER, FireRedBatchStatusTrigger
from airflow_provider_firered.triggers.polling import DEFER_SLACK
from airflow_provider_firered.utils.atomic_files import write_atomic
from airflow_provider_firered.utils.saturation import (
    MIN_DEFERRAL_SECONDS,
    saturation_delay,
    saturation_trigger,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from airflow.providers.common.compat.sdk import ObjectStoragePath
    from airflow.sdk import Context

    from airflow_provider_firered.batch.earlier_runs import EarlierBatch

#: The progress file beside the manifest: which try's work the manifest holds.
PROGRESS_NAME = "_batch.json"
#: task_state_store key of an item's request id: ``<prefix><key>``.
STATE_KEY_PREFIX = "firered_batch:"
#: Answers that refuse every submit of the batch alike (the key, the subscription).
BATCH_REFUSALS = frozenset({401, 402, 403})
MAX_IN_FLIGHT = 10_000
#: Seconds one fingerprint phase (the HEAD requests of a wave's items) may take at most; the URLs not
#: identified by then count as changed (their items are edited, not reused, on the next night).
FINGERPRINT_BUDGET = 120.0


class FireRedBatchEditOperator(BaseOperator):
    """
    Edit many images in one task: submit on the worker in waves of at most ``max_in_flight`` unfinished
    jobs, wait for all of them in one trigger (or on the worker), download every output to
    ``<output_root>/<key>/`` and write ``<output_root>/_manifest.jsonl``.

    Every item is checked before anything is paid; an invalid item is reported and never sent. Each
    request id is kept in ``task_state_store`` (Airflow 3.3+) as soon as the gateway accepts it, and the
    manifest records the batch's progress at every wave, so a retry resumes: finished items are not
    touched, unfinished ones are waited for, ``FAILED`` ones are not paid again and ``ERROR`` ones are
    submitted again. A user's clear starts afresh, except that a job still running (its task was
    stopped by a user while deferred) of an item left unchanged is collected, not paid again. An item
    whose fingerprint (model, prompt, parameters, and each input image's URL, ``ETag``,
    ``Last-Modified`` and ``Content-Length``) matches a ``COMPLETED`` item of ``previous`` with its
    outputs present is copied, not submitted.

    Returns ``{"total", "edited", "reused", "failed", "manifest", "output_root"}``; per-item results
    are in the manifest, not in XCom.

    :param edits: the items: ``{"key", "prompt", "images"}`` and optionally ``model`` and
        ``parameters``. ``key`` names the item's output folder: a plain folder name, unique in the
        batch. (templated; may be an XCom)
    :param output_root: where outputs and the manifest go: a local folder or an object storage URL.
        (templated)
    :param model: the model of items that do not name one.
    :param parameters: the options of items that do not give theirs. (templated)
    :param firered_conn_id: the FireRed connection.
    :param max_in_flight: the most jobs of this batch unfinished at the gateway at once.
    :param poll_interval: seconds between status reads of each job, at least 1.
    :param timeout: seconds one try of the batch may wait in all; unfinished items then fail (a retry
        waits for them again).
    :param start_timeout: seconds a job may stay ``QUEUED`` after its submit; it then fails (final).
    :param max_failed: how many items may fail before the task fails (after every success is collected).
    :param previous: an earlier run's output root, or a list of them, whose unchanged items are reused;
        a root holds a manifest itself or in its direct subfolders. (templated)
    :param force: edit every item, reusing nothing.
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param download_threads: how many submits, downloads and HEAD requests run at once.
    """

    template_fields: Sequence[str] = ("edits", "output_root", "parameters", "previous")
    template_fields_renderers = {"edits": "json", "parameters": "json"}
    ui_color = "#ffd0bd"

    def __init__(
        self,
        *,
        edits: list[dict[str, Any]],
        output_root: str,
        model: str = DEFAULT_MODEL,
        parameters: dict[str, Any] | None = None,
        firered_conn_id: str = FireRedHook.default_conn_name,
        max_in_flight: int = 100,
        poll_interval: float = 10.0,
        timeout: float = 6 * 3600.0,
        start_timeout: float | None = None,
        max_failed: int = 0,
        previous: str | list[str] | None = None,
        force: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        download_threads: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.edits = edits
        self.output_root = output_root
        self.model = model
        self.parameters = parameters
        self.firered_conn_id = firered_conn_id
        self.max_in_flight = max_in_flight
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.max_failed = max_failed
        self.previous = previous
        self.force = force
        self.deferrable = deferrable
        self.download_threads = download_threads

    @cached_property
    def hook(self) -> FireRedHook:
        """The FireRed hook (created on first use, never in ``__init__``)."""
        return FireRedHook(self.firered_conn_id, request_log_level=logging.DEBUG)

    # -- arguments ----------------------------------------------------------------------------------

    def _check_arguments(self) -> None:
        WaitPolicy(self.poll_interval, None, self.start_timeout)
        for name, value, low, high in (
            ("max_in_flight", self.max_in_flight, 1, MAX_IN_FLIGHT),
            ("max_failed", self.max_failed, 0, None),
            ("download_threads", self.download_threads, 1, 64),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < low
                or (high and value > high)
            ):
                allowed = f"from {low} to {high}" if high else f"at least {low}"
                raise FireRedValidationError(name, f"must be a whole number {allowed}, got {value!r}")
        validate_timeout(self.timeout)
        if not self.output_root or not isinstance(self.output_root, str):
            raise FireRedValidationError(
                "output_root", f"must be a folder path or URL, got {self.output_root!r}"
            )
        as_target(self.output_root, field_name="output_root")
        if not all(isinstance(root, str) and root for root in self._previous_roots()):
            raise FireRedValidationError(
                "previous", f"must be a path or URL, or a list of them, got {self.previous!r}"
            )

    def _previous_roots(self) -> list[str]:
        if self.previous is None or self.previous == "":
            return []
        return list(self.previous) if isinstance(self.previous, (list, tuple)) else [self.previous]

    # -- Airflow's entry points ---------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        with airflow_errors():
            self._check_arguments()
            batch = self._start(context)
            return self._advance(context, batch)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger fired: collect what ended, then submit the next wave or finish."""
        with airflow_errors():
            self._check_arguments()
            batch = self._continue()
            batch.take_event(event)
            return self._advance(context, batch)

    def resume_after_saturation(
        self,
        context: Context,
        event: Any = None,  # noqa: ARG002  Airflow passes the timer's event; the moment is all it says
        deadline: float = 0.0,
    ) -> dict[str, Any]:
        """
        Resume after waiting out a saturated gateway: submit again, within the same try's deadline.

        :param event: the timer's event (unused).
        :param deadline: when the try stops waiting (epoch seconds).
        """
        with airflow_errors():
            self._check_arguments()
            batch = self._continue()
            if not deadline:  # (``dag.test()`` passes the event alone): the progress file keeps it
                found = _read_progress(as_target(self.output_root, field_name="output_root"))
                kept = found.get("deadline")
                deadline = kept if isinstance(kept, float) else 0.0
            batch.deadline = deadline
            return self._advance(context, batch)

    # -- building the batch's state ------------------------------------------------------------------

    def _items(self) -> tuple[list[BatchItem], dict[str, ManifestEntry]]:
        items, invalid = check_items(self.edits, self.model, self.parameters)
        failed = {bad.key: ManifestEntry(bad.key, "failed", "INVALID", error=bad.error) for bad in invalid}
        for bad in invalid:
            self.log.warning("Item %s is invalid and is not sent: %s", bad.key, bad.error)
        return items, failed

    def _start(self, context: Context) -> BatchState:
        """A new try: resume the manifest this task's earlier try wrote, else start afresh."""
        items, invalid = self._items()
        ti = context["ti"]
        root = as_target(self.output_root, field_name="output_root")
        progress = {"task": _task_of(ti), "max_tries": ti.max_tries}
        earlier = self._resumable(root, progress)
        batch = BatchState(self, items, invalid, deadline=time.time() + self.timeout)
        store = self._retry_store(context)
        stored: dict[str, StoredRequest | None] = {}
        cleared: dict[str, StoredRequest] = {}
        for item in items:
            value = None if store is None else store.get(STATE_KEY_PREFIX + item.key)
            stored[item.key] = stored_request(value, ti.max_tries)
            if not (earlier and item.key in earlier):  # what this try series recorded comes first
                found = cleared_request(value, ti.max_tries, edit_digest(item))
                if found is not None:
                    cleared[item.key] = found
        running = self._still_running_after_clear(cleared)
        for item in items:
            entry = earlier.get(item.key) if earlier else None
            batch.resume(item, entry, stored[item.key] or running.get(item.key))
        for key, request in running.items():
            if batch.entries[key].request_id == request.request_id:
                batch.collected_after_clear.append(batch.items[key])
                # Stored again as this try's own: a retry of it then resumes the job as any retry does.
                store.set(
                    STATE_KEY_PREFIX + key,
                    {
                        "request_id": request.request_id,
                        "max_tries": ti.max_tries,
                        "attempt": request.attempt,
                        "edit": edit_digest(batch.items[key]),
                    },
                )
        self._write_progress(root, {**progress, "deadline": batch.deadline})
        if self._previous_roots() and not self.force:
            # Compared with the earlier run before anything is submitted; otherwise the fingerprints
            # (for the next night) are read after each wave's submits, never delaying one.
            self._fingerprint(batch, batch.queue)
            self._reuse_unchanged(batch)
        self.log.info(
            "Batch of %d item(s): %d invalid, %d done before, %d reused, %d to wait for, %d to submit",
            len(items) + len(invalid),
            len(invalid),
            batch.count("edited") + batch.count("reused") - batch.reused_now,
            batch.reused_now,
            len(batch.in_flight),
            len(batch.queue),
        )
        return batch

    def _continue(self) -> BatchState:
        """A later wave of the same try: the manifest written before deferring holds the state."""
        items, invalid = self._items()
        entries = read_manifest(self.output_root) or []
        by_key = {entry.key: entry for entry in entries}
        batch = BatchState(self, items, invalid, deadline=0.0)
        for item in items:
            batch.carry(item, by_key.get(item.key))
        return batch

    def _still_running_after_clear(self, cleared: dict[str, StoredRequest]) -> dict[str, StoredRequest]:
        """
        Of the jobs stored before a user's clear for items left unchanged, those still ``QUEUED`` or
        ``PROCESSING``: one status read each, ``download_threads`` at once.

        A clear asks for new edits, but such a job was never collected (its task was stopped by a user
        while deferred, or crashed) and is paid for: it is collected instead of paying again. A job
        that ended, or that the gateway forgot (``404``), is submitted afresh, as a clear asks.

        :param cleared: item key -> its request stored before the clear, for the same edit.
        """
        if not cleared:
            return {}

        def read(request: StoredRequest) -> JobStatusResult | None:
            try:
                return self.hook.get_status(request.request_id)
            except FireRedApiError as err:
                if err.status_code == 404:  # forgotten by the gateway: nothing left to collect
                    return None
                raise

        self.hook.settings  # noqa: B018  resolved once here, not in every thread
        with ThreadPoolExecutor(max_workers=min(self.download_threads, len(cleared))) as pool:
            statuses = list(pool.map(read, cleared.values()))
        running = {
            key: request
            for (key, request), status in zip(cleared.items(), statuses, strict=True)
            if status is not None and status.status in (JobStatus.QUEUED, JobStatus.PROCESSING)
        }
        self.log.info(
            "The task was cleared after %d unchanged item(s) were submitted: %d still running, collected "
            "instead of paying for them again; the rest are submitted afresh, as asked",
            len(cleared),
            len(running),
        )
        return running

    def _retry_store(self, context: Context) -> Any:
        """
        The ``task_state_store`` to read stored request ids from: on a retry only (a first try has
        none, and each read is a call to Airflow), whether or not this worker finds the manifest.
        """
        store = context.get("task_state_store")  # type: ignore[call-overload,unused-ignore]  # 3.3+ key
        if store is None:
            self.log.info(
                "This Airflow has no task_state_store (3.3+): crash recovery for batches rests on the "
                "manifest alone; a retry that cannot read it (a local output_root on another worker) "
                "submits the unfinished items again"
            )
            return None
        return store if context["ti"].try_number > 1 else None

    def _resumable(
        self, root: Path | ObjectStoragePath, progress: dict[str, Any]
    ) -> dict[str, ManifestEntry] | None:
        """
        The manifest an earlier try of this task instance wrote (empty if it wrote none before it
        stopped); None when there was no such try: a new batch, a task cleared since (a clear changes
        ``max_tries``), or a folder that holds another task's or another run's batch.
        """
        found = _read_progress(root)
        if {name: found.get(name) for name in progress} != progress:
            self.log.info(
                "No earlier manifest of this batch to resume (new, cleared, or not on this disk): "
                "only stored request ids are taken up"
            )
            return None
        return {entry.key: entry for entry in read_manifest(root) or []}

    @staticmethod
    def _write_progress(root: Path | ObjectStoragePath, progress: dict[str, Any]) -> None:
        write_atomic(root / PROGRESS_NAME, json.dumps(progress))

    def _save(self, batch: BatchState) -> str:
        """Write the manifest: the batch's progress, and what a retry takes up."""
        return write_manifest(self.output_root, batch.manifest())

    def _fingerprint(self, batch: BatchState, items: list[BatchItem]) -> None:
        """
        Fingerprint those of ``items`` not fingerprinted yet, within :data:`FINGERPRINT_BUDGET` and
        the batch's deadline (an image not identified in time leaves its item unfingerprinted:
        changed, for the next night).
        """
        todo = [item for item in items if batch.entries[item.key].fingerprint is None]
        if not todo:
            return
        deadline = time.time() + FINGERPRINT_BUDGET
        if batch.deadline > 0:
            deadline = min(deadline, batch.deadline)
        identities = source_identities(
            (url for item in todo for url in item.images),
            self.hook.settings,
            threads=self.download_threads,
            deadline=deadline,
        )
        for item in todo:
            batch.entries[item.key].fingerprint = fingerprint(item, identities)

    def _reuse_unchanged(self, batch: BatchState) -> None:
        """
        Copy the queued items unchanged since ``previous`` instead of submitting them, and do not pay
        again for one that ended ``FAILED`` there.
        """
        todo = [item for item in batch.queue if batch.entries[item.key].fingerprint is not None]
        if not todo:
            return
        earlier = previous_entries(self._previous_roots())
        for item in list(todo):
            entry = earlier.get(item.key, (None, None))[0]
            mine = batch.entries[item.key].fingerprint
            if (
                entry is not None
                and mine is not None
                and entry.fingerprint == mine
                and entry.status == "FAILED"
            ):
                # FAILED is the gateway's verdict on this very input, and it was charged: the same
                # input is not paid for again (force=True, or any change to the item, edits it).
                batch.fail(
                    item,
                    "FAILED",
                    f"unchanged since an earlier run where it ended FAILED (request {entry.request_id}): "
                    f"{entry.error}; not submitted again",
                )
                batch.entries[item.key].request_id = entry.request_id
                todo.remove(item)
        with ThreadPoolExecutor(max_workers=self.download_threads) as pool:
            copied = list(
                pool.map(lambda item: (item, self._reuse(batch, item, earlier.get(item.key))), todo)
            )
        for item, outputs in copied:
            if outputs is not None:
                batch.reused(item, outputs, earlier[item.key][0].request_id)

    def _reuse(
        self,
        batch: BatchState,
        item: BatchItem,
        earlier: tuple[ManifestEntry, EarlierBatch] | None,
    ) -> list[str] | None:
        """
        Copy an unchanged item's earlier outputs into its folder; None when it cannot be reused.

        Only regular image files inside the earlier run's own folder are copied, within the
        connection's ``max_download_bytes``
        (see :func:`~airflow_provider_firered.batch.earlier_runs.copy_outputs`).
        """
        if earlier is None:
            return None
        entry, earlier_batch = earlier
        mine = batch.entries[item.key].fingerprint
        if mine is None or entry.fingerprint != mine or entry.status != "COMPLETED" or not entry.outputs:
            return None
        if entry.outcome not in ("edited", "reused"):
            return None
        try:
            return copy_outputs(
                entry, earlier_batch, batch.root / item.key, max_bytes=self.hook.settings.max_download_bytes
            )
        except (OSError, FireRedError) as err:
            self.log.info("Item %s cannot reuse its earlier outputs (%s): editing it", item.key, err)
            return None

    # -- waves -----------------------------------------------------------------------------------------

    def _advance(self, context: Context, batch: BatchState) -> dict[str, Any]:
        """
        Free the slots of what ended, submit the next wave into them, then download what completed
        and wait (deferred or here) or finish. Submitting before downloading keeps the gateway busy
        while the outputs come in.
        """
        while True:
            completed = batch.settle()
            answers = _WaveAnswers()
            if batch.timed_out():
                batch.give_up_waiting()
            else:
                try:
                    self._submit_wave(context, batch, answers)
                except _SaturatedError as saturated:
                    return self._wait_for_room(batch, saturated.error)
                except Exception:
                    # What this wave learnt survives any failure (the gateway's, or Airflow's store):
                    # an accepted or uncertain submit must stay recorded, or the retry would pay for it
                    # again. Completed jobs stay pending with their request id: the retry collects them.
                    self._save(batch)
                    raise
                if answers.answered:
                    # Every accepted request id is recorded before anything else can fail or wait:
                    # a worker lost during the downloads below leaves its retry nothing to pay again.
                    self._save(batch)
                self._fingerprint(batch, answers.accepted + batch.collected_after_clear)
                batch.collected_after_clear = []
            submitted = len(answers.accepted)
            batch.download(completed)
            self.log.info(
                "Wave: %d output(s) collected, %d submitted; %d edited, %d reused, %d failed so far; "
                "%d unfinished at the gateway, %d still to submit",
                len(completed),
                submitted,
                batch.count("edited"),
                batch.count("reused"),
                batch.count("failed"),
                len(batch.in_flight),
                len(batch.queue),
            )
            if not batch.in_flight:
                return self._finish(batch)
            self._save(batch)
            trigger = FireRedBatchStatusTrigger(
                requests=[[rid, start] for rid, (_key, start) in batch.in_flight.items()],
                firered_conn_id=self.firered_conn_id,
                poll_interval=self.poll_interval,
                deadline=batch.deadline,
                min_ended=wake_after(len(batch.in_flight), len(batch.queue)),
                not_before=time.time() + RESUME_AFTER if self.deferrable else 0.0,
                manifest=str(manifest_path(self.output_root)),
            )
            if self.deferrable:
                self.defer(
                    trigger=trigger,
                    method_name="execute_complete",
                    timeout=timedelta(seconds=max(batch.deadline - time.time(), 0) + DEFER_SLACK),
                )
            batch.take_event(asyncio.run(_first_event(trigger)))

    def _wait_for_room(self, batch: BatchState, error: FireRedApiError) -> dict[str, Any]:
        """
        The gateway is saturated and none of this batch's jobs is running: defer on a timer (no
        worker slot held) until its ``Retry-After``, then submit again; past the try's deadline the
        queued items fail ``NOT_SUBMITTED`` instead (a retry submits them).
        """
        delay = max(saturation_delay(error, self.hook.settings.retry.max_retry_after), MIN_DEFERRAL_SECONDS)
        if time.time() + delay >= batch.deadline:
            batch.give_up_waiting()
            return self._finish(batch)
        self._save(batch)
        self.log.warning(
            "The gateway is saturated (%s) and no job of this batch is running: deferring for %.1fs, "
            "holding no worker slot, then submitting again",
            error,
            delay,
        )
        self.defer(
            trigger=saturation_trigger(delay),
            method_name="resume_after_saturation",
            kwargs={"deadline": batch.deadline},
            timeout=timedelta(seconds=delay + DEFER_SLACK),
        )
        raise AssertionError("unreachable: defer() raises")  # pragma: no cover

    def _submit_wave(self, context: Context, batch: BatchState, answers: _WaveAnswers) -> None:
        """
        Submit queued items, ``download_threads`` at a time, into the free slots (fewer than
        ``max_in_flight`` jobs unfinished); collect the answers into ``answers``.

        Each accepted request id is stored (``task_state_store``) and recorded as its answer comes
        in; an id the gateway already gave to another item fails the later item as ``UNCERTAIN``.
        A saturated or unreachable gateway pauses the wave (the rest stay queued for the next one);
        a refused key or subscription fails every queued item; an uncertain submit fails its item
        for good. A failure that ends the try is raised only after every answer is recorded; a
        ``429`` with nothing in flight raises :class:`_SaturatedError` in a deferrable batch.
        """
        wave = batch.queue[: max(0, self.max_in_flight - len(batch.in_flight))]
        if not wave:
            return
        store = context.get("task_state_store")  # type: ignore[call-overload,unused-ignore]  # 3.3+ key
        max_tries = context["ti"].max_tries
        self.hook.settings  # noqa: B018  resolved once here, not in every thread

        def send(item: BatchItem, retry: bool) -> SubmitResult | Exception | None:
            if answers.stop.is_set():
                return None  # stays queued for the next wave
            try:
                return self.hook.submit_edit(
                    item.model, item.prompt, list(item.images), item.parameters, retry=retry
                )
            except Exception as err:  # recorded by the caller, after every other answer
                if _stops_wave(err):
                    answers.stop.set()
                return err

        def record(item: BatchItem, answer: SubmitResult | Exception | None) -> None:
            if answer is not None:
                answers.answered += 1
            if isinstance(answer, SubmitResult):
                # Recorded in the batch (and so in the manifest, even if this try fails) before
                # anything else can fail.
                attempt = batch.submitted(item, answer.request_id)
                if not attempt:
                    self.log.warning("Item %s failed: %s", item.key, batch.entries[item.key].error)
                    return
                answers.accepted.append(item)
                if store is None:
                    return
                try:
                    # Stored at once: a crash from here on resumes this request instead of paying again.
                    # The submit count tells a retry which of this id and the manifest's is newer; the
                    # edit's digest lets a clear collect the job if a user stops the task before it ends.
                    store.set(
                        STATE_KEY_PREFIX + item.key,
                        {
                            "request_id": answer.request_id,
                            "max_tries": max_tries,
                            "attempt": attempt,
                            "edit": edit_digest(item),
                        },
                    )
                except Exception as err:  # Airflow's API refused (e.g. the try was failed meanwhile)
                    answers.stop.set()
                    answers.fatal = answers.fatal or err
            elif isinstance(answer, FireRedSubmitUncertainError):
                batch.fail(item, "UNCERTAIN", str(answer))  # may have been accepted: never sent again
            elif isinstance(answer, FireRedApiError) and not answer.retryable:
                if answer.status_code in BATCH_REFUSALS:
                    answers.refused = answers.refused or answer
                else:
                    batch.fail(item, "REFUSED", str(answer))
            elif isinstance(answer, FireRedError) and answer.retryable:
                answers.paused = answers.paused or answer  # saturated or unreachable: the next wave tries
            elif isinstance(answer, Exception):
                answers.fatal = answers.fatal or answer

        if not batch.in_flight:
            # Nothing to wait for: the first submit waits out a 429's Retry-After here, as the hook
            # does, unless the batch is deferrable (it then waits on a timer, holding no slot). With
            # jobs in flight a 429 pauses the submits at once instead: waiting in the slot would
            # hold it for nothing.
            first = send(wave[0], not self.deferrable)
            if self.deferrable and isinstance(first, FireRedConnectionError):
                # Never opened, so surely not taken: sent again with the hook's own retries, as before.
                answers.stop.clear()
                first = send(wave[0], True)
            record(wave[0], first)
            wave = wave[1:]
        if wave and not answers.stop.is_set():
            with ThreadPoolExecutor(max_workers=min(self.download_threads, len(wave))) as pool:
                sent = {pool.submit(send, item, False): item for item in wave}
                for done in as_completed(sent):
                    record(sent[done], done.result())
        if answers.refused is not None:
            batch.fail_queue("REFUSED", str(answers.refused))  # the same answer awaits every item
        if answers.fatal is not None:
            raise answers.fatal
        if answers.paused is not None:
            if not batch.in_flight:
                if self.deferrable and _saturated(answers.paused):
                    raise _SaturatedError(answers.paused)
                raise answers.paused  # nothing to wait for: the try fails, and Airflow's retry tries again
            self.log.warning("Submits paused until jobs finish: %s", answers.paused)

    def _finish(self, batch: BatchState) -> dict[str, Any]:
        batch.close_unfinished()
        manifest = self._save(batch)
        counts = {outcome: batch.count(outcome) for outcome in ("edited", "reused", "failed")}
        self.log.info(
            "Batch done: %d edited, %d reused, %d failed; manifest %s",
            counts["edited"],
            counts["reused"],
            counts["failed"],
            manifest,
        )
        failed = [entry for entry in batch.manifest() if entry.outcome == "failed"]
        if len(failed) > self.max_failed:
            retryable = any(entry.status in RESUMED_STATUSES | RESUBMITTED_STATUSES for entry in failed)
            raise FireRedBatchFailedError(
                [(entry.key, entry.status or "", entry.error or "") for entry in failed],
                self.max_failed,
                manifest,
                retryable=retryable,
            )
        return {"total": len(batch.entries), **counts, "manifest": manifest, "output_root": self.output_root}


@dataclass
class _WaveAnswers:
    """What one wave of submits brought back."""

    #: The items the gateway accepted, in the order their answers came.
    accepted: list[BatchItem] = field(default_factory=list)
    #: How many submits got an answer (accepted or not).
    answered: int = 0
    paused: FireRedError | None = None
    refused: FireRedApiError | None = None
    fatal: Exception | None = None
    #: Set when a failure means the rest of the wave is not sent.
    stop: threading.Event = field(default_factory=threading.Event)


class _SaturatedError(Exception):
    """A ``429`` with nothing of the batch in flight: the deferrable batch waits on a timer."""

    def __init__(self, error: FireRedApiError) -> None:
        super().__init__(str(error))
        self.error = error


def _saturated(err: Any) -> TypeGuard[FireRedApiError]:
    """Whether a submit's failure is the gateway's ``429`` (saturated: surely not taken)."""
    return isinstance(err, FireRedApiError) and err.status_code == 429


def wake_after(in_flight: int, queued: int) -> int:
    """
    How many ended jobs the trigger waits for before the task resumes: all of them once nothing is
    left to submit; otherwise half of those in flight (or the rest of the queue, if smaller), so
    the next wave goes in while the other half still keeps the gateway busy. A batch of N then costs
    about N / max_in_flight + 1 task starts where jobs end together, at most twice that where they
    end spread out.
    """
    if not queued:
        return in_flight
    return max(1, min(queued, in_flight // 2))


def _stops_wave(err: Exception) -> bool:
    """Whether a submit's failure stops the rest of its wave from being sent."""
    if isinstance(err, FireRedSubmitUncertainError):
        return False
    if isinstance(err, FireRedApiError) and not err.retryable:
        return err.status_code in BATCH_REFUSALS
    return True  # saturated or unreachable (paused), or a failure that ends the try


def _task_of(ti: Any) -> str:
    """The task instance a batch folder belongs to: a folder shared by two runs is not resumed."""
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}"


def _read_progress(root: Path | ObjectStoragePath) -> dict[str, Any]:
    """The batch's progress file (``{"task", "max_tries", "deadline"}``); empty when unreadable."""
    try:
        with (root / PROGRESS_NAME).open("r", encoding="utf-8") as source:
            found = json.loads(source.read(4096))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


async def _first_event(trigger: FireRedBatchStatusTrigger) -> dict[str, Any]:
    """The trigger's event, run here on the worker (``deferrable=False``)."""
    async for event in trigger.run():
        return dict(event.payload)
    raise FireRedError("the FireRed batch trigger ended without an event")
