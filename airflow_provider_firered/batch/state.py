"""
The state of a batch edit within one task: an entry per item, the items still to submit, the jobs in
flight, and what a retry takes up again. The operator drives it; the manifest stores it between waves.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.batch.manifest import ManifestEntry
from airflow_provider_firered.exceptions import FireRedError
from airflow_provider_firered.gateway.options import expected_outputs
from airflow_provider_firered.media.downloads import download_outputs
from airflow_provider_firered.media.hosts import new_media_session
from airflow_provider_firered.media.output_paths import as_target

if TYPE_CHECKING:
    from airflow_provider_firered.batch.items import BatchItem
    from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

#: Failed statuses a retry of the batch picks up again: waited for again (with a request id) ...
RESUMED_STATUSES = frozenset({"TIMEOUT", "DOWNLOAD", "UNFINISHED"})
#: ... or submitted again (not charged; never sent; or the gateway forgot the request).
RESUBMITTED_STATUSES = frozenset({"ERROR", "NOT_SUBMITTED", "UNKNOWN_REQUEST"})


@dataclass(frozen=True)
class StoredRequest:
    """
    An item's request id as ``task_state_store`` keeps it.

    :param request_id: the gateway's request id.
    :param attempt: the item's submit count when it was accepted (see ``ManifestEntry.attempt``).
    """

    request_id: str
    attempt: int


def stored_request(value: Any, max_tries: int) -> StoredRequest | None:
    """
    Read a stored ``{"request_id", "max_tries", "attempt"}``; None unless it is this task instance's
    (a clear changes ``max_tries``) and well formed (a value from before ``attempt`` counts as 0).

    :param value: what the store holds for the item.
    :param max_tries: the task instance's ``max_tries``.
    """
    if not isinstance(value, dict) or value.get("max_tries") != max_tries:
        return None
    return _well_formed(value)


def cleared_request(value: Any, max_tries: int, edit: str) -> StoredRequest | None:
    """
    Read a stored request from before a user's clear (another ``max_tries``) of the same edit: a
    job that may still be running. None for this try's own values, another edit, a value stored
    without its edit's digest, or one not well formed.

    :param value: what the store holds for the item.
    :param max_tries: the task instance's ``max_tries``.
    :param edit: the item's :func:`edit_digest` now.
    """
    if not isinstance(value, dict) or value.get("max_tries") == max_tries or value.get("edit") != edit:
        return None
    return _well_formed(value)


def _well_formed(value: dict[str, Any]) -> StoredRequest | None:
    request_id, attempt = value.get("request_id"), value.get("attempt", 0)
    if not isinstance(request_id, str) or not request_id:
        return None
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        return None
    return StoredRequest(request_id, attempt)


def edit_digest(item: BatchItem) -> str:
    """
    A SHA-256 of what an item submits (model, prompt, images, parameters), stored with its request
    id: a clear collects a stored job only for the same edit. Not the item's fingerprint, which
    also holds what its images' hosts answer (and may not be known yet).

    :param item: the checked item.
    """
    edit = [item.model, item.prompt, list(item.images), dict(item.parameters)]
    text = json.dumps(edit, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def is_newer(stored: StoredRequest | None, earlier: ManifestEntry | None) -> bool:
    """
    Whether the stored request id is newer than what the manifest records of the item: submitted
    more times than the manifest counts (its id was stored, then the worker was lost before the
    manifest was written). An id equal to the manifest's, or counted lower, adds nothing.

    :param stored: the item's stored request, if any.
    :param earlier: the item's manifest entry from an earlier try, if any.
    """
    if stored is None:
        return False
    if earlier is None:
        return True
    return stored.attempt > earlier.attempt and stored.request_id != earlier.request_id


class BatchState:
    """
    The state of one batch within a task: an entry per item, the queue, the jobs in flight.

    :param operator: the batch operator (its settings and hook).
    :param items: the checked items.
    :param invalid: entries of the items that failed their checks.
    :param deadline: when this try stops waiting (epoch seconds); 0 until the trigger's event says.
    """

    def __init__(
        self,
        operator: FireRedBatchEditOperator,
        items: list[BatchItem],
        invalid: dict[str, ManifestEntry],
        *,
        deadline: float,
    ) -> None:
        self.operator = operator
        self.root = as_target(operator.output_root, field_name="output_root")
        self.items = {item.key: item for item in items}
        self.entries: dict[str, ManifestEntry] = {}
        for key, entry in invalid.items():
            self.entries[key] = entry
        self.queue: list[BatchItem] = []
        #: request id -> (key, start deadline)
        self.in_flight: dict[str, tuple[str, float | None]] = {}
        #: request id -> how the job ended, waiting to be collected
        self.ended: dict[str, dict[str, Any]] = {}
        self.deadline = deadline
        self.reused_now = 0
        #: request id -> the key of the item it was given to (in flight or recorded)
        self.owners: dict[str, str] = {}
        #: items whose job, submitted before a user's clear, is collected: fingerprinted with the first wave
        self.collected_after_clear: list[BatchItem] = []

    # building
    def _entry(self, item: BatchItem, **fields: Any) -> ManifestEntry:
        entry = ManifestEntry(item.key, "pending", images=list(item.images), prompt=item.prompt)
        for name, value in fields.items():
            setattr(entry, name, value)
        self._keep(entry)
        return entry

    def _keep(self, entry: ManifestEntry) -> None:
        self.entries[entry.key] = entry
        if entry.request_id and entry.outcome != "reused":  # a reused item keeps the original's id
            self.owners.setdefault(entry.request_id, entry.key)

    def _start_deadline(self) -> float | None:
        timeout = self.operator.start_timeout
        return None if timeout is None else time.time() + timeout

    def resume(self, item: BatchItem, earlier: ManifestEntry | None, stored: StoredRequest | None) -> None:
        """
        Take an item up at the start of a try, from an earlier try's manifest and stored id.

        The newer of the two wins: a stored id with a higher submit count than the manifest's was
        accepted after the manifest was written (the worker was lost before it could record it), so
        it is waited for, whatever the manifest says of the item's earlier request. The manifest may
        be the newer one too (the store refused a write): then it alone counts.
        """
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
        resubmit = earlier is not None and earlier.status in RESUBMITTED_STATUSES
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
        """Take an item up between waves, from the manifest written before deferring."""
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

    def take_event(self, event: Any) -> None:
        """Read the trigger's event: what ended, what is still running and its start deadlines."""
        if not isinstance(event, dict) or not isinstance(event.get("ended"), dict):
            raise FireRedError(f"FireRed batch trigger sent an unusable event: {str(event)[:200]!r}")
        self.deadline = float(event.get("deadline") or 0.0)
        for rid, ended in event["ended"].items():
            if rid in self.in_flight and isinstance(ended, dict):
                self.ended[rid] = ended
        starts = dict(event.get("starts") or {})
        for rid, (key, _start) in list(self.in_flight.items()):
            if rid in starts:
                self.in_flight[rid] = (key, starts[rid])

    # waves
    def submitted(self, item: BatchItem, request_id: str) -> int:
        """
        Record an accepted submit; return the item's submit count, or 0 when the gateway gave an id
        it had already given to another item of the batch (the item then fails ``UNCERTAIN``: it may
        or may not have been taken, and is never sent again).
        """
        entry = self.entries[item.key]
        entry.attempt += 1
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
        return entry.attempt

    def fail(self, item: BatchItem, status: str, error: str) -> None:
        if item in self.queue:
            self.queue.remove(item)
        entry = self.entries[item.key]
        entry.outcome, entry.status, entry.error = "failed", status, error

    def fail_queue(self, status: str, error: str) -> None:
        for item in list(self.queue):
            self.fail(item, status, error)

    def reused(self, item: BatchItem, outputs: list[str], request_id: str | None) -> None:
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
        """At the end: an item neither done nor failed counts as failed, never as done."""
        for entry in self.entries.values():
            if entry.outcome == "pending":
                entry.outcome, entry.status = "failed", "UNFINISHED"
                entry.error = f"still unfinished when the batch ended (request {entry.request_id})"

    def timed_out(self) -> bool:
        return bool(self.in_flight) and time.time() >= self.deadline > 0

    def give_up_waiting(self) -> None:
        """The try's deadline passed: what is unfinished fails for now (a retry takes it up)."""
        for rid, (key, _start) in list(self.in_flight.items()):
            entry = self.entries[key]
            entry.outcome, entry.status = "failed", "TIMEOUT"
            entry.error = f"request {rid} did not finish within the batch's {self.operator.timeout:g}s"
        self.in_flight.clear()
        for item in list(self.queue):
            self.fail(item, "NOT_SUBMITTED", f"not submitted within the batch's {self.operator.timeout:g}s")

    def settle(self) -> list[tuple[BatchItem, str, dict[str, Any]]]:
        """
        Record how every ended job ended and free its slot; return the completed ones, whose outputs
        are still to download (their entries stay pending with their request id until then, so a
        crash before the download waits for them again instead of paying again).
        """
        completed = []
        for rid, ended in self.ended.items():
            key, _start = self.in_flight.pop(rid)
            status = str(ended.get("status"))
            if status == "COMPLETED":
                completed.append((self.items[key], rid, ended))
                continue
            entry = self.entries[key]
            if status == "API_ERROR" and ended.get("http_status") == 404:
                status = "UNKNOWN_REQUEST"  # forgotten by the gateway: a retry submits it afresh
            entry.outcome, entry.status, entry.error = "failed", status, _text(ended.get("error"))
        self.ended.clear()
        return completed

    def download(self, completed: list[tuple[BatchItem, str, dict[str, Any]]]) -> None:
        """Download the completed jobs' outputs, several at once."""
        if completed:
            self._download(completed)

    def _download(self, completed: list[tuple[BatchItem, str, dict[str, Any]]]) -> None:
        operator = self.operator
        local = threading.local()

        def fetch(job: tuple[BatchItem, str, dict[str, Any]]) -> tuple[BatchItem, list[str] | FireRedError]:
            item, rid, ended = job
            if not hasattr(local, "session"):
                local.session = new_media_session()
            result = {
                "request_id": rid,
                "media_urls": ended.get("media_urls") or [],
                "media_type": ended.get("media_type"),
            }
            try:
                paths = download_outputs(
                    operator.hook,
                    result,
                    self.root / item.key,
                    max_outputs=expected_outputs(item.model, item.parameters),
                    session=local.session,
                )
            except FireRedError as err:
                return item, err
            except OSError as err:  # this item's folder, not the batch: recorded against the item
                return item, FireRedError(f"its outputs could not be saved: {err}")
            return item, paths

        operator.hook.settings  # noqa: B018  resolved once here, not in every thread
        with ThreadPoolExecutor(max_workers=operator.download_threads) as pool:
            for item, outcome in pool.map(fetch, completed):
                entry = self.entries[item.key]
                if isinstance(outcome, FireRedError):
                    entry.outcome, entry.status, entry.error = "failed", "DOWNLOAD", str(outcome)
                else:
                    entry.outcome, entry.status, entry.outputs, entry.error = (
                        "edited",
                        "COMPLETED",
                        outcome,
                        None,
                    )

    # reading
    def count(self, outcome: str) -> int:
        return sum(1 for entry in self.entries.values() if entry.outcome == outcome)

    def manifest(self) -> list[ManifestEntry]:
        return sorted(self.entries.values(), key=lambda entry: self._order(entry.key))

    def _order(self, key: str) -> int:
        item = self.items.get(key)
        return item.index if item else int(key[1:]) if key.startswith("#") and key[1:].isdigit() else 0


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:2000]
