"""The retry policy: backoff growth, caps, jitter, Retry-After, and which errors are retried."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedConnectionError,
    FireRedError,
    FireRedJobFailedError,
    FireRedResponseError,
    FireRedSubmitUncertainError,
    FireRedValidationError,
)
from airflow_provider_firered.retry import RetryPolicy, parse_retry_after


def test_parse_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    assert (
        parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now.timestamp()) == 0
    )
    assert parse_retry_after("-3") == 0
    for absent in (None, "", "soon", "Mon, 99 Foo 2026"):
        assert parse_retry_after(absent) is None


def test_exponential_backoff_is_capped_with_bounded_jitter() -> None:
    policy = RetryPolicy(initial_wait=1, multiplier=2, max_wait=5, jitter=0.5)
    for attempt, base in [(1, 1), (2, 2), (3, 4), (4, 5), (10, 5)]:
        for _ in range(50):
            assert base <= policy.wait_seconds(attempt, None) <= base + 0.5


def test_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy(initial_wait=0.1, jitter=0, max_retry_after=20)
    assert policy.wait_seconds(1, FireRedApiError(429, retry_after=7)) == 7
    assert policy.wait_seconds(1, FireRedApiError(429, retry_after=3600)) == 20
    # A short Retry-After never shortens the exponential backoff.
    assert policy.wait_seconds(5, FireRedApiError(429, retry_after=0)) == pytest.approx(1.6)


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (FireRedApiError(429), True),
        (FireRedApiError(500), True),
        (FireRedApiError(503), True),
        (FireRedConnectionError("h", "reset"), True),
        (FireRedApiError(400), False),
        (FireRedApiError(401), False),
        (FireRedApiError(402), False),
        (FireRedApiError(403), False),
        (FireRedApiError(404), False),
        (FireRedValidationError("f", "bad"), False),
        (FireRedJobFailedError("r", "FAILED", "x"), False),
        (FireRedSubmitUncertainError("gateway.test", "HTTP 502"), False),
        (FireRedResponseError(200, "forged request_id", retryable=True), True),
        (FireRedResponseError(202, "not JSON", retryable=False), False),
        (ValueError("x"), False),
    ],
)
def test_what_is_retried(exc: BaseException, retry: bool) -> None:
    assert RetryPolicy.should_retry(exc) is retry


def test_retrying_stops_after_max_attempts_and_reraises() -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        raise FireRedApiError(503)

    policy = RetryPolicy(max_attempts=3, initial_wait=0, jitter=0)
    with pytest.raises(FireRedApiError):
        policy.retrying()(flaky)
    assert len(calls) == 3


def test_non_retryable_is_raised_at_once() -> None:
    calls: list[int] = []

    def denied() -> None:
        calls.append(1)
        raise FireRedApiError(401)

    with pytest.raises(FireRedApiError):
        RetryPolicy(initial_wait=0).retrying()(denied)
    assert len(calls) == 1


async def test_acall_uses_the_same_policy() -> None:
    calls: list[int] = []
    policy = RetryPolicy(max_attempts=4, initial_wait=0, jitter=0)

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise FireRedConnectionError("h", "refused")
        return "read"

    assert await policy.acall(flaky) == "read"
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("policy", "error", "tries"),
    [
        (RetryPolicy(max_attempts=3, initial_wait=0, jitter=0), FireRedApiError(503), 3),
        (RetryPolicy(max_attempts=9, initial_wait=0, jitter=0, max_elapsed=0), FireRedApiError(503), 1),
        (RetryPolicy(max_attempts=9, initial_wait=0, jitter=0), FireRedApiError(401), 1),
    ],
    ids=["max-attempts", "max-elapsed", "not-retryable"],
)
async def test_acall_stops_like_retrying(policy: RetryPolicy, error: FireRedError, tries: int) -> None:
    def sync_call() -> None:
        sync_calls.append(1)
        raise error

    async def async_call() -> None:
        async_calls.append(1)
        raise error

    sync_calls: list[int] = []
    async_calls: list[int] = []
    with pytest.raises(type(error)):
        policy.retrying()(sync_call)
    with pytest.raises(type(error)):
        await policy.acall(async_call)
    assert len(async_calls) == len(sync_calls) == tries


async def test_acall_waits_as_told_by_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    policy = RetryPolicy(max_attempts=2, initial_wait=0, jitter=0)
    calls: list[float] = []

    async def limited() -> None:
        calls.append(time.monotonic())
        raise FireRedApiError(429, retry_after=0.3)

    with pytest.raises(FireRedApiError):
        await policy.acall(limited)
    assert calls[1] - calls[0] >= 0.3
    assert "FireRed call failed (try 1 of 2)" in caplog.text


def test_policy_from_connection_extras() -> None:
    policy = RetryPolicy.from_extras({"retry_max_attempts": "3", "retry_initial_wait": 0.5, "other": 1})
    assert (policy.max_attempts, policy.initial_wait, policy.max_wait) == (3, 0.5, 30.0)


@pytest.mark.parametrize(
    ("extras", "field"),
    [
        ({"retry_max_attempts": 0}, "retry_max_attempts"),
        ({"retry_max_attempts": "many"}, "retry_max_attempts"),
        ({"retry_initial_wait": -1}, "retry_initial_wait"),
        ({"retry_max_wait": "x"}, "retry_max_wait"),
    ],
)
def test_bad_extras_name_the_field(extras: dict[str, object], field: str) -> None:
    with pytest.raises(FireRedValidationError) as info:
        RetryPolicy.from_extras(extras)
    assert info.value.field == field
