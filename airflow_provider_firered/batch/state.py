"""
Hold the state of a batch edit within one task.

An entry per item, the items still to submit, the jobs in flight, and what a retry takes up again. The
batch's run drives it; the manifest stores it between waves.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from airflow_provider_firered.batch.figures import OVER_BUDGET
from airflow_provider_firered.batch.manifest import ManifestEntry
from airflow_provider_firered.batch.store import is_newer
from airflow_provider_firered.triggers.events import EndedStatus
from airflow_provider_firered.utils import metrics

if TYPE_CHECKING:
    from airflow_provider_firered.batch.items import BatchItem
    from airflow_provider_firered.batch.store import StoredRequest
    from airflow_provider_firered.triggers.events import BatchEvent, EndedJob

#: Failed statuses a retry of the batch picks up again: waited for again (with a request id) ...
RESUMED_STATUSES = frozenset({"TIMEOUT", "DOWNLOAD", "UNFINISHED"})
#: ... or submitted again (not charged; never sent; or the gateway forgot the request).
RESUBMITTED_STATUSES = frozenset({"ERROR", "NOT_SUBMITTED", "UNKNOWN_REQUEST"})
#: The longest way back from trigger to task taken as true: a slower one (a busy scheduler, clocks of two
#: machines apart) must not bring the task back long before its wave ends, holding a worker slot.
MAX_LEAD = 10.0
#: A completed job whose outputs are still to download: its item, its request id, how it ended.
Completed = tuple["BatchItem", str, "EndedJob"]


class BatchState:
    """
    The state of one batch within a task: an entry per item, the queue, the jobs in flight.

    :param items: the checked items.
    :param invalid: entries of the items that failed their checks.
    :param deadline: when this try stops waiting (epoch seconds); 0 until the trigger's event says.
    :param timeout: the batch's ``timeout`` (seconds a try may wait in all), named when it passes.
    :param start_timeout: the batch's ``start_timeout``: seconds a job may stay ``QUEUED``.
    """

    def __init__(
        self,
        items: list[BatchItem],
        invalid: dict[str, ManifestEntry],
        *,
        deadline: float,
        timeout: float,
        start_timeout: float | None = None,
    ) -> None:
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.items = {item.key: item for item in items}
        self.entries: dict[str, ManifestEntry] = {}
        for key, entry in invalid.items():
            self.entries[key] = entry
        self.queue: list[BatchItem] = []
        #: request id -> (key, start deadline)
        self.in_flight: dict[str, tuple[str, float | None]] = {}
        #: request id -> how the job ended, waiting to be collected
        self.ended: dict[str, EndedJob] = {}
        self.deadline = deadline
        self.reused_now = 0
        #: request id -> the key of the item it was given to (in flight or recorded)
        self.owners: dict[str, str] = {}
        #: items whose job, submitted before a user's clear, is collected: fingerprinted with the first wave
        self.collected_after_clear: list[BatchItem] = []
        #: request id -> when this process had the gateway's acceptance (epoch seconds)
        self.sent_at: dict[str, float] = {}
        #: the median duration, by the gateway's clock, of the jobs that ended in the event taken
        self.job_seconds: float | None = None
        #: seconds from the trigger's event to this process taking it in (the task's way back), if known
        self.lead: float | None = None
        #: the wave's expected end when the event came ahead of it (the task waits for it here); else 0
        self.ahead_of = 0.0

    # building
    def _entry(
        self,
        item: BatchItem,
        request_id: str | None = None,
        attempt: int = 0,
        fingerprint: str | None = None,
    ) -> ManifestEntry:
        entry = ManifestEntry(item.key, "pending", images=list(item.images), prompt=item.prompt)
        entry.request_id, entry.attempt, entry.fingerprint = request_id, attempt, fingerprint
        self._keep(entry)
        return entry

    def _keep(self, entry: ManifestEntry) -> None:
        self.entries[entry.key] = entry
        if entry.request_id and entry.outcome != "reused":  # a reused item keeps the original's id
            self.owners.setdefault(entry.request_id, entry.key)

    def _start_deadline(self) -> float | None:
        timeout = self.start_timeout
        return None if timeout is None else time.time() + timeout

    def resume(
        self, item: BatchItem, earlier: ManifestEntry | None, stored: StoredRequest | None, paid: int = 0
    ) -> None:
        """
        Take an item up at the start of a try, from an earlier try's manifest and stored id.

        The newer of the two wins: a stored id with a higher submit count than the manifest's was
        accepted after the manifest was written (the worker was lost before it could record it), so
        it is waited for, whatever the manifest says of the item's earlier request. The manifest may
        be the newer one too (the store refused a write): then it alone counts.

        :param item: the item.
        :param earlier: its entry in the manifest an earlier try of this task wrote, if any.
        :param stored: its request stored in ``task_state_store`` (or collected after a clear), if any.
        :param paid: the paid submits earlier tries of the task (before a clear too) sent for it.
        """
        self._resume(item, earlier, stored)
        entry = self.entries[item.key]
        entry.paid = max(entry.paid, paid, stored.paid if stored else 0)

    def _resume(self, item: BatchItem, earlier: ManifestEntry | None, stored: StoredRequest | None) -> None:
        if earlier is not None and earlier.outcome in ("edited", "reused"):
            self._keep(earlier)  # finished: not touched
            return
        if (
            earlier is not None
            and earlier.outcome == "failed"
            and earlier.status not in (RESUMED_STATUSES | RESUBMITTED_STATUSES)
        ):
            self._keep(earlier)  # FAILED, INVALID, UNCERTAIN, ...: never paid again
            return
        mine = earlier.attempt if earlier else 0
        fingerprint = earlier.fingerprint if earlier else None
        if is_newer(stored, earlier) and stored is not None and stored.request_id not in self.owners:
            self._entry(item, request_id=stored.request_id, attempt=stored.attempt, fingerprint=fingerprint)
            self.owners[stored.request_id] = item.key
            self.in_flight[stored.request_id] = (item.key, self._start_deadline())
            return
        # Over budget: sent if the budget now allows (a retry whose max_paid_edits was raised).
        resubmit = earlier is not None and (
            earlier.status in RESUBMITTED_STATUSES or earlier.outcome == OVER_BUDGET
        )
        request_id = None if resubmit else (earlier.request_id if earlier else None)
        if not resubmit and not request_id and stored is not None:
            request_id, mine = stored.request_id, max(mine, stored.attempt)
        if request_id and request_id in self.owners:  # given to two items: not taken for the second's
            request_id = None
        self._entry(item, request_id=request_id, attempt=mine, fingerprint=fingerprint)
        if request_id:
            self.in_flight[request_id] = (item.key, self._start_deadline())
        else:
            self.queue.append(item)

    def carry(self, item: BatchItem, entry: ManifestEntry | None) -> None:
        """
        Take an item up between waves, from the manifest written before deferring.

        :param item: the item.
        :param entry: its entry in that manifest; None when the items changed under the task.
        """
        if entry is None:  # the items changed under the task (a re-rendered XCom): submit it
            self._entry(item)
            self.queue.append(item)
            return
        self._keep(entry)
        if entry.outcome != "pending":
            return
        if entry.request_id:
            self.in_flight[entry.request_id] = (item.key, None)
        else:
            self.queue.append(item)

    def take_event(self, event: BatchEvent, resumed_at: float | None = None) -> None:
        """
        Take the trigger's event in: what ended, what is still running and its start deadlines.

        :param event: the batch trigger's event.
        :param resumed_at: when a task resumed by the event took it in (epoch seconds): the way back
            from trigger to task is measured (:data:`MAX_LEAD` at most).
        """
        self.deadline = event.deadline
        self.ahead_of = event.ahead_of
        if resumed_at is not None and event.fired_at:
            self.lead = min(max(resumed_at - event.fired_at, 0.0), MAX_LEAD)
        for rid, ended in event.ended.items():
            if rid in self.in_flight:
                self.ended[rid] = ended
        durations = sorted(ended.duration for ended in self.ended.values() if ended.duration is not None)
        self.job_seconds = durations[len(durations) // 2] if durations else None
        for rid, (key, _start) in list(self.in_flight.items()):
            if rid in event.starts:
                self.in_flight[rid] = (key, event.starts[rid])

    # waves
    def submitted(self, item: BatchItem, request_id: str) -> int:
        """
        Record an accepted submit; return the item's submit count.

        Return 0 when the gateway gave an id it had already given to another item of the batch: the
        item then fails ``UNCERTAIN`` (it may or may not have been taken, and is never sent again).

        :param item: the item submitted.
        :param request_id: the request id the gateway answered with.
        """
        entry = self.entries[item.key]
        entry.attempt += 1
        entry.paid += 1
        owner = self.owners.get(request_id)
        if owner is not None and owner != item.key:
            entry.request_id = request_id
            self.fail(
                item,
                "UNCERTAIN",
                f"the gateway answered with request id {request_id}, which it had already given to item "
                f"{owner}: this item's submit may or may not have been taken; not sent again",
            )
            return 0
        self.queue.remove(item)
        entry.request_id = request_id
        self.owners[request_id] = item.key
        self.in_flight[request_id] = (item.key, self._start_deadline())
        self.sent_at[request_id] = time.time()
        return entry.attempt

    def fail(self, item: BatchItem, status: str, error: str) -> None:
        """
        Fail an item (for good or for now, as its status says); it leaves the queue.

        :param item: the item.
        :param status: the manifest status it fails with.
        :param error: what went wrong.
        """
        if item in self.queue:
            self.queue.remove(item)
        entry = self.entries[item.key]
        entry.outcome, entry.status, entry.error = "failed", status, error

    def uncertain(self, item: BatchItem, error: str) -> None:
        """
        Fail an item whose submit may have been accepted: never sent again, and counted as paid.

        :param item: the item.
        :param error: the uncertain answer.
        """
        self.fail(item, "UNCERTAIN", error)
        self.entries[item.key].paid += 1

    def hold_back(self, budget: int) -> int:
        """
        Record every item still to submit as ``over_budget``: the task's ``max_paid_edits`` is spent.

        Return how many were held back.

        :param budget: the task's ``max_paid_edits``.
        """
        held = list(self.queue)
        error = (
            f"not sent: this task's max_paid_edits={budget} paid submits are spent ({len(held)} item(s) "
            "over it); raise max_paid_edits to send them"
        )
        for item in held:
            self.queue.remove(item)
            entry = self.entries[item.key]
            entry.outcome, entry.status, entry.error = OVER_BUDGET, "OVER_BUDGET", error
        return len(held)

    def paid(self) -> int:
        """Return the paid submits the task sent for its items, over all its tries."""
        return sum(entry.paid for entry in self.entries.values())

    def fail_queue(self, status: str, error: str) -> None:
        """
        Fail every item still to submit alike.

        :param status: the manifest status they fail with.
        :param error: what went wrong.
        """
        for item in list(self.queue):
            self.fail(item, status, error)

    def reused(self, item: BatchItem, outputs: list[str], request_id: str | None) -> None:
        """
        Record an item whose earlier outputs were copied instead of submitting it.

        :param item: the item.
        :param outputs: the copies' paths.
        :param request_id: the request id of the earlier run's edit.
        """
        self.queue.remove(item)
        entry = self.entries[item.key]
        entry.outcome, entry.status, entry.outputs, entry.request_id = (
            "reused",
            "COMPLETED",
            outputs,
            request_id,
        )
        self.reused_now += 1

    def close_unfinished(self) -> None:
        """Fail, at the end, every item neither done nor failed: it never counts as done."""
        for entry in self.entries.values():
            if entry.outcome == "pending":
                entry.outcome, entry.status = "failed", "UNFINISHED"
                entry.error = f"still unfinished when the batch ended (request {entry.request_id})"

    def timed_out(self) -> bool:
        """Tell whether jobs are in flight past the try's deadline."""
        return bool(self.in_flight) and time.time() >= self.deadline > 0

    def give_up_waiting(self) -> None:
        """Fail for now what is unfinished, the try's deadline having passed (a retry takes it up)."""
        for rid, (key, _start) in list(self.in_flight.items()):
            entry = self.entries[key]
            entry.outcome, entry.status = "failed", "TIMEOUT"
            entry.error = f"request {rid} did not finish within the batch's {self.timeout:g}s"
        self.in_flight.clear()
        for item in list(self.queue):
            self.fail(item, "NOT_SUBMITTED", f"not submitted within the batch's {self.timeout:g}s")

    def settle(self) -> list[Completed]:
        """
        Record how every ended job ended and free its slot; return the completed ones.

        Their outputs are still to download: their entries stay pending with their request id until
        then, so a crash before the download waits for them again instead of paying again.
        """
        completed = []
        for rid, ended in self.ended.items():
            key, _start = self.in_flight.pop(rid)
            metrics.job_ended(ended.status.value, model=self.items[key].model, seconds=ended.duration)
            if ended.status is EndedStatus.COMPLETED:
                completed.append((self.items[key], rid, ended))
                continue
            entry = self.entries[key]
            status = ended.status.value
            if ended.status is EndedStatus.API_ERROR and ended.http_status == 404:
                status = "UNKNOWN_REQUEST"  # forgotten by the gateway: a retry submits it afresh
            entry.outcome, entry.status, entry.error = "failed", status, _text(ended.error)
        self.ended.clear()
        return completed

    def downloaded(self, item: BatchItem, outcome: list[str] | Exception) -> None:
        """
        Record an item's download: its outputs' paths, or why they could not be saved.

        :param item: the completed item.
        :param outcome: the paths written, or the error.
        """
        entry = self.entries[item.key]
        if isinstance(outcome, Exception):
            entry.outcome, entry.status, entry.error = "failed", "DOWNLOAD", str(outcome)
        else:
            entry.outcome, entry.status, entry.outputs, entry.error = "edited", "COMPLETED", outcome, None

    # reading
    def count(self, outcome: str) -> int:
        """
        Count the items with an outcome.

        :param outcome: ``edited``, ``reused``, ``failed`` or ``pending``.
        """
        return sum(1 for entry in self.entries.values() if entry.outcome == outcome)

    def manifest(self) -> list[ManifestEntry]:
        """Return the entries in the order of the items."""
        return sorted(self.entries.values(), key=lambda entry: self._order(entry.key))

    def _order(self, key: str) -> int:
        item = self.items.get(key)
        return item.index if item else int(key[1:]) if key.startswith("#") and key[1:].isdigit() else 0


def _text(value: str | None) -> str | None:
    return None if value is None else str(value)[:2000]
