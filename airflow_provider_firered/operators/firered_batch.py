"""Operator that runs many FireRed edits in one task: waves of submits, one trigger, one manifest."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, conf

from airflow_provider_firered.batch_items import BatchItem, check_items, fingerprint, source_identities
from airflow_provider_firered.batch_state import RESUBMITTED_STATUSES, RESUMED_STATUSES, BatchState
from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedBatchFailedError,
    FireRedError,
    FireRedSubmitUncertainError,
    FireRedValidationError,
    airflow_errors,
)
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.manifest import ManifestEntry, previous_entries, read_manifest, write_manifest
from airflow_provider_firered.options import DEFAULT_MODEL
from airflow_provider_firered.output_paths import as_target, check_inside
from airflow_provider_firered.results import SubmitResult
from airflow_provider_firered.triggers.firered import DEFER_SLACK
from airflow_provider_firered.triggers.firered_batch import RESUME_AFTER, FireRedBatchStatusTrigger
from airflow_provider_firered.wait_policy import WaitPolicy, validate_timeout

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.providers.common.compat.sdk import ObjectStoragePath
    from airflow.sdk import Context

#: The progress file beside the manifest: which try's work the manifest holds.
PROGRESS_NAME = "_batch.json"
#: task_state_store key of an item's request id: ``<prefix><key>``.
STATE_KEY_PREFIX = "firered_batch:"
#: Answers that refuse every submit of the batch alike (the key, the subscription).
BATCH_REFUSALS = frozenset({401, 402, 403})
MAX_IN_FLIGHT = 10_000


class FireRedBatchEditOperator(BaseOperator):
    """
    Edit many images in one task: submit on the worker in waves of at most ``max_in_flight`` unfinished
    jobs, wait for all of them in one trigger (or on the worker), download every output to
    ``<output_root>/<key>/`` and write ``<output_root>/_manifest.jsonl``.

    Every item is checked before anything is paid; an invalid item is reported and never sent. Each
    request id is kept in ``task_state_store`` (Airflow 3.3+) as soon as the gateway accepts it, and the
    manifest records the batch's progress at every wave, so a retry resumes: finished items are not
    touched, unfinished ones are waited for, ``FAILED`` ones are not paid again and ``ERROR`` ones are
    submitted again. A user's clear starts afresh. An item whose fingerprint (model, prompt,
    parameters, and each input image's URL, ``ETag``, ``Last-Modified`` and ``Content-Length``) matches
    a ``COMPLETED`` item of ``previous`` with its outputs present is copied, not submitted.

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
        # Only an earlier try of this very batch (its progress file found) can have stored request
        # ids: a first try, or a night after another, reads none (each read is a call to Airflow).
        store = context.get("task_state_store") if earlier is not None else None  # type: ignore[call-overload,unused-ignore]  # 3.3+ key
        for item in items:
            entry = earlier.get(item.key) if earlier else None
            stored = self._stored_request(store, item.key, ti.max_tries)
            batch.resume(item, entry, stored)
        self._write_progress(root, progress)
        self._fingerprint_and_reuse(batch)
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

    def _resumable(
        self, root: Path | ObjectStoragePath, progress: dict[str, Any]
    ) -> dict[str, ManifestEntry] | None:
        """
        The manifest an earlier try of this task instance wrote (empty if it wrote none before it
        stopped); None when there was no such try: a new batch, a task cleared since (a clear changes
        ``max_tries``), or a folder that holds another task's or another run's batch.
        """
        try:
            with (root / PROGRESS_NAME).open("r", encoding="utf-8") as source:
                found = json.loads(source.read(4096))
        except (OSError, ValueError):
            found = None
        if found != progress:
            self.log.info(
                "No earlier try of this batch to resume (new, or cleared): every item starts afresh"
            )
            return None
        return {entry.key: entry for entry in read_manifest(root) or []}

    @staticmethod
    def _write_progress(root: Path | ObjectStoragePath, progress: dict[str, Any]) -> None:
        if isinstance(root, Path):
            root.mkdir(parents=True, exist_ok=True)
        with (root / PROGRESS_NAME).open("w", encoding="utf-8") as out:
            out.write(json.dumps(progress))

    @staticmethod
    def _stored_request(store: Any, key: str, max_tries: int) -> str | None:
        if store is None:
            return None
        stored = store.get(STATE_KEY_PREFIX + key)
        if isinstance(stored, dict) and stored.get("max_tries") == max_tries and stored.get("request_id"):
            return str(stored["request_id"])
        return None

    def _fingerprint_and_reuse(self, batch: BatchState) -> None:
        """
        Fingerprint the items still to submit; copy those unchanged since ``previous`` instead, and
        do not pay again for one that ended ``FAILED`` there.
        """
        todo = [item for item in batch.queue if batch.entries[item.key].fingerprint is None]
        if not todo:
            return
        identities = source_identities(
            (url for item in todo for url in item.images), self.hook.settings, threads=self.download_threads
        )
        for item in todo:
            batch.entries[item.key].fingerprint = fingerprint(item, identities)
        roots = self._previous_roots()
        if self.force or not roots:
            return
        earlier = previous_entries(roots)
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
        earlier: tuple[ManifestEntry, Path | ObjectStoragePath] | None,
    ) -> list[str] | None:
        """Copy an unchanged item's earlier outputs into its folder; None when it cannot be reused."""
        if earlier is None:
            return None
        entry, earlier_root = earlier
        mine = batch.entries[item.key].fingerprint
        if mine is None or entry.fingerprint != mine or entry.status != "COMPLETED" or not entry.outputs:
            return None
        if entry.outcome not in ("edited", "reused"):
            return None
        target_dir = batch.root / item.key
        copied = []
        try:
            for output in entry.outputs:
                source = as_target(output, field_name="previous")
                check_inside(source, earlier_root / item.key, field_name="previous")
                target = target_dir / Path(str(source)).name
                check_inside(target, target_dir)
                _copy(source, target)
                copied.append(str(target))
        except (OSError, FireRedError) as err:
            self.log.info("Item %s cannot reuse its earlier outputs (%s): editing it", item.key, err)
            return None
        return copied

    # -- waves -----------------------------------------------------------------------------------------

    def _advance(self, context: Context, batch: BatchState) -> dict[str, Any]:
        """
        Free the slots of what ended, submit the next wave into them, then download what completed
        and wait (deferred or here) or finish. Submitting before downloading keeps the gateway busy
        while the outputs come in.
        """
        while True:
            completed = batch.settle()
            submitted = 0
            if batch.timed_out():
                batch.give_up_waiting()
            else:
                try:
                    submitted = self._submit_wave(context, batch)
                except Exception:
                    # What this wave learnt survives any failure (the gateway's, or Airflow's store):
                    # an accepted or uncertain submit must stay recorded, or the retry would pay for it
                    # again. Completed jobs stay pending with their request id: the retry collects them.
                    write_manifest(self.output_root, batch.manifest())
                    raise
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
            write_manifest(self.output_root, batch.manifest())
            trigger = FireRedBatchStatusTrigger(
                requests=[[rid, start] for rid, (_key, start) in batch.in_flight.items()],
                firered_conn_id=self.firered_conn_id,
                poll_interval=self.poll_interval,
                deadline=batch.deadline,
                min_ended=wake_after(len(batch.in_flight), len(batch.queue)),
                not_before=time.time() + RESUME_AFTER if self.deferrable else 0.0,
            )
            if self.deferrable:
                self.defer(
                    trigger=trigger,
                    method_name="execute_complete",
                    timeout=timedelta(seconds=max(batch.deadline - time.time(), 0) + DEFER_SLACK),
                )
            batch.take_event(asyncio.run(_first_event(trigger)))

    def _submit_wave(self, context: Context, batch: BatchState) -> int:
        """
        Submit queued items, ``download_threads`` at a time, into the free slots (fewer than
        ``max_in_flight`` jobs unfinished); return how many the gateway accepted.

        Each accepted request id is stored (``task_state_store``) and recorded as its answer comes
        in. A saturated or unreachable gateway pauses the wave (the rest stay queued for the next
        one); a refused key or subscription fails every queued item; an uncertain submit fails its
        item for good. A failure that ends the try is raised only after every answer is recorded.
        """
        wave = batch.queue[: max(0, self.max_in_flight - len(batch.in_flight))]
        if not wave:
            return 0
        store = context.get("task_state_store")  # type: ignore[call-overload,unused-ignore]  # 3.3+ key
        max_tries = context["ti"].max_tries
        answers = _WaveAnswers()
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
            if isinstance(answer, SubmitResult):
                # Recorded in the batch (and so in the manifest, even if this try fails) before
                # anything else can fail.
                batch.submitted(item, answer.request_id)
                answers.submitted += 1
                if store is None:
                    return
                try:
                    # Stored at once: a crash from here on resumes this request instead of paying again.
                    store.set(
                        STATE_KEY_PREFIX + item.key, {"request_id": answer.request_id, "max_tries": max_tries}
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
            # does. With jobs in flight a 429 pauses the submits at once instead: waiting in the slot
            # would hold it for nothing.
            record(wave[0], send(wave[0], True))
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
                raise answers.paused  # nothing to wait for: the try fails, and Airflow's retry tries again
            self.log.warning("Submits paused until jobs finish: %s", answers.paused)
        return answers.submitted

    def _finish(self, batch: BatchState) -> dict[str, Any]:
        manifest = write_manifest(self.output_root, batch.manifest())
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
    """What one wave of submits brought back, besides the accepted requests."""

    submitted: int = 0
    paused: FireRedError | None = None
    refused: FireRedApiError | None = None
    fatal: Exception | None = None
    #: Set when a failure means the rest of the wave is not sent.
    stop: threading.Event = field(default_factory=threading.Event)


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


def _copy(source: Path | ObjectStoragePath, target: Path | ObjectStoragePath) -> None:
    """Copy one file, atomically where the target is local."""
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.part")
        with source.open("rb") as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        part.replace(target)
        return
    with source.open("rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)


async def _first_event(trigger: FireRedBatchStatusTrigger) -> dict[str, Any]:
    """The trigger's event, run here on the worker (``deferrable=False``)."""
    async for event in trigger.run():
        return dict(event.payload)
    raise FireRedError("the FireRed batch trigger ended without an event")
