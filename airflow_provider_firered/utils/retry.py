"""
One retry policy for the gateway, shared by the sync (worker) and async (triggerer) paths.

Retryable: 408/429/5xx answers, connection errors and timeouts (``FireRedError.retryable``).
Waits grow exponentially with random jitter, are capped, and honour ``Retry-After`` (seconds or an
HTTP date). Everything else (400/401/402/403/404, bad input) fails at once.

A submit is paid, so the hook hands this policy only what surely created no job: a ``429`` or a
connection that never opened. Any other failure after a submit left becomes a
:class:`~airflow_provider_firered.exceptions.FireRedSubmitUncertainError`, which is never retried
(unless the connection sets ``resend_submit_on_5xx``, which lets a ``5xx``/``408`` answer through).

:meth:`RetryPolicy.call` and :meth:`RetryPolicy.acall` make the first try themselves and hand a
retryable failure to tenacity, which runs every later try: a call that succeeds at once (nearly every
status poll) builds no retrier, and the stops, waits and log lines are tenacity's alone.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, fields
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

# Imported where used: Airflow imports this module (through get_provider_info and the connection
# extras) while it is itself starting, before exceptions.py, whose base class is Airflow's, can load.
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from airflow_provider_firered.exceptions import FireRedValidationError

log = logging.getLogger(__name__)
T = TypeVar("T")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """
    Parse a ``Retry-After`` header into seconds from now.

    :param value: the header value: delay-seconds or an HTTP date.
    :param now: the current epoch time (for tests).
    :return: the delay in seconds (never negative), or None if absent or unparsable.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """
    Exponential backoff with jitter for transient gateway failures.

    :param max_attempts: total tries of one call, the first included.
    :param initial_wait: wait before the first retry, in seconds.
    :param max_wait: cap on the exponential wait.
    :param multiplier: growth factor of the wait.
    :param jitter: up to this many random seconds are added to every wait.
    :param max_retry_after: cap on a ``Retry-After`` the gateway asks for.
    :param max_elapsed: give up once this many seconds have passed since the first try.
    """

    max_attempts: int = 6
    initial_wait: float = 1.0
    max_wait: float = 30.0
    multiplier: float = 2.0
    jitter: float = 1.0
    max_retry_after: float = 120.0
    max_elapsed: float = 300.0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise _invalid("retry_max_attempts", f"must be an integer >= 1, got {self.max_attempts!r}")
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise _invalid(f"retry_{f.name}", f"must be a number >= 0, got {value!r}")

    @staticmethod
    def should_retry(exc: BaseException) -> bool:
        """Whether ``exc`` is transient."""
        from airflow_provider_firered.exceptions import FireRedError

        return isinstance(exc, FireRedError) and exc.retryable

    def wait_seconds(self, attempt: int, exc: BaseException | None) -> float:
        """
        Seconds to wait before try ``attempt + 1``.

        :param attempt: the number of the try that just failed (1 for the first).
        :param exc: the error it raised; its ``retry_after`` is honoured.
        """
        backoff = min(self.max_wait, self.initial_wait * self.multiplier ** (attempt - 1))
        backoff += random.uniform(0, self.jitter)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return max(backoff, min(float(retry_after), self.max_retry_after))
        return backoff

    def call(self, call: Callable[..., T], *args: Any) -> T:
        """
        Call ``call(*args)`` under this policy, sleeping with ``time.sleep`` between tries.

        :param call: makes one try.
        :param args: passed to every try.
        """
        started = time.monotonic()
        try:
            return call(*args)
        except Exception as exc:
            if not self.should_retry(exc):
                raise
            replay = [exc]
        for attempt in tenacity.Retrying(**self._after_first_try(started)):
            with attempt:
                if replay:
                    raise replay.pop()
                return call(*args)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def acall(self, call: Callable[[], Awaitable[T]]) -> T:
        """
        Await ``call()`` under this policy, sleeping with ``asyncio.sleep`` between tries.

        :param call: makes one try.
        """
        started = time.monotonic()
        try:
            return await call()
        except Exception as exc:
            if not self.should_retry(exc):
                raise
            replay = [exc]
        async for attempt in tenacity.AsyncRetrying(**self._after_first_try(started)):
            with attempt:
                if replay:
                    raise replay.pop()
                return await call()
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    def _after_first_try(self, started: float) -> dict[str, Any]:
        """
        Return the tenacity settings for a call whose first try failed with a retryable error.

        That try ran outside tenacity (a status poll builds no retrier when it succeeds, as nearly
        all do); tenacity's first attempt re-raises its error, so the attempt numbers, the stops
        (``max_attempts``, and ``max_elapsed`` since ``started``), the waits and the log lines are
        those of one engine.

        :param started: when the first try began, on ``time.monotonic()``'s clock.
        """

        def stop(retry_state: tenacity.RetryCallState) -> bool:
            elapsed = time.monotonic() - started
            return retry_state.attempt_number >= self.max_attempts or elapsed >= self.max_elapsed

        return {
            "stop": stop,
            "wait": self._wait,
            "retry": tenacity.retry_if_exception(self.should_retry),
            "before_sleep": self._before_sleep,
            "reraise": True,
        }

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return self.wait_seconds(retry_state.attempt_number, exc)

    def _before_sleep(self, retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning(
            "FireRed call failed (try %d of %d): %s; retrying in %.1fs",
            retry_state.attempt_number,
            self.max_attempts,
            exc,
            wait,
        )


def _invalid(field: str, message: str) -> FireRedValidationError:
    from airflow_provider_firered.exceptions import FireRedValidationError

    return FireRedValidationError(field, message)
