"""Parsing of gateway answers and the mapping of every documented status code to an error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_firered.exceptions import FireRedApiError, FireRedResponseError
from airflow_provider_firered.gateway.options import MAX_NUM_IMAGES
from airflow_provider_firered.gateway.results import (
    MAX_ANSWER_BYTES,
    JobStatus,
    JobStatusResult,
    SubmitResult,
    check_answer_length,
    clip,
    parse_gateway_answer,
    scrub,
    status_path,
)

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


@pytest.mark.parametrize(
    "bad", ["", "../admin", "a/b", "id?x=1", "x" * 300, None, "id with space", "id\n", "id\r\n"]
)
def test_status_path_rejects_unsafe_ids(bad: Any) -> None:
    from airflow_provider_firered.exceptions import FireRedValidationError

    with pytest.raises(FireRedValidationError, match="request_id"):
        status_path(bad)


def test_status_path() -> None:
    assert status_path(RID) == f"/v2/requests/status/{RID}"


KEY = "sk-firered-SECRET-0123456789"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"error": f"Invalid subscription key {KEY}"}),
        (401, {"message": f"Access denied for {KEY}."}),
        (403, f"Invalid subscription key {KEY}".encode()),
        (500, ("x" * 490 + KEY).encode()),  # the key across the cut of a long text
        (401, b'{"message": "key ' + KEY.replace("-", "\\u002d").encode() + b'"}'),  # JSON escapes
        (200, f"not json {KEY}".encode()),
    ],
    ids=["error", "message", "plain-text", "across-the-cut", "json-escaped", "malformed-2xx"],
)
def test_the_key_is_scrubbed_from_every_error_text(status: int, body: Any) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(FireRedApiError) as info:
        parse_gateway_answer(status, {}, content, method="GET", request_id=RID, secret=KEY)
    err = info.value
    for text in (str(err), repr(err), str(err.error), str(err.message)):
        assert KEY not in text
        assert KEY[:12] not in text  # no part of it either
    assert "***" in str(err)


def test_the_key_is_scrubbed_from_answer_data() -> None:
    data = parse_gateway_answer(
        200,
        {},
        json.dumps({"status": "FAILED", "error": f"bad key {KEY}", KEY: [KEY]}).encode(),
        method="GET",
        request_id=RID,
        secret=KEY,
    )
    assert data == {"status": "FAILED", "error": "bad key ***", "***": ["***"]}
    assert scrub(f"a {KEY} b {KEY}", KEY) == "a *** b ***"
    assert scrub("nothing", "") == "nothing"


def test_error_texts_are_bounded_and_on_one_line() -> None:
    with pytest.raises(FireRedApiError) as info:
        answer(400, {"error": "e\n" * 10_000, "message": "m\r\nFAKE LOG LINE" * 10_000})
    assert len(info.value.error or "") <= 500
    assert len(info.value.message or "") <= 500
    assert "\n" not in str(info.value)
    assert "\r" not in str(info.value)


def test_an_answer_over_the_cap_is_refused_on_its_length() -> None:
    check_answer_length(200, MAX_ANSWER_BYTES, method="GET", request_id=RID)
    check_answer_length(200, None, method="GET", request_id=RID)
    with pytest.raises(FireRedResponseError, match="larger than") as info:
        check_answer_length(200, MAX_ANSWER_BYTES + 1, method="GET", request_id=RID)
    assert info.value.retryable
    with pytest.raises(FireRedResponseError) as post:
        check_answer_length(202, MAX_ANSWER_BYTES + 1, method="POST", request_id=None)
    assert not post.value.retryable


@pytest.mark.parametrize("named", ["../../x", "/abs/x", "firered-image-edit_other", "", 5, [RID]])
def test_a_status_answer_naming_another_id_is_a_retryable_bad_answer(named: Any) -> None:
    body = {"request_id": named, "status": "COMPLETED", "output": {"media_url": ["https://cdn/1.png"]}}
    with pytest.raises(FireRedResponseError, match="another request_id") as info:
        JobStatusResult.from_json(body, RID)
    assert info.value.retryable
    assert JobStatusResult.from_json({**body, "request_id": RID}, RID).request_id == RID
    assert JobStatusResult.from_json({**body, "request_id": None}, RID).request_id == RID


@pytest.mark.parametrize(
    "media",
    [
        [f"https://cdn/{i}.png" for i in range(MAX_NUM_IMAGES + 1)],
        ["file:///etc/passwd"],
        ["https://cdn/a.png", None],
        ["//cdn/a.png"],
        ["https://"],
        ["https://cdn/a.png\nX-Injected: 1"],
        ["https://cdn/" + "a" * 5000],
        "ftp://cdn/a.png",
        {"url": "https://cdn/a.png"},
    ],
)
def test_a_completed_answer_with_bad_media_is_a_retryable_bad_answer(media: Any) -> None:
    with pytest.raises(FireRedResponseError) as info:
        JobStatusResult.from_json({"status": "COMPLETED", "output": {"media_url": media}}, RID)
    assert info.value.retryable


def test_up_to_the_most_media_urls_are_kept() -> None:
    urls = [f"http://cdn/{i}.png" for i in range(MAX_NUM_IMAGES)]
    result = JobStatusResult.from_json({"status": "COMPLETED", "output": {"media_url": urls}}, RID)
    assert result.media_urls == urls


def test_kept_status_fields_are_bounded() -> None:
    result = JobStatusResult.from_json(
        {
            "status": "FAILED",
            "error": "x\n" * 10_000,
            "model_id": "m" * 1000,
            "output": {"media_type": "image/" + "p" * 1000},
            "created_at": "t" * 1000,
        },
        RID,
    )
    assert len(result.error or "") <= 2000
    assert "\n" not in (result.error or "")
    assert len(result.model_id or "") <= 128
    assert len(result.media_type or "") <= 128
    assert len(result.created_at or "") <= 64


@pytest.mark.parametrize("rid", ["../../x", "a/b", "x\n", "", "x" * 300, 7])
def test_a_submit_answer_with_an_unsafe_request_id_is_not_retryable(rid: Any) -> None:
    with pytest.raises(FireRedResponseError, match="request_id") as info:
        SubmitResult.from_json({"request_id": rid, "status": "QUEUED"})
    assert not info.value.retryable


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("PROCESSING", 64, "PROCESSING"),  # printable and short: returned as it is
        ("QUEUED\r\nX-Injected: 1", 64, "QUEUED  X-Injected: 1"),
        ("a\tb\x00c\x7fd\x1be", 64, "a b c d e"),
        ("é—ü 漢字", 64, "é—ü 漢字"),
        ("a\u2028b", 64, "a\u2028b"),  # not printable, yet no control character: kept
        ("x" * 70, 64, "x" * 61 + "..."),
        ("\n" * 70, 64, " " * 61 + "..."),
    ],
)
def test_clip_puts_text_on_one_line_within_its_limit(text: str, limit: int, expected: str) -> None:
    assert clip(text, limit) == expected


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("COMPLETED", JobStatus.COMPLETED),
        ("completed", JobStatus.COMPLETED),
        ("Queued", JobStatus.QUEUED),
        ("UNKNOWN", JobStatus.UNKNOWN),
        ("", JobStatus.UNKNOWN),
        (3, JobStatus.UNKNOWN),
        (None, JobStatus.UNKNOWN),
    ],
)
def test_job_status_parse_takes_any_spelling(raw: Any, status: JobStatus) -> None:
    assert JobStatus.parse(raw) is status


def test_only_completed_failed_and_error_are_terminal() -> None:
    terminal = {s for s in JobStatus if s.is_terminal}
    assert terminal == {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ERROR}


def test_a_status_with_control_characters_is_kept_on_one_line() -> None:
    result = JobStatusResult.from_json({"status": "PROCESSING\n", "created_at": "2026\r\n"}, RID)
    assert result.status is JobStatus.UNKNOWN  # not a documented status: still running
    assert (result.raw_status, result.created_at) == ("PROCESSING ", "2026  ")


def test_a_status_answer_of_subclassed_types_is_parsed_like_plain_json() -> None:
    class Text(str):
        pass

    class Mapping(dict[str, Any]):
        pass

    result = JobStatusResult.from_json(Mapping(status=Text("FAILED"), error=Text("boom")), RID)
    assert (result.status, result.raw_status, result.error) == (JobStatus.FAILED, "FAILED", "boom")
