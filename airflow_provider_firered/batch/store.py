"""
Keep each item's request id in Airflow's ``task_state_store``, so that a retry resumes it.

An id is stored as soon as the gateway accepts the item's submit, with the item's submit count (which
of the stored id and the manifest's is newer) and its edit's digest (a clear collects a job still
running only for the same edit). The ids answered at one moment go in one write (a group): each write
is a call to Airflow's execution API, so a wave costs a few calls instead of one per item. Every
access goes through :func:`airflow_provider_firered.version_compat.task_state_store`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.version_compat import task_state_store

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_firered.batch.items import BatchItem
    from airflow_provider_firered.batch.manifest import ManifestEntry
    from airflow_provider_firered.batch.settings import BatchLog
    from airflow_provider_firered.version_compat import TaskStateStore

#: task_state_store key of an item's request id as versions before groups kept it: ``<prefix><key>``.
STATE_KEY_PREFIX = "firered_batch:"
#: task_state_store key of a group of request ids: ``<prefix><n>``, written in order from 0.
GROUP_KEY_PREFIX = "firered_batch_ids:"
#: task_state_store key of how many groups were written (a hint: a reader looks past it).
GROUP_COUNT_KEY = "firered_batch_ids"
#: A group's JSON stays under Airflow's default ``[state_store] max_value_storage_bytes`` (64 KiB).
MAX_GROUP_BYTES = 48 * 1024
#: Groups read at most: a bound on the reading loop, far more than any batch writes.
MAX_GROUPS = 100_000


@dataclass(frozen=True)
class StoredRequest:
    """
    An item's request id as ``task_state_store`` keeps it.

    :param request_id: the gateway's request id.
    :param attempt: the item's submit count when it was accepted (see ``ManifestEntry.attempt``).
    :param paid: the item's paid submits over every try of the task (see ``ManifestEntry.paid``).
    """

    request_id: str
    attempt: int
    paid: int = 0


def stored_request(value: Any, max_tries: int) -> StoredRequest | None:
    """
    Read a stored ``{"request_id", "max_tries", "attempt"}`` of this task instance.

    None unless it is this task instance's (a clear changes ``max_tries``) and well formed (a value
    from before ``attempt`` counts as 0).

    :param value: what the store holds for the item.
    :param max_tries: the task instance's ``max_tries``.
    """
    if not isinstance(value, dict) or value.get("max_tries") != max_tries:
        return None
    return _well_formed(value)


def cleared_request(value: Any, max_tries: int, edit: str) -> StoredRequest | None:
    """
    Read a stored request from before a user's clear (another ``max_tries``) of the same edit.

    Such a job may still be running. None for this try's own values, another edit, a value stored
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
    return StoredRequest(request_id, attempt, stored_paid(value))


def stored_paid(value: Any) -> int:
    """
    Return the paid submits a stored value counts for its item, whichever try (or clear) stored it.

    A value from before ``paid`` was stored counts its ``attempt``; anything else not well formed, 0.

    :param value: what the store holds for the item.
    """
    if not isinstance(value, dict):
        return 0
    paid = value.get("paid", value.get("attempt", 0))
    return paid if isinstance(paid, int) and not isinstance(paid, bool) and paid >= 0 else 0


def edit_digest(item: BatchItem) -> str:
    """
    Return a SHA-256 of what an item submits (model, prompt, images, parameters).

    It is stored with the item's request id: a clear collects a stored job only for the same edit.
    Not the item's fingerprint, which also holds what its images' hosts answer (and may not be known
    yet).

    :param item: the checked item.
    """
    edit = [item.model, item.prompt, list(item.images), dict(item.parameters)]
    text = json.dumps(edit, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def is_newer(stored: StoredRequest | None, earlier: ManifestEntry | None) -> bool:
    """
    Tell whether the stored request id is newer than what the manifest records of the item.

    It is when it was submitted more times than the manifest counts (its id was stored, then the
    worker was lost before the manifest was written). An id equal to the manifest's, or counted
    lower, adds nothing.

    :param stored: the item's stored request, if any.
    :param earlier: the item's manifest entry from an earlier try, if any.
    """
    if stored is None:
        return False
    if earlier is None:
        return True
    return stored.attempt > earlier.attempt and stored.request_id != earlier.request_id


def retry_store(context: Context, log: BatchLog) -> TaskStateStore | None:
    """
    Return the ``task_state_store`` to read stored request ids from, on a retry only.

    A first try has none to read (and each read is a call to Airflow); a retry reads it whether or
    not this worker finds the manifest. Before Airflow 3.3 the log says once that crash recovery
    rests on the manifest alone.

    :param context: the task's context.
    :param log: where to say it.
    """
    store = task_state_store(context)
    if store is None:
        log.info(
            "This Airflow has no task_state_store (3.3+): crash recovery for batches rests on the "
            "manifest alone; a retry that cannot read it (a local output_root on another worker) "
            "submits the unfinished items again"
        )
        return None
    return store if context["ti"].try_number > 1 else None


class RequestLedger:
    """
    Record accepted request ids in ``task_state_store``, all those answered at one moment in one write.

    Groups are numbered 0, 1, 2, ... in the order written, each ``{"items": {key: value}}``; an
    item's newest value is in the last group that names it (a later submit of the item, or a try
    after a clear, writes it again).

    :param store: the task's store.
    :param max_tries: the task instance's ``max_tries`` (a clear changes it), stored with each id.
    :param next_group: the number of the next group to write.
    """

    def __init__(self, store: TaskStateStore, max_tries: int, next_group: int = 0) -> None:
        self.store = store
        self.max_tries = max_tries
        self.next_group = next_group
        self._unmarked = False

    @classmethod
    def read(
        cls, store: TaskStateStore, max_tries: int, items: list[BatchItem]
    ) -> tuple[RequestLedger, dict[str, Any]]:
        """
        Read every group an earlier try (or a try before a clear) wrote: for a retry's start.

        Return the ledger that writes after them, and each item's newest stored value by key. With no
        group at all, the per-item keys of a version before groups are read, and kept again as groups.

        :param store: the task's store.
        :param max_tries: the task instance's ``max_tries``.
        :param items: the batch's items.
        """
        values: dict[str, Any] = {}
        count = 0
        while count < MAX_GROUPS and (group := store.get(GROUP_KEY_PREFIX + str(count))) is not None:
            if isinstance(group, dict) and isinstance(group.get("items"), dict):
                values.update(group["items"])
            count += 1
        ledger = cls(store, max_tries, count)
        if count == 0:
            for item in items:
                value = store.get(STATE_KEY_PREFIX + item.key)
                if value is not None:
                    values[item.key] = value
            if values:
                ledger.write(values)
        return ledger, values

    @classmethod
    def carry_on(cls, store: TaskStateStore, max_tries: int) -> RequestLedger:
        """
        Return the ledger of a try taken up after a wait: it writes after the last group written.

        The count kept at the end of each wave says where to start; a group written after it (the
        count's write failed) is looked past, never overwritten.

        :param store: the task's store.
        :param max_tries: the task instance's ``max_tries``.
        """
        hint = store.get(GROUP_COUNT_KEY)
        count = hint if isinstance(hint, int) and not isinstance(hint, bool) and 0 <= hint < MAX_GROUPS else 0
        while count < MAX_GROUPS and store.get(GROUP_KEY_PREFIX + str(count)) is not None:
            count += 1
        return cls(store, max_tries, count)

    def keep(self, requests: list[tuple[BatchItem, StoredRequest]]) -> None:
        """
        Store items' request ids as this try's own, in one write: a crash from here on resumes them.

        The submit count tells a retry which of an id and the manifest's is newer; the edit's digest
        lets a clear collect the job if a user stops the task before it ends.

        :param requests: each item with its request id, submit count and paid submits.
        """
        self.write(
            {
                item.key: {
                    "request_id": request.request_id,
                    "max_tries": self.max_tries,
                    "attempt": request.attempt,
                    "paid": request.paid,
                    "edit": edit_digest(item),
                }
                for item, request in requests
            }
        )

    def write(self, values: dict[str, Any]) -> None:
        """
        Write values by item key as the next group(s), each under :data:`MAX_GROUP_BYTES`.

        :param values: what to keep for each item.
        """
        group: dict[str, Any] = {}
        size = 0
        for key, value in values.items():
            part = len(json.dumps({key: value}))
            if group and size + part > MAX_GROUP_BYTES:
                self._put(group)
                group, size = {}, 0
            group[key] = value
            size += part
        if group:
            self._put(group)

    def _put(self, group: dict[str, Any]) -> None:
        self.store.set(GROUP_KEY_PREFIX + str(self.next_group), {"items": group})
        self.next_group += 1
        self._unmarked = True

    def mark(self) -> None:
        """Keep how many groups were written (once per wave): a task taken up later reads it."""
        if self._unmarked:
            self.store.set(GROUP_COUNT_KEY, self.next_group)
            self._unmarked = False
