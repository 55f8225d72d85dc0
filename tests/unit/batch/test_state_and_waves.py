"""A batch's state and waves stand without the operator; each item is validated once, when it is read."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import airflow_provider_firered.batch.items as items_module
from airflow_provider_firered.batch.items import BatchItem, check_items
from airflow_provider_firered.batch.manifest import ManifestEntry
from airflow_provider_firered.batch.settings import BatchSettings
from airflow_provider_firered.batch.state import BatchState
from airflow_provider_firered.batch.waves import WaveAnswers, submit_wave
from airflow_provider_firered.gateway.results import JobStatus, SubmitResult
from airflow_provider_firered.triggers.events import BatchEvent, EndedJob, EndedStatus

if TYPE_CHECKING:
    import pytest

    from airflow_provider_firered.gateway.options import EditRequest

IMAGE = "https://example.com/a.png"
LOG = logging.getLogger(__name__)


def edits(count: int) -> list[dict[str, Any]]:
    return [{"key": f"SKU-{n}", "prompt": f"Make it blue #{n}", "images": [IMAGE]} for n in range(count)]


def settings(**changes: Any) -> BatchSettings:
    arguments: dict[str, Any] = {
        "output_root": "/tmp/firered-batch-unit",
        "max_in_flight": 10,
        "poll_interval": 5,
        "timeout": 60,
        "start_timeout": None,
        "max_failed": 0,
        "previous": None,
        "force": False,
        "deferrable": False,
        "download_threads": 4,
        **changes,
    }
    return BatchSettings.checked(**arguments)


def fresh_batch(items: list[BatchItem], **kwargs: Any) -> BatchState:
    batch = BatchState(items, {}, deadline=0.0, timeout=60.0, **kwargs)
    for item in items:
        batch.resume(item, None, None)
    return batch


class FakeHook:
    """Answers every submit with a new request id; records the requests it was given."""

    settings = None

    def __init__(self) -> None:
        self.sent: list[EditRequest] = []
        self.retries: list[bool] = []
        self.lock = threading.Lock()

    def submit_request(self, request: EditRequest, *, retry: bool = True) -> SubmitResult:
        with self.lock:
            self.sent.append(request)
            self.retries.append(retry)
            return SubmitResult(f"rid-{len(self.sent)}", JobStatus.QUEUED)


def test_each_item_is_validated_once_and_its_request_is_what_the_wave_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    validate = items_module.validate_edit  # type: ignore[attr-defined]

    def counted(*args: Any, **kwargs: Any) -> EditRequest:
        calls.append(args[1])
        return validate(*args, **kwargs)

    monkeypatch.setattr(items_module, "validate_edit", counted)
    items, invalid = check_items(edits(4), "firered-image-edit-v1-1", {"num_images": 2})
    assert (len(items), invalid, len(calls)) == (4, [], 4)
    assert [item.max_outputs for item in items] == [2] * 4
    batch = fresh_batch(items)
    hook = FakeHook()
    answers = WaveAnswers()
    submit_wave(batch, answers, settings=settings(), hook=hook, ledger=None, log=LOG)  # type: ignore[arg-type]
    assert len(calls) == 4  # nothing was validated again on the way to the gateway
    assert sorted(map(id, hook.sent)) == sorted(id(item.request) for item in items)
    assert len(answers.accepted) == 4
    # Nothing in flight: the first submit may wait out a 429 on the worker; the others pause instead.
    assert sorted(hook.retries) == [False, False, False, True]
    assert {key for key, _start in batch.in_flight.values()} == {item.key for item in items}


def test_the_state_takes_its_settings_not_an_operator() -> None:
    items, _ = check_items(edits(3), "firered-image-edit-v1-1", None)
    bad = {"#9": ManifestEntry("#9", "failed", "INVALID", error="edits[9]: not a mapping")}
    batch = BatchState(items, bad, deadline=0.0, timeout=90.0, start_timeout=30.0)
    batch.resume(items[0], None, None)
    batch.resume(items[1], ManifestEntry("SKU-1", "pending", request_id="rid-1", attempt=1), None)
    batch.resume(items[2], ManifestEntry("SKU-2", "pending", request_id="rid-2", attempt=1), None)
    assert [item.key for item in batch.queue] == ["SKU-0"]
    start = batch.in_flight["rid-1"][1]
    assert start is not None  # a start deadline from start_timeout
    batch.take_event(
        BatchEvent(
            ended={
                "rid-1": EndedJob(EndedStatus.API_ERROR, error="HTTP 404", http_status=404),
                "rid-unknown": EndedJob(EndedStatus.FAILED, error="not ours"),
            },
            pending=("rid-2",),
            starts={"rid-2": 1_900_000_000.0},
            deadline=1.0,
        )
    )
    assert batch.deadline == 1.0
    assert batch.in_flight["rid-2"] == ("SKU-2", 1_900_000_000.0)
    assert batch.settle() == []
    assert (batch.entries["SKU-1"].outcome, batch.entries["SKU-1"].status) == ("failed", "UNKNOWN_REQUEST")
    batch.give_up_waiting()
    assert batch.entries["SKU-2"].error == "request rid-2 did not finish within the batch's 90s"
    assert batch.entries["SKU-0"].status == "NOT_SUBMITTED"
    assert [entry.key for entry in batch.manifest()] == ["SKU-0", "SKU-1", "SKU-2", "#9"]


def test_a_completed_job_waits_for_its_download_with_its_outputs() -> None:
    items, _ = check_items(edits(1), "firered-image-edit-v1-1", None)
    batch = fresh_batch(items)
    batch.submitted(items[0], "rid-1")
    ended = EndedJob(EndedStatus.COMPLETED, media_urls=("https://cdn.test/a.png",), media_type="image/png")
    batch.take_event(BatchEvent({"rid-1": ended}))
    assert batch.settle() == [(items[0], "rid-1", ended)]
    assert batch.entries["SKU-0"].outcome == "pending"  # until its outputs are saved
    batch.downloaded(items[0], ["/out/SKU-0/rid-1_0.png"])
    assert (batch.entries["SKU-0"].outcome, batch.entries["SKU-0"].outputs) == (
        "edited",
        ["/out/SKU-0/rid-1_0.png"],
    )
