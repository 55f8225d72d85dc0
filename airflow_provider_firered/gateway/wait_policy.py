"""
Pace a wait's status reads and decide when it stops waiting for a job to start.

One policy for the trigger, the operator's worker path and the sensor, so that every way of waiting
behaves alike.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.exceptions import (
    FireRedStartTimeoutError,
    FireRedTimeoutError,
    FireRedValidationError,
)
from airflow_provider_firered.gateway.results import JobStatus

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_firered.gateway.results import JobStatusResult

#: The shortest accepted ``poll_interval`` / ``poke_interval``, in seconds (the reference recommends 5-10).
MIN_POLL_INTERVAL = 1.0
#: With ``max_poll_interval`` set, each status read that finds the job ``PROCESSING`` makes the next
#: interval this many times longer, up to the cap: a 10-minute job polled from 5 s reaches a 60 s cap
#: after seven reads instead of making 120.
BACKOFF_FACTOR = 1.5
#: The most resubmissions of an ``ERROR`` job ``resubmit_on_error`` may ask for.
MAX_RESUBMITS = 10


def validate_poll_interval(name: str, value: Any) -> None:
    """
    Check a polling interval, naming the field: at least :data:`MIN_POLL_INTERVAL` seconds.

    :param name: the field, as the user spells it (``poll_interval``, ``poke_interval``).
    :param value: its value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= MIN_POLL_INTERVAL:
        raise FireRedValidationError(
            name,
            f"must be at least {MIN_POLL_INTERVAL:g} second (5-10 s is recommended), got {value!r}",
        )


def validate_timeout(value: Any) -> None:
    """
    Check a wait's ``timeout``, naming the field: a positive number of seconds.

    :param value: its value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise FireRedValidationError("timeout", f"must be a positive number of seconds, got {value!r}")


def validate_resubmit_on_error(value: Any) -> None:
    """
    Check ``resubmit_on_error``, naming the field: a whole number from 0 to :data:`MAX_RESUBMITS`.

    :param value: its value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RESUBMITS:
        raise FireRedValidationError(
            "resubmit_on_error", f"must be a whole number from 0 to {MAX_RESUBMITS}, got {value!r}"
        )


def validate_seconds(name: str, value: Any, *, at_least: float = 0.0) -> None:
    """
    Check an optional duration, naming the field: None, or a finite number of seconds.

    The number must be above ``at_least``, or equal to it when it is not 0.

    :param name: the field, as the user spells it.
    :param value: its value.
    :param at_least: the smallest value allowed; 0 means "positive".
    """
    if value is None:
        return
    valid = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not valid or not (value >= at_least if at_least else value > 0):
        allowed = f"at least {at_least:g}" if at_least else "a positive number of"
        raise FireRedValidationError(name, f"must be {allowed} seconds, or None; got {value!r}")


@dataclass(frozen=True)
class WaitPolicy:
    """
    How often to read a job's status, and how long it may stay ``QUEUED``.

    :param poll_interval: seconds between status reads, at least :data:`MIN_POLL_INTERVAL`.
    :param max_poll_interval: when set, the interval grows by :data:`BACKOFF_FACTOR` after each read
        that finds the job ``PROCESSING``, up to this many seconds; ``None`` (the default) keeps it fixed.
    :param start_timeout: when set, a job still ``QUEUED`` this many seconds after the wait began ends
        the wait (:class:`~airflow_provider_firered.exceptions.FireRedStartTimeoutError`).
    :param poll_field: the interval's name, as the user spells it (the sensor's is ``poke_interval``).
    """

    poll_interval: float
    max_poll_interval: float | None = None
    start_timeout: float | None = None
    poll_field: str = "poll_interval"

    def __post_init__(self) -> None:
        validate_poll_interval(self.poll_field, self.poll_interval)
        validate_seconds("max_poll_interval", self.max_poll_interval, at_least=self.poll_interval)
        validate_seconds("start_timeout", self.start_timeout)

    def next_interval(self, current: float, status: JobStatus | None) -> float:
        """
        Return the interval before the next read, after a read found ``status`` (None: it could not be read).

        :param current: the interval used before that read.
        :param status: the status read.
        """
        if status is JobStatus.PROCESSING and self.max_poll_interval is not None:
            return min(current * BACKOFF_FACTOR, self.max_poll_interval)
        if status is None:  # an unreadable status says nothing about the job: keep the pace
            return current
        return self.poll_interval

    def start_deadline(self, waiting_since: float) -> float | None:
        """
        Return the epoch time by which the job must have left ``QUEUED``, for a wait that began then.

        :param waiting_since: when the wait began, in epoch seconds.
        """
        return None if self.start_timeout is None else waiting_since + self.start_timeout


def not_started_in_time(status: JobStatus, start_deadline: float | None, now: float) -> bool:
    """
    Return whether a job read ``status`` at ``now`` is still ``QUEUED`` past its start deadline.

    :param status: the status read.
    :param start_deadline: the start deadline in epoch seconds; None means none.
    :param now: when it was read, in epoch seconds.
    """
    return start_deadline is not None and status is JobStatus.QUEUED and now >= start_deadline


def poll_until_done(
    read: Callable[[str], JobStatusResult],
    status: JobStatusResult,
    policy: WaitPolicy,
    *,
    deadline: float,
    start_deadline: float | None,
    timeout: float,
) -> JobStatusResult:
    """
    Read a job's status, blocking, until it ends: the trigger's policy, for a wait on the worker.

    Raise :class:`FireRedStartTimeoutError` when the job is still ``QUEUED`` at ``start_deadline``,
    and :class:`FireRedTimeoutError` once ``deadline`` passes.

    :param read: reads the status of a request id (the hook's ``get_status``).
    :param status: the status to start from.
    :param policy: the wait's pace and start timeout.
    :param deadline: the end of the wait, in epoch seconds.
    :param start_deadline: when the job must have left ``QUEUED``, in epoch seconds (None: no limit).
    :param timeout: the wait the deadline stands for, in seconds (for its message).
    :return: the job's terminal status.
    """
    interval = policy.poll_interval
    while not status.status.is_terminal:
        now = time.time()
        if not_started_in_time(status.status, start_deadline, now):
            raise FireRedStartTimeoutError(status.request_id, policy.start_timeout or 0.0)
        remaining = deadline - now
        if remaining <= 0:
            raise FireRedTimeoutError(status.request_id, timeout, status.raw_status)
        if status.status is JobStatus.QUEUED and start_deadline is not None:
            remaining = min(remaining, max(start_deadline - now, 0.0))  # read again right then
        time.sleep(min(interval, remaining))
        status = read(status.request_id)
        interval = policy.next_interval(interval, status.status)
    return status
