"""
Run a batch within one try: start or carry on, then wave after wave until it waits or finishes.

A wave frees the slots of what ended, submits the next items into them, records every accepted request
id, then downloads what completed. Waiting (deferred or on the worker) is the operator's part.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.batch.collect import download_completed, still_running_after_clear
from airflow_provider_firered.batch.figures import FAILURE_OUTCOMES, figures_from_manifest
from airflow_provider_firered.batch.manifest import ManifestEntry, read_manifest, write_manifest
from airflow_provider_firered.batch.progress import earlier_tries, read_progress, task_of, write_progress
from airflow_provider_firered.batch.reuse import fingerprint_items, reuse_unchanged
from airflow_provider_firered.batch.state import RESUBMITTED_STATUSES, RESUMED_STATUSES, BatchState
from airflow_provider_firered.batch.store import (
    RequestLedger,
    StoredRequest,
    cleared_request,
    edit_digest,
    retry_store,
    stored_paid,
    stored_request,
)
from airflow_provider_firered.batch.waves import SaturatedError, WaveAnswers, submit_wave
from airflow_provider_firered.exceptions import FireRedBatchFailedError
from airflow_provider_firered.utils.saturation import MIN_DEFERRAL_SECONDS, saturation_delay
from airflow_provider_firered.version_compat import task_state_store

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_firered.batch.items import BatchItem, InvalidItem
    from airflow_provider_firered.batch.settings import BatchLog, BatchSettings
    from airflow_provider_firered.batch.state import Completed
    from airflow_provider_firered.exceptions import FireRedApiError
    from airflow_provider_firered.hooks.firered import FireRedHook


class BatchRun:
    """
    Drive one batch within a try: its state from the manifest and the store, its waves, its end.

    :param settings: the batch's checked arguments.
    :param items: the checked items (built once, when the task starts or resumes).
    :param invalid: the items that failed their checks: reported, never sent.
    :param hook: the FireRed hook.
    :param log: the operator's logger.
    """

    def __init__(
        self,
        settings: BatchSettings,
        items: list[BatchItem],
        invalid: list[InvalidItem],
        hook: FireRedHook,
        log: BatchLog,
    ) -> None:
        self.settings = settings
        self.items = items
        self.invalid = {
            bad.key: ManifestEntry(bad.key, "failed", "INVALID", error=bad.error) for bad in invalid
        }
        for bad in invalid:
            log.warning("Item %s is invalid and is not sent: %s", bad.key, bad.error)
        self.hook = hook
        self.log = log
        self.root = settings.root()
        #: where accepted request ids are stored (Airflow 3.3+), once this process knows it
        self.ledger: RequestLedger | None = None

    def state(self, deadline: float) -> BatchState:
        """
        Return a new state of the batch, its invalid items already recorded.

        :param deadline: when this try stops waiting (epoch seconds); 0 until the trigger's event says.
        """
        return BatchState(
            self.items,
            self.invalid,
            deadline=deadline,
            timeout=self.settings.timeout,
            start_timeout=self.settings.start_timeout,
        )

    # -- building the batch's state ------------------------------------------------------------------

    def start(self, context: Context) -> BatchState:
        """
        Start a new try: resume the manifest this task's earlier try wrote, else start afresh.

        :param context: the task's context.
        """
        ti = context["ti"]
        progress = {"task": task_of(ti), "max_tries": ti.max_tries}
        earlier, paid = earlier_tries(self.root, progress, self.log)
        batch = self.state(time.time() + self.settings.timeout)
        store = retry_store(context, self.log)
        values: dict[str, Any] = {}
        if store is not None:
            self.ledger, values = RequestLedger.read(store, ti.max_tries, self.items)
        stored: dict[str, StoredRequest | None] = {}
        cleared: dict[str, StoredRequest] = {}
        for item in self.items:
            value = values.get(item.key)
            stored[item.key] = stored_request(value, ti.max_tries)
            # What every earlier try paid, before a clear too: max_paid_edits counts it all.
            paid[item.key] = max(paid.get(item.key, 0), stored_paid(value))
            if not (earlier and item.key in earlier):  # what this try series recorded comes first
                found = cleared_request(value, ti.max_tries, edit_digest(item))
                if found is not None:
                    cleared[item.key] = found
        running = still_running_after_clear(cleared, self.hook, self.settings.download_threads, self.log)
        for item in self.items:
            entry = earlier.get(item.key) if earlier else None
            batch.resume(item, entry, stored[item.key] or running.get(item.key), paid.get(item.key, 0))
        collected = [
            (batch.items[key], request)
            for key, request in running.items()
            if batch.entries[key].request_id == request.request_id
        ]
        batch.collected_after_clear.extend(item for item, _request in collected)
        if collected and self.ledger is not None:  # (always: only a stored request is found running)
            # Stored again as this try's own: a retry of it then resumes the job as any retry does.
            self.ledger.keep(collected)
        write_progress(self.root, {**progress, "deadline": batch.deadline})
        if self.settings.previous and not self.settings.force:
            # Compared with the earlier run before anything is submitted; otherwise the fingerprints
            # (for the next night) are read after each wave's submits, never delaying one.
            self.fingerprint(batch, batch.queue)
            reuse_unchanged(
                batch,
                self.settings.previous,
                self.root,
                max_bytes=self.hook.settings.max_download_bytes,
                threads=self.settings.download_threads,
                log=self.log,
            )
        self.log.info(
            "Batch of %d item(s): %d invalid, %d done before, %d reused, %d to wait for, %d to submit; "
            "%d paid submits by earlier tries%s",
            len(self.items) + len(self.invalid),
            len(self.invalid),
            batch.count("edited") + batch.count("reused") - batch.reused_now,
            batch.reused_now,
            len(batch.in_flight),
            len(batch.queue),
            batch.paid(),
            _budget_note(self.settings.max_paid_edits),
        )
        return batch

    def carry_on(self) -> BatchState:
        """Take up a later wave of the same try: the manifest written before deferring holds the state."""
        by_key = {entry.key: entry for entry in read_manifest(self.settings.output_root) or []}
        batch = self.state(0.0)
        for item in self.items:
            batch.carry(item, by_key.get(item.key))
        return batch

    def kept_deadline(self) -> float:
        """Return the try's deadline the progress file keeps; 0 when it keeps none."""
        kept = read_progress(self.root).get("deadline")
        return kept if isinstance(kept, float) else 0.0

    # -- waves ---------------------------------------------------------------------------------------

    def wave(self, context: Context, batch: BatchState) -> FireRedApiError | None:
        """
        Free the slots of what ended, submit the next wave into them, then download what completed.

        Submitting before downloading keeps the gateway busy while the outputs come in. Return the
        ``429`` of a deferrable batch that found the gateway saturated with nothing of its own in
        flight (the caller waits for room, nothing downloaded yet); None otherwise.

        :param context: the task's context.
        :param batch: the batch's state.
        """
        completed = batch.settle()
        answers = WaveAnswers()
        if batch.timed_out():
            batch.give_up_waiting()
        else:
            try:
                submit_wave(
                    batch,
                    answers,
                    settings=self.settings,
                    hook=self.hook,
                    ledger=self.request_ledger(context),
                    log=self.log,
                )
            except SaturatedError as saturated:
                return saturated.error
            except Exception:
                # What this wave learnt survives any failure (the gateway's, or Airflow's store):
                # an accepted or uncertain submit must stay recorded, or the retry would pay for it
                # again. Completed jobs stay pending with their request id: the retry collects them.
                self.save(batch)
                raise
            if answers.answered:
                # Every accepted request id is recorded before anything else can fail or wait:
                # a worker lost during the downloads below leaves its retry nothing to pay again.
                self.save(batch)
                if self.ledger is not None:
                    self.ledger.mark()
            self.fingerprint(batch, answers.accepted + batch.collected_after_clear)
            batch.collected_after_clear = []
        self.download(batch, completed)
        self.log.info(
            "Wave: %d output(s) collected, %d submitted; %d edited, %d reused, %d failed so far; "
            "%d unfinished at the gateway, %d still to submit",
            len(completed),
            len(answers.accepted),
            batch.count("edited"),
            batch.count("reused"),
            batch.count("failed"),
            len(batch.in_flight),
            len(batch.queue),
        )
        return None

    def request_ledger(self, context: Context) -> RequestLedger | None:
        """
        Return where this try stores accepted request ids; None before Airflow 3.3.

        A retry's start has read every earlier group already; any other process (a first try, or
        one taken up after a wait) finds the last group written from the kept count, then past it.

        :param context: the task's context.
        """
        if self.ledger is None:
            store = task_state_store(context)
            if store is not None:
                self.ledger = RequestLedger.carry_on(store, context["ti"].max_tries)
        return self.ledger

    def fingerprint(self, batch: BatchState, items: list[BatchItem]) -> None:
        """
        Fingerprint those of ``items`` not fingerprinted yet, within a budget and the try's deadline.

        :param batch: the batch's state.
        :param items: the items to fingerprint.
        """
        fingerprint_items(batch, items, self.hook.settings, self.settings.download_threads)

    def download(self, batch: BatchState, completed: list[Completed]) -> None:
        """
        Download the completed jobs' outputs, several at once.

        :param batch: the batch's state.
        :param completed: the completed jobs.
        """
        download_completed(batch, completed, self.hook, self.root, self.settings.download_threads)

    def room_delay(self, error: FireRedApiError) -> float:
        """
        Return how long to wait out a saturated gateway: its ``Retry-After``, capped, with jitter.

        :param error: the gateway's ``429``.
        """
        return max(saturation_delay(error, self.hook.settings.retry.max_retry_after), MIN_DEFERRAL_SECONDS)

    # -- the end -------------------------------------------------------------------------------------

    def save(self, batch: BatchState) -> str:
        """
        Write the manifest: the batch's progress, and what a retry takes up; return its path.

        :param batch: the batch's state.
        """
        return write_manifest(self.settings.output_root, batch.manifest())

    def finish(self, batch: BatchState) -> dict[str, Any]:
        """
        End the batch: count what is unfinished as failed, write the manifest, return its figures.

        :param batch: the batch's state.
        :raises FireRedBatchFailedError: when more than ``max_failed`` items failed or are over budget.
        """
        batch.close_unfinished()
        entries = batch.manifest()
        manifest = self.save(batch)
        figures = figures_from_manifest(entries)
        self.log.info(
            "Batch done: %d edited, %d reused, %d failed, %d over budget; %d paid submits; manifest %s",
            figures.edited,
            figures.reused,
            figures.failed,
            figures.over_budget,
            figures.paid,
            manifest,
        )
        failed = [entry for entry in entries if entry.outcome in FAILURE_OUTCOMES]
        if len(failed) > self.settings.max_failed:
            # Over budget is not retryable: a retry has no more budget than this try had.
            retryable = any(entry.status in RESUMED_STATUSES | RESUBMITTED_STATUSES for entry in failed)
            raise FireRedBatchFailedError(
                [(entry.key, entry.status or "", entry.error or "") for entry in failed],
                self.settings.max_failed,
                manifest,
                retryable=retryable,
            )
        return {**figures.as_dict(), "manifest": manifest, "output_root": self.settings.output_root}


def _budget_note(budget: int | None) -> str:
    return "" if budget is None else f" (max_paid_edits={budget})"
