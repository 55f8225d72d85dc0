"""The trigger's event contract: the wire dicts, their round trip, and the errors they stand for."""

from __future__ import annotations

import json
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedError,
    FireRedJobErroredError,
    FireRedJobFailedError,
    FireRedStartTimeoutError,
    FireRedTimeoutError,
    FireRedValidationError,
)
from airflow_provider_firered.gateway.results import JobStatus, JobStatusResult
from airflow_provider_firered.triggers.events import FIELDS, EventStatus, StatusEvent
from airflow_provider_firered.utils.airflow_errors import AirflowErrorAdapter, fails_for_good, for_airflow

RID = "firered-image-edit-v1-1_abc"
RESULT = {
    "request_id": RID,
    "model_id": "firered-image-edit-v1-1",
    "status": "COMPLETED",
    "media_urls": ["https://cdn.test/out.png"],
    "media_type": "image/png",
    "output_paths": [],
}

#: Every event the trigger sends, as Airflow stores it: these exact dicts are the contract.
WIRE: dict[EventStatus, dict[str, Any]] = {
    EventStatus.SUCCESS: {"status": "success", "request_id": RID, "result": RESULT},
    EventStatus.FAILED: {"status": "failed", "request_id": RID, "message": "NSFW content"},
    EventStatus.ERROR: {"status": "error", "request_id": RID, "message": None},
    EventStatus.TIMEOUT: {
        "status": "timeout",
        "request_id": RID,
        "last_status": "PROCESSING",
        "timeout": 60.0,
        "deadline": 1_900_000_000.5,
    },
    EventStatus.START_TIMEOUT: {
        "status": "start_timeout",
        "request_id": RID,
        "last_status": "QUEUED",
        "timeout": 30.0,
        "deadline": 1_900_000_000.5,
    },
    EventStatus.API_ERROR: {
        "status": "api_error",
        "request_id": RID,
        "message": "FireRed gateway answered HTTP 404",
        "retryable": False,
        "http_status": 404,
    },
}


def test_every_status_has_its_wire_keys() -> None:
    assert set(FIELDS) == set(EventStatus) == set(WIRE)
    for status, wire in WIRE.items():
        assert list(wire) == ["status", "request_id", *FIELDS[status]]


@pytest.mark.parametrize("status", list(EventStatus))
def test_round_trip_is_exact_and_plain_json(status: EventStatus) -> None:
    event = StatusEvent.from_dict(WIRE[status])
    assert event.status is status
    assert event.to_dict() == WIRE[status]
    assert json.loads(json.dumps(event.to_dict())) == WIRE[status]  # plain JSON values only
    assert StatusEvent.from_dict(event.to_dict()) == event


@pytest.mark.parametrize(
    ("job", "wire"),
    [
        (JobStatusResult(RID, JobStatus.FAILED, "FAILED", error="NSFW content"), WIRE[EventStatus.FAILED]),
        (JobStatusResult(RID, JobStatus.ERROR, "ERROR"), WIRE[EventStatus.ERROR]),
        (
            JobStatusResult(
                RID,
                JobStatus.COMPLETED,
                "COMPLETED",
                model_id="firered-image-edit-v1-1",
                media_urls=["https://cdn.test/out.png"],
                media_type="image/png",
            ),
            WIRE[EventStatus.SUCCESS],
        ),
    ],
    ids=["failed", "error", "completed"],
)
def test_a_terminal_status_read_on_the_worker_is_the_same_event(job: JobStatusResult, wire: Any) -> None:
    assert StatusEvent.ended(job).to_dict() == wire


def test_a_running_job_has_no_event() -> None:
    with pytest.raises(ValueError, match="has not ended"):
        StatusEvent.ended(JobStatusResult(RID, JobStatus.PROCESSING, "PROCESSING"))


@pytest.mark.parametrize(
    "payload",
    [None, {}, [], "success", {"status": "weird"}, {"status": "success"}, {"status": "success", "result": 1}],
)
def test_an_unusable_event_is_a_retryable_error(payload: Any) -> None:
    with pytest.raises(FireRedError, match="FireRed trigger sent an unusable event") as info:
        StatusEvent.from_dict(payload)
    assert not fails_for_good(info.value)


def test_a_success_gives_a_copy_of_the_result() -> None:
    event = StatusEvent.from_dict(WIRE[EventStatus.SUCCESS])
    result = event.job_result()
    assert result == RESULT
    result["output_paths"] = ["/tmp/x.png"]
    assert event.job_result()["output_paths"] == []


@pytest.mark.parametrize(
    ("status", "kind", "final", "text"),
    [
        (EventStatus.FAILED, FireRedJobFailedError, True, f"FireRed job {RID} ended FAILED: NSFW content"),
        (EventStatus.ERROR, FireRedJobErroredError, False, f"FireRed job {RID} ended ERROR: no error text"),
        (EventStatus.TIMEOUT, FireRedTimeoutError, False, f"FireRed job {RID} did not finish within 60s"),
        (
            EventStatus.START_TIMEOUT,
            FireRedStartTimeoutError,
            True,
            f"The gateway did not start request {RID} within 30s (still QUEUED)",
        ),
        (
            EventStatus.API_ERROR,
            FireRedApiError,
            True,
            f"FireRed gateway answered HTTP 404 (request_id={RID})",
        ),
    ],
)
def test_each_ending_raises_its_own_type_and_outcome(
    status: EventStatus, kind: type[FireRedError], final: bool, text: str
) -> None:
    with pytest.raises(kind) as info, AirflowErrorAdapter():
        StatusEvent.from_dict(WIRE[status]).job_result()
    assert str(info.value).startswith(text)
    assert isinstance(info.value, AirflowFailException) is final
    assert type(info.value).__name__ == kind.__name__  # the task log names the provider's own type


def test_a_retryable_api_error_keeps_airflow_retries() -> None:
    wire = {**WIRE[EventStatus.API_ERROR], "retryable": True, "http_status": 401}
    error = StatusEvent.from_dict(wire).error()
    assert isinstance(error, FireRedApiError)
    assert (error.status_code, error.retryable, fails_for_good(error)) == (401, True, False)


@pytest.mark.parametrize(
    ("error", "final"),
    [
        (FireRedValidationError("prompt", "must not be empty"), True),
        (FireRedApiError(402), True),
        (FireRedApiError(503), False),
        (FireRedJobFailedError(RID, "FAILED", "x"), True),
        (FireRedJobErroredError(RID, "ERROR", "x"), False),
        (FireRedTimeoutError(RID, 5), False),
        (FireRedError("anything else"), False),
    ],
)
def test_the_worker_path_raises_the_same_types(error: FireRedError, final: bool) -> None:
    kind, message, attributes = type(error), str(error), dict(vars(error))
    raised = for_airflow(error)
    assert raised is error
    assert isinstance(raised, kind)
    assert isinstance(raised, AirflowFailException) is final
    assert vars(raised) == attributes
    if not isinstance(error, FireRedValidationError):
        assert str(raised) == message


def test_bad_input_says_so_in_the_task_log() -> None:
    with pytest.raises(FireRedValidationError) as info, AirflowErrorAdapter():
        raise FireRedValidationError("poll_interval", "must be at least 1 second")
    assert str(info.value) == "Invalid input: poll_interval: must be at least 1 second"
    assert isinstance(info.value, AirflowFailException)
    assert info.value.field == "poll_interval"


def test_a_success_without_its_result_is_unusable() -> None:
    with pytest.raises(FireRedError, match="unusable event") as info:
        StatusEvent(EventStatus.SUCCESS, RID).job_result()
    assert type(info.value) is FireRedError
