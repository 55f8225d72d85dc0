"""The retry policy: backoff growth, caps, jitter, Retry-After, and which errors are retried."""

from __future__ import annotations

import asyncio
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
from airflow_provider_firered.utils.retry import RetryPolicy, parse_retry_after


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


def test_call_stops_after_max_attempts_and_reraises() -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        raise FireRedApiError(503)

    policy = RetryPolicy(max_attempts=3, initial_wait=0, jitter=0)
    with pytest.raises(FireRedApiError):
        policy.call(flaky)
    assert len(calls) == 3


def test_non_retryable_is_raised_at_once() -> None:
    calls: list[int] = []

    def denied() -> None:
        calls.append(1)
        raise FireRedApiError(401)

    with pytest.raises(FireRedApiError):
        RetryPolicy(initial_wait=0).call(denied)
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
async def test_acall_stops_like_call(policy: RetryPolicy, error: FireRedError, tries: int) -> None:
    def sync_call() -> None:
        sync_calls.append(1)
        raise error

    async def async_call() -> None:
        async_calls.append(1)
        raise error

    sync_calls: list[int] = []
    async_calls: list[int] = []
    with pytest.raises(type(error)):
        policy.call(sync_call)
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


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_attempts": 0}, "retry_max_attempts"),
        ({"max_attempts": 2.5}, "retry_max_attempts"),
        ({"initial_wait": -1}, "retry_initial_wait"),
        ({"max_wait": "x"}, "retry_max_wait"),
    ],
)
def test_a_bad_policy_names_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(FireRedValidationError) as info:
        RetryPolicy(**fields)  # type: ignore[arg-type]
    assert info.value.field == field


async def test_sync_and_async_log_the_same_tries(caplog: pytest.LogCaptureFixture) -> None:
    policy = RetryPolicy(max_attempts=3, initial_wait=0, jitter=0)

    def sync_call() -> None:
        raise FireRedApiError(503)

    async def async_call() -> None:
        raise FireRedApiError(503)

    with caplog.at_level("WARNING", logger="airflow_provider_firered.utils.retry"):
        with pytest.raises(FireRedApiError):
            policy.call(sync_call)
        sync_lines = [r.getMessage() for r in caplog.records]
        caplog.clear()
        with pytest.raises(FireRedApiError):
            await policy.acall(async_call)
        async_lines = [r.getMessage() for r in caplog.records]
    assert sync_lines == async_lines
    assert [line.split(":")[0] for line in sync_lines] == [
        "FireRed call failed (try 1 of 3)",
        "FireRed call failed (try 2 of 3)",
    ]


async def test_max_elapsed_counts_the_first_try() -> None:
    # The first try runs before the retry engine starts: its time still counts against max_elapsed.
    policy = RetryPolicy(max_attempts=5, initial_wait=0, jitter=0, max_elapsed=0.2)
    sync_calls: list[int] = []
    async_calls: list[int] = []

    def slow() -> None:
        sync_calls.append(1)
        time.sleep(0.3)
        raise FireRedApiError(503)

    async def aslow() -> None:
        async_calls.append(1)
        await asyncio.sleep(0.3)
        raise FireRedApiError(503)

    with pytest.raises(FireRedApiError):
        policy.call(slow)
    with pytest.raises(FireRedApiError):
        await policy.acall(aslow)
    assert sync_calls == async_calls == [1]


def test_call_passes_arguments_and_returns_the_first_success() -> None:
    calls: list[tuple[int, str]] = []

    def flaky(number: int, word: str) -> str:
        calls.append((number, word))
        if len(calls) == 1:
            raise FireRedConnectionError("h", "reset")
        return f"{word} {number}"

    assert RetryPolicy(initial_wait=0, jitter=0).call(flaky, 7, "try") == "try 7"
    assert calls == [(7, "try"), (7, "try")]
