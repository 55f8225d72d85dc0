"""Parsing of gateway answers and the mapping of every documented status code to an error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_firered.exceptions import FireRedApiError, FireRedResponseError
from airflow_provider_firered.responses import parse_gateway_answer, status_path
from airflow_provider_firered.results import JobStatus, JobStatusResult, SubmitResult

RID = "firered-image-edit_019d0000-0000-0000-0000-000000000001"


def answer(status: int, body: Any, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_gateway_answer(status, headers or {}, content, method=method, request_id=RID)


def test_submit_answer_parsed() -> None:
    data = answer(202, {"request_id": RID, "status": "QUEUED", "polling_url": "https://g/x", "extra": 1})
    result = SubmitResult.from_json(data)
    assert (result.request_id, result.status, result.polling_url) == (RID, JobStatus.QUEUED, "https://g/x")


@pytest.mark.parametrize("body", [{}, {"status": "QUEUED"}, {"request_id": ""}, [], "x"])
def test_submit_answer_without_request_id_is_not_retryable(body: Any) -> None:
    with pytest.raises(FireRedResponseError, match="no request_id") as info:
        SubmitResult.from_json(body)
    assert not info.value.retryable  # posting again could pay twice


def test_completed_status_parsed_with_unknown_fields() -> None:
    body = {
        "request_id": RID,
        "status": "COMPLETED",
        "model_id": "firered-image-edit",
        "error": None,
        "output": {"media_url": ["https://cdn/1.png"], "media_type": "image/png", "seed": 3},
        "created_at": "2026-03-31T10:00:00.000Z",
        "updated_at": "2026-03-31T10:00:15.000Z",
        "completed_at": "2026-03-31T10:00:15.000Z",
        "new_field": {"x": 1},
    }
    result = JobStatusResult.from_json(answer(200, body), RID)
    assert result.status is JobStatus.COMPLETED
    assert result.status.is_terminal
    assert result.media_urls == ["https://cdn/1.png"]
    assert result.completed_at == "2026-03-31T10:00:15.000Z"
    assert result.to_dict() == {
        "request_id": RID,
        "model_id": "firered-image-edit",
        "status": "COMPLETED",
        "media_urls": ["https://cdn/1.png"],
        "media_type": "image/png",
        "output_paths": [],
    }


@pytest.mark.parametrize(
    ("raw", "status", "terminal"),
    [
        ("QUEUED", JobStatus.QUEUED, False),
        ("PROCESSING", JobStatus.PROCESSING, False),
        ("FAILED", JobStatus.FAILED, True),
        ("ERROR", JobStatus.ERROR, True),
        ("processing", JobStatus.PROCESSING, False),
        ("CANCELLED", JobStatus.UNKNOWN, False),
    ],
)
def test_statuses(raw: str, status: JobStatus, terminal: bool) -> None:
    result = JobStatusResult.from_json({"status": raw, "error": "boom", "output": None}, RID)
    assert result.status is status
    assert result.status.is_terminal is terminal
    assert result.raw_status == raw
    assert result.request_id == RID
    assert result.media_urls == []


@pytest.mark.parametrize("body", [{"request_id": RID}, {"status": 3}, None, ["COMPLETED"]])
def test_status_answer_without_status_is_retryable(body: Any) -> None:
    with pytest.raises(FireRedResponseError) as info:
        JobStatusResult.from_json(body, RID)
    assert info.value.retryable
    assert RID in str(info.value)


def test_completed_without_media_is_an_error() -> None:
    with pytest.raises(FireRedResponseError, match="media_url"):
        JobStatusResult.from_json({"status": "COMPLETED", "output": {"media_url": []}}, RID)


@pytest.mark.parametrize(
    ("status", "body", "retryable"),
    [
        (400, {"error": "Model not found", "message": "Model 'x' not found or is disabled"}, False),
        (401, {"error": "Unauthorized", "message": "Invalid key"}, False),
        (
            402,
            {"error": "Insufficient Balance", "message": "Your wallet does not have enough balance."},
            False,
        ),
        (403, {"error": "Forbidden", "message": "Disabled"}, False),
        (404, {"error": "Not Found", "message": "Unknown request"}, False),
        (429, {"error": "Too Many Requests", "message": "Slow down"}, True),
        (500, {"error": "Internal Server Error", "message": "oops"}, True),
        (502, b"<html>Bad Gateway</html>", True),
        (503, b"", True),
        (504, {"message": "timeout"}, True),
    ],
)
def test_error_status_mapping(status: int, body: Any, retryable: bool) -> None:
    with pytest.raises(FireRedApiError) as info:
        answer(status, body)
    err = info.value
    assert err.status_code == status
    assert err.retryable is retryable
    assert f"HTTP {status}" in str(err)
    assert RID in str(err)
    if isinstance(body, dict):
        assert err.error == body.get("error")
        assert err.message == body.get("message")
        for text in body.values():
            assert text in str(err)


def test_retry_after_read_from_error_answer() -> None:
    with pytest.raises(FireRedApiError) as info:
        answer(429, {"error": "Too Many Requests"}, {"Retry-After": "7"})
    assert info.value.retry_after == 7.0


def test_redirect_is_refused_naming_the_host_only() -> None:
    with pytest.raises(FireRedApiError, match=r"redirected to evil\.test") as info:
        answer(302, b"", {"Location": "https://evil.test/steal?x=1"})
    assert not info.value.retryable
    assert "steal" not in str(info.value)


def test_malformed_json_retryable_for_get_only() -> None:
    with pytest.raises(FireRedResponseError) as get_err:
        answer(200, b"{not json", method="GET")
    with pytest.raises(FireRedResponseError) as post_err:
        answer(202, b"{not json", method="POST")
    assert get_err.value.retryable
    assert not post_err.value.retryable


@pytest.mark.parametrize("bad", ["", "../admin", "a/b", "id?x=1", "x" * 300, None, "id with space"])
def test_status_path_rejects_unsafe_ids(bad: Any) -> None:
    from airflow_provider_firered.exceptions import FireRedValidationError

    with pytest.raises(FireRedValidationError, match="request_id"):
        status_path(bad)


def test_status_path() -> None:
    assert status_path(RID) == f"/v2/requests/status/{RID}"
