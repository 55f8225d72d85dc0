"""The batch trigger's event contract: the wire dicts, their round trip, and what an unusable one does."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_firered.exceptions import FireRedError
from airflow_provider_firered.gateway.results import JobStatus, JobStatusResult
from airflow_provider_firered.triggers.events import ENDED_FIELDS, BatchEvent, EndedJob, EndedStatus
from airflow_provider_firered.utils.airflow_errors import fails_for_good

RID = "firered-image-edit-v1-1_019d0000-0000-0000-0000-{:012d}"

#: Every ended entry the batch trigger sends, as Airflow stores it: these exact dicts are the contract
#: (the same as before the event was typed, so a task deferred then still resumes).
ENDED_WIRE: dict[EndedStatus, dict[str, Any]] = {
    EndedStatus.COMPLETED: {
        "status": "COMPLETED",
        "media_urls": ["https://cdn.test/a.png", "https://cdn.test/b.png"],
        "media_type": "image/png",
    },
    EndedStatus.FAILED: {"status": "FAILED", "error": "NSFW content"},
    EndedStatus.ERROR: {"status": "ERROR", "error": None},
    EndedStatus.START_TIMEOUT: {"status": "START_TIMEOUT", "error": "still QUEUED at its start deadline"},
    EndedStatus.API_ERROR: {
        "status": "API_ERROR",
        "error": "FireRed gateway answered HTTP 404",
        "http_status": 404,
    },
}

EVENT_WIRE = {
    "ended": {RID.format(n): ENDED_WIRE[status] for n, status in enumerate(EndedStatus)},
    "pending": [RID.format(10), RID.format(11)],
    "starts": {RID.format(10): 1_900_000_050.5},
    "deadline": 1_900_000_100.0,
}


def test_every_ended_status_has_its_wire_keys() -> None:
    assert set(ENDED_FIELDS) == set(EndedStatus) == set(ENDED_WIRE)
    for status, wire in ENDED_WIRE.items():
        assert list(wire) == ["status", *ENDED_FIELDS[status]]


def test_the_event_round_trips_exactly_as_plain_json() -> None:
    event = BatchEvent.from_dict(EVENT_WIRE)
    assert {rid: job.status for rid, job in event.ended.items()} == {
        RID.format(n): status for n, status in enumerate(EndedStatus)
    }
    assert event.pending == (RID.format(10), RID.format(11))
    assert event.starts == {RID.format(10): 1_900_000_050.5}
    assert event.deadline == 1_900_000_100.0
    assert event.to_dict() == EVENT_WIRE
    assert json.loads(json.dumps(event.to_dict())) == EVENT_WIRE
    assert BatchEvent.from_dict(event.to_dict()) == event


@pytest.mark.parametrize(
    ("job", "wire"),
    [
        (
            JobStatusResult(
                RID.format(0),
                JobStatus.COMPLETED,
                "COMPLETED",
                media_urls=["https://cdn.test/a.png", "https://cdn.test/b.png"],
                media_type="image/png",
            ),
            ENDED_WIRE[EndedStatus.COMPLETED],
        ),
        (
            JobStatusResult(RID.format(0), JobStatus.FAILED, "FAILED", error="NSFW content"),
            ENDED_WIRE[EndedStatus.FAILED],
        ),
        (JobStatusResult(RID.format(0), JobStatus.ERROR, "ERROR"), ENDED_WIRE[EndedStatus.ERROR]),
    ],
    ids=["completed", "failed", "error"],
)
def test_a_terminal_status_becomes_its_ended_entry(job: JobStatusResult, wire: dict[str, Any]) -> None:
    assert EndedJob.ended(job).to_dict() == wire


def test_a_running_job_has_no_ended_entry() -> None:
    with pytest.raises(ValueError, match="has not ended"):
        EndedJob.ended(JobStatusResult(RID.format(0), JobStatus.PROCESSING, "PROCESSING"))


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        "ended",
        {},
        {"ended": []},
        {"ended": {RID.format(0): "COMPLETED"}},
        {"ended": {RID.format(0): {"status": "weird"}}},
        {"ended": {RID.format(0): {"status": "COMPLETED", "media_urls": "https://cdn.test/a.png"}}},
        {"ended": {RID.format(0): {"status": "COMPLETED", "media_urls": [7]}}},
    ],
)
def test_an_unusable_event_is_a_retryable_error(payload: Any) -> None:
    with pytest.raises(FireRedError, match="FireRed batch trigger sent an unusable event") as info:
        BatchEvent.from_dict(payload)
    assert not fails_for_good(info.value)


def test_odd_values_beside_the_ended_jobs_are_read_defensively() -> None:
    event = BatchEvent.from_dict(
        {
            "ended": {RID.format(0): {"status": "API_ERROR", "error": 12, "http_status": True}},
            "pending": "not a list",
            "starts": {RID.format(1): "soon", RID.format(2): 5},
            "deadline": "tomorrow",
        }
    )
    assert event.ended[RID.format(0)] == EndedJob(EndedStatus.API_ERROR, error="12")
    assert (event.pending, event.starts, event.deadline) == ((), {RID.format(2): 5.0}, 0.0)


def test_the_times_round_trip_when_set_and_anything_else_reads_as_unknown() -> None:
    timed = {**EVENT_WIRE, "fired_at": 1_900_000_010.5, "ahead_of": 1_900_000_012.0}
    event = BatchEvent.from_dict(timed)
    assert (event.fired_at, event.ahead_of) == (1_900_000_010.5, 1_900_000_012.0)
    assert event.to_dict() == timed
    for junk in ("soon", None, True, -1.0, 0, float("inf"), float("nan"), [1.0]):
        event = BatchEvent.from_dict({**EVENT_WIRE, "fired_at": junk, "ahead_of": junk})
        assert (event.fired_at, event.ahead_of) == (0.0, 0.0), junk
        assert event.to_dict() == EVENT_WIRE
