"""
Count what the provider pays for and waits on, through Airflow's own stats client (StatsD, OpenTelemetry).

Every name is under ``firered.``, after Airflow's ``[metrics] statsd_prefix`` (``airflow`` by default):

=============================  =======  ==============================================================
Name                           Type     Meaning
=============================  =======  ==============================================================
``firered.submits.sent``       counter  Edit requests the gateway accepted: each one is paid.
``firered.submits.uncertain``  counter  Edit requests sent whose answer was lost: maybe paid, never
                                        sent again.
``firered.rate_limited``       counter  Answers ``429 Too Many Requests`` from the gateway.
``firered.jobs.completed``     counter  Jobs that ended ``COMPLETED``.
``firered.jobs.failed``        counter  Jobs that ended ``FAILED`` (charged).
``firered.jobs.errored``       counter  Jobs that ended ``ERROR`` (not charged).
``firered.edits.reused``       counter  Edits taken from an earlier run instead of paid again.
``firered.status_reads``       counter  Job status reads sent to the gateway.
``firered.download_bytes``     counter  Bytes of edited images downloaded.
``firered.job_duration``       timer    Milliseconds from a job's submit to its end.
=============================  =======  ==============================================================

Each metric is tagged ``model=<model id>`` where Airflow's stats backend carries tags (DogStatsD,
InfluxDB-style StatsD, OpenTelemetry); plain StatsD gets the plain name. :data:`METRIC_NAMES` holds the
same table for the documentation. Nothing here raises: a stats backend that fails loses the metric,
never an edit.
"""

from __future__ import annotations

import logging
import math
import re
from datetime import timedelta
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from airflow_provider_firered import version_compat

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)


class Metric(str, Enum):
    """The provider's metric names."""

    SUBMITS_SENT = "firered.submits.sent"
    SUBMITS_UNCERTAIN = "firered.submits.uncertain"
    RATE_LIMITED = "firered.rate_limited"
    JOBS_COMPLETED = "firered.jobs.completed"
    JOBS_FAILED = "firered.jobs.failed"
    JOBS_ERRORED = "firered.jobs.errored"
    EDITS_REUSED = "firered.edits.reused"
    STATUS_READS = "firered.status_reads"
    DOWNLOAD_BYTES = "firered.download_bytes"
    JOB_DURATION = "firered.job_duration"


#: The timers; every other metric is a counter.
TIMERS = frozenset({Metric.JOB_DURATION})

#: Each metric's name and meaning, in the order of the module's table.
METRIC_NAMES: Mapping[str, str] = MappingProxyType(
    {
        Metric.SUBMITS_SENT.value: "Edit requests the gateway accepted: each one is paid.",
        Metric.SUBMITS_UNCERTAIN.value: "Edit requests sent whose answer was lost: maybe paid, never sent "
        "again.",
        Metric.RATE_LIMITED.value: "Answers 429 Too Many Requests from the gateway.",
        Metric.JOBS_COMPLETED.value: "Jobs that ended COMPLETED.",
        Metric.JOBS_FAILED.value: "Jobs that ended FAILED (charged).",
        Metric.JOBS_ERRORED.value: "Jobs that ended ERROR (not charged).",
        Metric.EDITS_REUSED.value: "Edits taken from an earlier run instead of paid again.",
        Metric.STATUS_READS.value: "Job status reads sent to the gateway.",
        Metric.DOWNLOAD_BYTES.value: "Bytes of edited images downloaded.",
        Metric.JOB_DURATION.value: "Milliseconds from a job's submit to its end (a timer).",
    }
)

#: The tag key that carries the model id.
MODEL_TAG = "model"
#: Tag values keep the characters every backend takes in a name (InfluxDB-style tags join the name).
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_TAG_MAX_LENGTH = 64

_warned = False


def count(metric: Metric, n: int = 1, *, model: str | None = None) -> None:
    """
    Add ``n`` to the counter ``metric``, tagged with ``model`` where tags are supported; never raise.

    :param metric: a counter from :class:`Metric` (not a timer).
    :param n: how much to add; nothing is sent for zero or less.
    :param model: the model id the edits used, if known.
    """
    try:
        metric = Metric(metric)
        if metric in TIMERS:
            log.debug("%s is a timer, not a counter: not counted", metric.value)
            return
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            return
        version_compat.stats_client().incr(metric.value, count=n, tags=model_tags(model))
    except Exception as error:  # metrics must never fail an edit
        _lost(metric, error)


def job_duration(seconds: float, *, model: str | None = None) -> None:
    """
    Record one job's duration under ``firered.job_duration``, tagged with ``model``; never raise.

    :param seconds: the job's duration; a negative or non-finite value is not sent.
    :param model: the model id the job used, if known.
    """
    try:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            return
        if not math.isfinite(seconds) or seconds < 0:
            return
        version_compat.stats_client().timing(
            Metric.JOB_DURATION.value, timedelta(seconds=seconds), tags=model_tags(model)
        )
    except Exception as error:  # metrics must never fail an edit
        _lost(Metric.JOB_DURATION, error)


#: The final job statuses, as the gateway and the triggers' events spell them, and their counters.
_JOB_ENDS: Mapping[str, Metric] = MappingProxyType(
    {
        "COMPLETED": Metric.JOBS_COMPLETED,
        "SUCCESS": Metric.JOBS_COMPLETED,
        "FAILED": Metric.JOBS_FAILED,
        "ERROR": Metric.JOBS_ERRORED,
    }
)


def job_ended(status: str, *, model: str | None = None, seconds: float | None = None) -> None:
    """
    Count a job whose final status the worker took, and time it when its duration is known; never raise.

    Any other status (still running, a timeout, a status that could not be read) counts nothing.

    :param status: ``COMPLETED``, ``FAILED`` or ``ERROR`` (a trigger event's ``success``, ``failed``,
        ``error`` too), in any case.
    :param model: the model id the job used, if known.
    :param seconds: the job's duration from its submit to its end; ``None`` when unknown (no timer).
    """
    metric = _JOB_ENDS.get(status.upper()) if isinstance(status, str) else None
    if metric is None:
        return
    count(metric, model=model)
    if seconds is not None:
        job_duration(seconds, model=model)


def model_tags(model: str | None) -> dict[str, Any] | None:
    """
    Return the tags for ``model``: ``{"model": <id>}`` with characters no backend refuses, or ``None``.

    :param model: the model id, or ``None`` when unknown.
    """
    if not isinstance(model, str) or not model.strip():
        return None
    return {MODEL_TAG: _TAG_UNSAFE.sub("_", model.strip())[:_TAG_MAX_LENGTH]}


def markdown_table() -> str:
    """Return the metric names as a Markdown table (name, type, meaning) for the documentation."""
    rows = ["| Name | Type | Meaning |", "| --- | --- | --- |"]
    for name, meaning in METRIC_NAMES.items():
        kind = "timer" if Metric(name) in TIMERS else "counter"
        rows.append(f"| `{name}` | {kind} | {meaning} |")
    return "\n".join(rows)


def _lost(metric: Any, error: Exception) -> None:
    global _warned
    # Once per process at warning level: a broken backend would otherwise log on every edit.
    level = logging.DEBUG if _warned else logging.WARNING
    _warned = True
    log.log(
        level,
        "FireRed metric %s not sent: %s: %s",
        getattr(metric, "value", metric),
        type(error).__name__,
        error,
    )
