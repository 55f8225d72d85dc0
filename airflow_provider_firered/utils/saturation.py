"""
How a task waits out a saturated gateway (``429``) without holding a worker slot.

When the gateway answers ``429`` to a submit and the task has nothing of its own in flight, waiting on
the worker would only hold its slot through each ``Retry-After``. The task defers instead on
:func:`saturation_trigger` for :func:`saturation_delay` seconds and submits again when it resumes.
A ``429`` surely created no job, so the submit sent after the deferral never pays twice.
"""

from __future__ import annotations

import datetime
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# The one place that names the timer trigger: the same import and signature on Airflow 3.0 to 3.3
# (apache-airflow-providers-standard, which apache-airflow-core itself requires).
from airflow.providers.standard.triggers.temporal import DateTimeTrigger

from airflow_provider_firered.exceptions import FireRedApiError

if TYPE_CHECKING:
    from airflow.triggers.base import BaseTrigger

    from airflow_provider_firered.exceptions import FireRedError

#: HTTP status of a gateway that is saturated (too many jobs at once): it created no job.
SATURATED = 429
#: Seconds to wait when a ``429`` carries no (usable) ``Retry-After``.
DEFAULT_SATURATION_DELAY = 5.0
#: Random jitter added to every delay: up to this fraction of it ...
JITTER_FRACTION = 0.1
#: ... but never a range below this many seconds, so that tasks refused together spread out even
#: when the gateway asks for no wait at all.
MIN_JITTER_SECONDS = 0.5
#: The shortest deferral a task should make on a saturated gateway, in seconds: Airflow 3.3 can fail a
#: task that resumes before the scheduler has heard that its deferring process exited (the batch
#: trigger's ``not_before`` rests on the same finding). Callers apply it; :func:`saturation_delay` is
#: the gateway's side only.
MIN_DEFERRAL_SECONDS = 5.0
#: The longest timer :func:`saturation_trigger` sets, in seconds (one day): a bound for any input.
MAX_TRIGGER_DELAY = 24 * 3600.0


def saturation_delay(error: FireRedError, max_wait: float) -> float:
    """
    Return the seconds to wait before submitting again after a ``429``.

    The gateway's ``Retry-After`` (:attr:`FireRedApiError.retry_after
    <airflow_provider_firered.exceptions.FireRedApiError.retry_after>`), or
    :data:`DEFAULT_SATURATION_DELAY` when it gave none, capped at ``max_wait``; plus a random jitter
    of up to :data:`JITTER_FRACTION` of it (at least up to :data:`MIN_JITTER_SECONDS`), so that tasks
    refused together do not come back together. Never negative, always finite.

    :param error: the ``429`` the gateway answered.
    :param max_wait: cap on the wait asked for, in seconds (the connection's ``retry_max_retry_after``).
    """
    cap = float(max_wait) if math.isfinite(max_wait) and max_wait > 0 else 0.0
    asked = getattr(error, "retry_after", None)
    if isinstance(asked, bool) or not isinstance(asked, (int, float)) or math.isnan(asked):
        asked = DEFAULT_SATURATION_DELAY
    base = min(max(float(asked), 0.0), cap)
    return base + random.uniform(0.0, max(base * JITTER_FRACTION, MIN_JITTER_SECONDS))


def saturation_trigger(delay: float) -> BaseTrigger:
    """
    Return a timer trigger that fires ``delay`` seconds from now and resumes the task.

    Airflow's :class:`~airflow.providers.standard.triggers.temporal.DateTimeTrigger`, at a
    timezone-aware UTC moment; it holds no worker slot while it waits.

    :param delay: seconds from now (a negative or NaN delay fires at once; at most
        :data:`MAX_TRIGGER_DELAY`).
    """
    seconds = min(delay, MAX_TRIGGER_DELAY) if delay > 0 else 0.0
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return DateTimeTrigger(moment=moment)


@dataclass(frozen=True)
class Saturation:
    """
    How long a deferrable submit may keep meeting a saturated gateway (``429``), and how often it did.

    :param deadline: epoch seconds past which a ``429`` fails the try instead of deferring again.
    :param refusals: the ``429`` answers this submit got so far.
    """

    deadline: float
    refusals: int = 0

    @classmethod
    def from_kwargs(cls, deadline: Any, refusals: Any, now: float) -> Saturation:
        """
        Return the saturation a deferral carried in its kwargs.

        A value that is not a finite number counts as ``now`` for the deadline and 1 for the refusals.

        :param deadline: the deferral's ``saturation_deadline``.
        :param refusals: the deferral's ``refusals``.
        :param now: the current epoch time.
        """
        return cls(_finite(deadline, now), int(_finite(refusals, 1)))

    def refused_again(self) -> Saturation:
        """Return this saturation with one more ``429`` counted."""
        return Saturation(self.deadline, self.refusals + 1)

    def to_dict(self) -> dict[str, float]:
        """Return the saturation as plain JSON values (kept in XCom for the try)."""
        return {"deadline": self.deadline, "refusals": self.refusals}


def saturated_error(error: FireRedApiError, refusals: int, timeout: float) -> FireRedApiError:
    """
    Return the retryable error of a submit the gateway refused with ``429`` until its deadline.

    :param error: the last ``429``.
    :param refusals: how many ``429`` answers the submit got.
    :param timeout: the wait the deadline stood for, in seconds.
    """
    saturated = FireRedApiError(SATURATED, error.error, error.message, retry_after=error.retry_after)
    saturated.args = (
        f"The FireRed gateway answered HTTP 429 (saturated: too many jobs at once) to all {refusals} "
        f"submits of this edit within its timeout of {timeout:g} s; no job was created and "
        "nothing was paid. A retry of the task submits it again",
    )
    return saturated


def _finite(value: Any, default: float) -> float:
    """Return ``value`` if it is a finite number (not a bool), else ``default``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default
