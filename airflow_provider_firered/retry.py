"""
One retry policy for the gateway, shared by the sync (worker) and async (triggerer) paths.

Retryable: 408/429/5xx answers, connection errors and timeouts (``FireRedError.retryable``).
Waits grow exponentially with random jitter, are capped, and honour ``Retry-After`` (seconds or an
HTTP date). Everything else (400/401/402/403/404, bad input) fails at once.

A submit is paid, so the hook hands this policy only what surely created no job: a ``429`` or a
connection that never opened. Any other failure after a submit left becomes a
:class:`~airflow_provider_firered.exceptions.FireRedSubmitUncertainError`, which is never retried
(unless the connection sets ``resend_submit_on_5xx``, which lets a ``5xx``/``408`` answer through).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import tenacity

from airflow_provider_firered.exceptions import FireRedError, FireRedValidationError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Connection extras that tune the policy, mapped to :class:`RetryPolicy` fields.
EXTRA_KEYS = {
    "retry_max_attempts": "max_attempts",
    "retry_initial_wait": "initial_wait",
    "retry_max_wait": "max_wait",
    "retry_multiplier": "multiplier",
    "retry_jitter": "jitter",
    "retry_max_retry_after": "max_retry_after",
    "retry_max_elapsed": "max_elapsed",
}


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
            raise FireRedValidationError(
                "retry_max_attempts", f"must be an integer >= 1, got {self.max_attempts!r}"
            )
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise FireRedValidationError(f"retry_{f.name}", f"must be a number >= 0, got {value!r}")

    @classmethod
    def from_extras(cls, extras: Mapping[str, Any]) -> RetryPolicy:
        """Build a policy from connection extras (``retry_max_attempts``, ``retry_initial_wait``, ...)."""
        kwargs: dict[str, Any] = {}
        for key, attr in EXTRA_KEYS.items():
            if key in extras and extras[key] is not None:
                value = extras[key]
                if isinstance(value, str):
                    try:
                        value = int(value) if attr == "max_attempts" else float(value)
                    except ValueError:
                        raise FireRedValidationError(key, f"must be a number, got {value!r}") from None
                kwargs[attr] = value
        return cls(**kwargs)

    @staticmethod
    def should_retry(exc: BaseException) -> bool:
        """Whether ``exc`` is transient."""
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

    def _tenacity_kwargs(self) -> dict[str, Any]:
        return {
            "stop": tenacity.stop_after_attempt(self.max_attempts)
            | tenacity.stop_after_delay(self.max_elapsed),
            "wait": self._wait,
            "retry": tenacity.retry_if_exception(self.should_retry),
            "before_sleep": self._before_sleep,
            "reraise": True,
        }

    def retrying(self) -> tenacity.Retrying:
        """A tenacity ``Retrying`` for blocking calls."""
        return tenacity.Retrying(**self._tenacity_kwargs())

    async def acall(self, call: Callable[[], Awaitable[T]]) -> T:
        """
        Await ``call()`` under this policy, sleeping with ``asyncio.sleep`` between tries.

        The same stops, waits and log lines as :meth:`retrying`, without its per-call machinery: a
        trigger runs this once per status poll, and the first try is almost always the last.

        :param call: makes one try.
        """
        started = time.monotonic()
        attempt = 1
        while True:
            try:
                return await call()
            except Exception as exc:
                if (
                    not self.should_retry(exc)
                    or attempt >= self.max_attempts
                    or time.monotonic() - started >= self.max_elapsed
                ):
                    raise
                wait = self.wait_seconds(attempt, exc)
                log.warning(
                    "FireRed call failed (try %d of %d): %s; retrying in %.1fs",
                    attempt,
                    self.max_attempts,
                    exc,
                    wait,
                )
            await asyncio.sleep(wait)
            attempt += 1
