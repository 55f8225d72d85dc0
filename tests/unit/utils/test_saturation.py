"""How long a task waits out a saturated gateway (429), and the timer it defers on."""

from __future__ import annotations

import datetime
import math

import pytest
from airflow.providers.standard.triggers.temporal import DateTimeTrigger

from airflow_provider_firered.exceptions import FireRedApiError
from airflow_provider_firered.utils.saturation import (
    DEFAULT_SATURATION_DELAY,
    JITTER_FRACTION,
    MAX_TRIGGER_DELAY,
    MIN_JITTER_SECONDS,
    saturation_delay,
    saturation_trigger,
)


def jitter_cap(base: float) -> float:
    return max(base * JITTER_FRACTION, MIN_JITTER_SECONDS)


@pytest.mark.parametrize(
    ("retry_after", "max_wait", "base"),
    [
        (30.0, 120.0, 30.0),  # as asked
        (300.0, 120.0, 120.0),  # capped
        (None, 120.0, DEFAULT_SATURATION_DELAY),  # none given: the documented default
        (None, 2.0, 2.0),  # the default is capped too
        (0.0, 120.0, 0.0),
        (-5.0, 120.0, 0.0),  # never negative
        (math.inf, 7.0, 7.0),
        (math.nan, 120.0, DEFAULT_SATURATION_DELAY),
        (30.0, -1.0, 0.0),  # a nonsensical cap waits only the jitter
        (30.0, math.nan, 0.0),
    ],
)
def test_the_delay_is_retry_after_capped_plus_jitter(
    retry_after: float | None, max_wait: float, base: float
) -> None:
    delays = [saturation_delay(FireRedApiError(429, retry_after=retry_after), max_wait) for _ in range(200)]
    assert all(base <= d <= base + jitter_cap(base) for d in delays), (min(delays), max(delays))
    assert len(set(delays)) > 1  # jittered: tasks refused together do not come back together


def test_an_error_without_retry_after_waits_the_default() -> None:
    from airflow_provider_firered.exceptions import FireRedError

    delay = saturation_delay(FireRedError("saturated"), 120.0)
    assert (
        DEFAULT_SATURATION_DELAY <= delay <= DEFAULT_SATURATION_DELAY + jitter_cap(DEFAULT_SATURATION_DELAY)
    )


@pytest.mark.parametrize(
    ("delay", "expected"),
    [(12.5, 12.5), (0.0, 0.0), (-3.0, 0.0), (math.nan, 0.0), (1e300, MAX_TRIGGER_DELAY)],
)
def test_the_trigger_fires_delay_seconds_from_now_in_utc(delay: float, expected: float) -> None:
    before = datetime.datetime.now(datetime.timezone.utc)
    trigger = saturation_trigger(delay)
    after = datetime.datetime.now(datetime.timezone.utc)
    assert isinstance(trigger, DateTimeTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow.providers.standard.triggers.temporal.DateTimeTrigger"
    moment = kwargs["moment"]
    assert moment.utcoffset() == datetime.timedelta(0)
    span = datetime.timedelta(seconds=expected)
    assert before + span <= moment <= after + span
    assert kwargs["end_from_trigger"] is False  # the task resumes; the trigger does not end it
