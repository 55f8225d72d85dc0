"""Accepted request ids reach ``task_state_store`` in a few writes per wave, and every one is read back."""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.batch.items import check_items
from airflow_provider_firered.batch.store import (
    GROUP_COUNT_KEY,
    GROUP_KEY_PREFIX,
    MAX_GROUP_BYTES,
    STATE_KEY_PREFIX,
    RequestLedger,
    StoredRequest,
    stored_request,
)
from airflow_provider_firered.batch.waves import WaveAnswers, submit_wave
from tests.unit.batch.test_state_and_waves import LOG, FakeHook, edits, fresh_batch, settings

if TYPE_CHECKING:
    from airflow_provider_firered.gateway.options import EditRequest
    from airflow_provider_firered.gateway.results import SubmitResult


class SlowStore:
    """A store whose every write takes ``write_seconds``, as a call to Airflow's execution API does."""

    def __init__(self, write_seconds: float = 0.0) -> None:
        self.values: dict[str, Any] = {}
        self.writes: list[str] = []
        self.write_seconds = write_seconds

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        time.sleep(self.write_seconds)
        self.writes.append(key)
        self.values[key] = json.loads(json.dumps(value))  # kept as JSON, as Airflow keeps it


class NetworkHook(FakeHook):
    """Takes a few milliseconds per submit, as the gateway does."""

    def submit_request(self, request: EditRequest, *, retry: bool = True) -> SubmitResult:
        time.sleep(0.005)
        return super().submit_request(request, retry=retry)


def test_a_wave_stores_its_accepted_ids_in_a_few_writes_and_each_is_read_back() -> None:
    items, _ = check_items(edits(40), "firered-image-edit-v1-1", None)
    batch = fresh_batch(items)
    store = SlowStore(write_seconds=0.05)
    ledger = RequestLedger(store, 3)
    answers = WaveAnswers()
    submit_wave(
        batch,
        answers,
        settings=settings(max_in_flight=40, download_threads=8),
        hook=NetworkHook(),  # type: ignore[arg-type]
        ledger=ledger,
        log=LOG,
    )
    assert len(answers.accepted) == 40
    groups = [key for key in store.writes if key.startswith(GROUP_KEY_PREFIX)]
    # One write per id was 40 calls; the first submit goes alone, the other 39 while writes run.
    assert 2 <= len(groups) <= 10
    assert groups == [f"{GROUP_KEY_PREFIX}{n}" for n in range(len(groups))]
    assert len(store.values[groups[0]]["items"]) == 1
    _again, values = RequestLedger.read(store, 3, items)
    assert _again.next_group == len(groups)
    for item in items:
        entry = batch.entries[item.key]
        assert stored_request(values[item.key], 3) == StoredRequest(str(entry.request_id), 1, 1)


def test_the_last_group_naming_an_item_wins_and_a_retry_writes_after_every_group() -> None:
    items, _ = check_items(edits(2), "firered-image-edit-v1-1", None)
    store = SlowStore()
    ledger = RequestLedger(store, 3)
    ledger.keep([(items[0], StoredRequest("rid-a", 1, 1)), (items[1], StoredRequest("rid-b", 1, 1))])
    ledger.keep([(items[0], StoredRequest("rid-c", 2, 2))])  # submitted again (it ended ERROR)
    retry, values = RequestLedger.read(store, 3, items)
    assert stored_request(values["SKU-0"], 3) == StoredRequest("rid-c", 2, 2)
    assert stored_request(values["SKU-1"], 3) == StoredRequest("rid-b", 1, 1)
    retry.keep([(items[1], StoredRequest("rid-d", 2, 2))])
    assert sorted(store.values) == [f"{GROUP_KEY_PREFIX}{n}" for n in range(3)]  # nothing overwritten


def test_a_resumed_try_looks_past_a_count_it_could_not_write() -> None:
    items, _ = check_items(edits(3), "firered-image-edit-v1-1", None)
    store = SlowStore()
    ledger = RequestLedger(store, 3)
    ledger.keep([(items[0], StoredRequest("rid-a", 1, 1))])
    ledger.mark()
    assert store.values[GROUP_COUNT_KEY] == 1
    ledger.mark()  # nothing new: no write
    assert store.writes.count(GROUP_COUNT_KEY) == 1
    ledger.keep([(items[1], StoredRequest("rid-b", 1, 1))])  # the worker was lost before the count
    later = RequestLedger.carry_on(store, 3)
    assert later.next_group == 2
    later.keep([(items[2], StoredRequest("rid-c", 1, 1))])
    _retry, values = RequestLedger.read(store, 3, items)
    assert {key: value["request_id"] for key, value in values.items()} == {
        "SKU-0": "rid-a",
        "SKU-1": "rid-b",
        "SKU-2": "rid-c",
    }


@pytest.mark.parametrize("count", ["many", -1, True, None])
def test_a_count_that_is_not_a_count_is_read_from_the_start(count: Any) -> None:
    items, _ = check_items(edits(1), "firered-image-edit-v1-1", None)
    store = SlowStore()
    RequestLedger(store, 3).keep([(items[0], StoredRequest("rid-a", 1, 1))])
    if count is not None:
        store.values[GROUP_COUNT_KEY] = count
    assert RequestLedger.carry_on(store, 3).next_group == 1


def test_a_group_stays_under_the_store_s_value_limit() -> None:
    long_keys = [
        {"key": f"SKU-{n:04d}-" + "x" * 100, "prompt": "p", "images": edits(1)[0]["images"]}
        for n in range(900)
    ]
    items, _ = check_items(long_keys, "firered-image-edit-v1-1", None)
    store = SlowStore()
    ledger = RequestLedger(store, 3)
    ledger.keep([(item, StoredRequest(f"rid-{n}-" + "r" * 60, 1, 1)) for n, item in enumerate(items)])
    assert ledger.next_group > 1
    assert all(len(json.dumps(value)) <= MAX_GROUP_BYTES + 100 for value in store.values.values())
    _retry, values = RequestLedger.read(store, 3, items)
    assert len(values) == 900


def test_ids_kept_one_per_item_by_an_earlier_version_are_read_and_kept_as_a_group() -> None:
    items, _ = check_items(edits(3), "firered-image-edit-v1-1", None)
    store = SlowStore()
    old = {"request_id": "rid-old", "max_tries": 3, "attempt": 1, "paid": 1, "edit": "e"}
    store.values[STATE_KEY_PREFIX + "SKU-1"] = old
    retry, values = RequestLedger.read(store, 3, items)
    assert values == {"SKU-1": old}
    assert store.values[f"{GROUP_KEY_PREFIX}0"] == {"items": {"SKU-1": old}}
    assert retry.next_group == 1
    # Once groups exist, the per-item keys are not read again.
    store.values[STATE_KEY_PREFIX + "SKU-2"] = old
    assert set(RequestLedger.read(store, 3, items)[1]) == {"SKU-1"}


class RefusingStore(SlowStore):
    """Airflow's API refuses every write after the first (the try was failed meanwhile)."""

    def set(self, key: str, value: Any) -> None:
        if self.writes:
            raise RuntimeError("API_SERVER_ERROR: 404 Task instance not found")
        super().set(key, value)


def test_a_refused_write_stops_the_wave_and_every_accepted_id_stays_in_the_batch() -> None:
    items, _ = check_items(edits(12), "firered-image-edit-v1-1", None)
    batch = fresh_batch(items)
    answers = WaveAnswers()
    hook = NetworkHook()
    with pytest.raises(RuntimeError, match="404 Task instance not found"):
        submit_wave(
            batch,
            answers,
            settings=settings(max_in_flight=12, download_threads=4),
            hook=hook,  # type: ignore[arg-type]
            ledger=RequestLedger(RefusingStore(), 3),
            log=LOG,
        )
    # What was accepted is in the batch's entries (the manifest written as the try fails); what was
    # not sent stays queued for the retry.
    sent = len(hook.sent)
    assert 2 <= sent <= 12
    assert sum(1 for entry in batch.entries.values() if entry.request_id) == sent
    assert len(batch.queue) == 12 - sent


def test_writes_and_submits_run_side_by_side() -> None:
    # The threads go on sending while a write is under way: a slow store does not slow the POSTs.
    items, _ = check_items(edits(16), "firered-image-edit-v1-1", None)
    batch = fresh_batch(items)
    store = SlowStore(write_seconds=0.2)
    seen: list[int] = []
    hook = NetworkHook()
    lock = threading.Lock()
    original = store.set

    def noting(key: str, value: Any) -> None:
        with lock:
            seen.append(len(hook.sent))
        original(key, value)

    store.set = noting  # type: ignore[method-assign]
    submit_wave(
        batch,
        WaveAnswers(),
        settings=settings(max_in_flight=16, download_threads=8),
        hook=hook,  # type: ignore[arg-type]
        ledger=RequestLedger(store, 3),
        log=LOG,
    )
    assert seen[0] == 1  # the first submit goes alone, and is stored at once
    # The others go out together: the rest were all sent while the next (0.2 s) write ran.
    assert len(seen) <= 3
    assert seen[-1] == 16
