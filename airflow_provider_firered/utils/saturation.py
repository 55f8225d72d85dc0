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
from typing import TYPE_CHECKING

# The one place that names the timer trigger: the same import and signature on Airflow 3.0 to 3.3
# (apache-airflow-providers-standard, which apache-airflow-core itself requires).
from airflow.providers.standard.triggers.temporal import DateTimeTrigger

if TYPE_CHECKING:
    from airflow.triggers.base import BaseTrigger

    from airflow_provider_firered.exceptions import FireRedError

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
