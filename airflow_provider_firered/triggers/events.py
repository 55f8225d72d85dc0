"""Define the events the FireRed triggers send to the tasks they wake: typed, with plain JSON on the wire."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedError,
    FireRedJobEndedError,
    FireRedStartTimeoutError,
    FireRedTimeoutError,
)
from airflow_provider_firered.gateway.results import JobStatus, JobStatusResult

# -- the event ------------------------------------------------------------------------------------
# One typed payload, read back by the operator and the sensor. On the wire (Airflow stores it) it is a
# dict of plain JSON values whose keys depend on its ``status`` (:data:`FIELDS`). A terminal status
# read on the worker becomes the same event (:meth:`StatusEvent.ended`), so both ways of waiting raise
# the same error for the same outcome.


class EventStatus(str, Enum):
    """How a wait ended."""

    #: The job is ``COMPLETED``: ``result`` holds the result dict.
    SUCCESS = "success"
    #: The job ended ``FAILED`` (charged, final): ``message`` holds the gateway's error text.
    FAILED = "failed"
    #: The job ended ``ERROR`` (not charged): ``message`` holds the gateway's error text.
    ERROR = "error"
    #: The deadline passed first: ``last_status``, ``timeout`` and ``deadline`` say when and where.
    TIMEOUT = "timeout"
    #: The job was still ``QUEUED`` at its start deadline: ``timeout`` and ``deadline`` are the start's.
    START_TIMEOUT = "start_timeout"
    #: The status could not be read: ``message``, ``retryable`` and ``http_status`` say why.
    API_ERROR = "api_error"


#: The keys each status puts on the wire, besides ``status`` and ``request_id``.
FIELDS: dict[EventStatus, tuple[str, ...]] = {
    EventStatus.SUCCESS: ("result",),
    EventStatus.FAILED: ("message",),
    EventStatus.ERROR: ("message",),
    EventStatus.TIMEOUT: ("last_status", "timeout", "deadline"),
    EventStatus.START_TIMEOUT: ("last_status", "timeout", "deadline"),
    EventStatus.API_ERROR: ("message", "retryable", "http_status"),
}
#: The job statuses that end a wait in failure, and the event each becomes.
_JOB_ENDS = {JobStatus.FAILED: EventStatus.FAILED, JobStatus.ERROR: EventStatus.ERROR}
_ENDED_JOBS = {event: job for job, event in _JOB_ENDS.items()}


@dataclass(frozen=True)
class StatusEvent:
    """
    How waiting for one job ended.

    :param status: how the wait ended; it decides which other fields are set (:data:`FIELDS`).
    :param request_id: the job.
    :param result: the result dict of a ``COMPLETED`` job.
    :param message: the gateway's error text, or what went wrong reading the status.
    :param retryable: whether an Airflow retry may help after an ``api_error``.
    :param http_status: the gateway's HTTP status for an ``api_error``, when it answered.
    :param last_status: the last status seen before the deadline.
    :param timeout: the wait the deadline stood for, in seconds (for ``start_timeout``: the start's).
    :param deadline: the deadline, in epoch seconds.
    :param duration: seconds from the job's creation to its end by the gateway's clock, when it ended
        and the gateway said when (on the wire only then).
    """

    status: EventStatus
    request_id: str
    result: dict[str, Any] | None = None
    message: str | None = None
    retryable: bool = False
    http_status: int | None = None
    last_status: str | None = None
    timeout: float | None = None
    deadline: float | None = None
    duration: float | None = None

    @classmethod
    def ended(cls, job: JobStatusResult) -> StatusEvent:
        """
        Return the event for a job in a terminal status (``COMPLETED``, ``FAILED`` or ``ERROR``).

        :param job: the status read.
        """
        if job.status is JobStatus.COMPLETED:
            return cls(EventStatus.SUCCESS, job.request_id, result=job.to_dict(), duration=job.duration)
        if job.status not in _JOB_ENDS:
            raise ValueError(f"job {job.request_id} has not ended: {job.raw_status}")
        return cls(_JOB_ENDS[job.status], job.request_id, message=job.error, duration=job.duration)

    def to_dict(self) -> dict[str, Any]:
        """Return the event as the trigger sends it: plain JSON values, only the keys of its status."""
        fields = {name: getattr(self, name) for name in FIELDS[self.status]}
        if self.duration is not None:
            fields["duration"] = self.duration
        return {"status": self.status.value, "request_id": self.request_id, **fields}

    @classmethod
    def from_dict(cls, data: Any) -> StatusEvent:
        """
        Read an event back; anything unusable raises a :class:`FireRedError` (Airflow's retries apply).

        :param data: the event payload, as Airflow hands it to ``execute_complete``.
        """
        try:
            status = EventStatus(data["status"])
        except (TypeError, KeyError, ValueError):
            raise FireRedError(f"FireRed trigger sent an unusable event: {data!r}") from None
        result = data.get("result")
        if status is EventStatus.SUCCESS and not isinstance(result, dict):
            raise FireRedError(f"FireRed trigger sent an unusable event: {data!r}")
        return cls(
            status=status,
            request_id=str(data.get("request_id", "unknown")),
            result=result if status is EventStatus.SUCCESS else None,
            message=_text(data.get("message")),
            retryable=bool(data.get("retryable")),
            http_status=_int(data.get("http_status")),
            last_status=_text(data.get("last_status")),
            timeout=_float(data.get("timeout")),
            deadline=_float(data.get("deadline")),
            duration=_float(data.get("duration")),
        )

    def job_result(self) -> dict[str, Any]:
        """Return the job's result dict; for any other ending, raise the error it stands for."""
        if self.status is EventStatus.SUCCESS and self.result is not None:
            return dict(self.result)
        raise self.error()

    def error(self) -> FireRedError:
        """
        Return the error this ending stands for.

        It is the same type the worker path raises for the same outcome (``FireRedJobFailedError``,
        ``FireRedJobErroredError``, ``FireRedStartTimeoutError``, ``FireRedTimeoutError``,
        ``FireRedApiError``).
        """
        if self.status in _ENDED_JOBS:
            job_status = _ENDED_JOBS[self.status].value
            return FireRedJobEndedError.for_status(self.request_id, job_status, self.message)
        if self.status is EventStatus.TIMEOUT:
            return FireRedTimeoutError(self.request_id, self.timeout or 0.0, self.last_status)
        if self.status is EventStatus.START_TIMEOUT:
            return FireRedStartTimeoutError(self.request_id, self.timeout or 0.0)
        if self.status is EventStatus.SUCCESS:  # only a success without its result gets here
            return FireRedError(f"FireRed trigger sent an unusable event: {self.to_dict()!r}")
        return FireRedApiError.reported(
            f"{self.message} (request_id={self.request_id})",
            status_code=self.http_status,
            request_id=self.request_id,
            retryable=self.retryable,
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _finite(value: Any) -> float:
    """Return ``value`` if it is a finite, positive time, else 0 (unknown)."""
    number = _float(value)
    return number if number is not None and 0 < number < math.inf else 0.0


# -- the batch event ------------------------------------------------------------------------------
# The batch trigger waits for many jobs and sends one event per wait. On the wire it is
# ``{"ended": {request_id: {"status", ...}}, "pending": [request_id, ...], "starts": {request_id:
# start deadline}, "deadline": ..., "fired_at": ..., "ahead_of": ...}`` (the last two only when set);
# each ended entry holds only the keys of its status
# (:data:`ENDED_FIELDS`). Its statuses are spelt as the gateway spells a job's (the manifest records them).


class EndedStatus(str, Enum):
    """How one job of a batch ended."""

    #: The job is ``COMPLETED``: ``media_urls`` and ``media_type`` hold its outputs.
    COMPLETED = "COMPLETED"
    #: The job ended ``FAILED`` (charged, final): ``error`` holds the gateway's error text.
    FAILED = "FAILED"
    #: The job ended ``ERROR`` (not charged): ``error`` holds the gateway's error text.
    ERROR = "ERROR"
    #: The job was still ``QUEUED`` at its start deadline: ``error`` says so.
    START_TIMEOUT = "START_TIMEOUT"
    #: The gateway refused to tell (e.g. a ``404``): ``error`` and ``http_status`` say why.
    API_ERROR = "API_ERROR"


#: The keys each ended status puts on the wire, besides ``status``.
ENDED_FIELDS: dict[EndedStatus, tuple[str, ...]] = {
    EndedStatus.COMPLETED: ("media_urls", "media_type"),
    EndedStatus.FAILED: ("error",),
    EndedStatus.ERROR: ("error",),
    EndedStatus.START_TIMEOUT: ("error",),
    EndedStatus.API_ERROR: ("error", "http_status"),
}


@dataclass(frozen=True)
class EndedJob:
    """
    How one job of a batch ended.

    :param status: how it ended; it decides which other fields are set (:data:`ENDED_FIELDS`).
    :param media_urls: the outputs of a ``COMPLETED`` job.
    :param media_type: their MIME type, when the gateway gave it.
    :param error: the gateway's error text, or what went wrong reading the status.
    :param http_status: the gateway's HTTP status for an ``API_ERROR``, when it answered.
    :param duration: seconds from the job's creation to its end by the gateway's clock, when it ended
        and the gateway said when (on the wire only then).
    """

    status: EndedStatus
    media_urls: tuple[str, ...] = ()
    media_type: str | None = None
    error: str | None = None
    http_status: int | None = None
    duration: float | None = None

    @classmethod
    def ended(cls, job: JobStatusResult) -> EndedJob:
        """
        Return the entry of a job in a terminal status (``COMPLETED``, ``FAILED`` or ``ERROR``).

        :param job: the status read.
        """
        if job.status is JobStatus.COMPLETED:
            urls, media_type = tuple(job.media_urls), job.media_type
            return cls(EndedStatus.COMPLETED, media_urls=urls, media_type=media_type, duration=job.duration)
        if job.status not in _JOB_ENDS:
            raise ValueError(f"job {job.request_id} has not ended: {job.raw_status}")
        return cls(EndedStatus(job.status.value), error=job.error, duration=job.duration)

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as the trigger sends it: plain JSON values, only the keys of its status."""
        fields = {name: getattr(self, name) for name in ENDED_FIELDS[self.status]}
        if "media_urls" in fields:
            fields["media_urls"] = list(self.media_urls)
        if self.duration is not None:
            fields["duration"] = self.duration
        return {"status": self.status.value, **fields}

    @classmethod
    def from_dict(cls, data: Any) -> EndedJob | None:
        """
        Read an entry back; None when it is unusable (not a mapping, an unknown status, bad URLs).

        :param data: one value of the event's ``ended``.
        """
        try:
            status = EndedStatus(data["status"])
        except (TypeError, KeyError, ValueError):
            return None
        urls = data.get("media_urls") or []
        if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
            return None
        return cls(
            status=status,
            media_urls=tuple(urls) if status is EndedStatus.COMPLETED else (),
            media_type=_text(data.get("media_type")),
            error=_text(data.get("error")),
            http_status=_int(data.get("http_status")),
            duration=_float(data.get("duration")),
        )


@dataclass(frozen=True)
class BatchEvent:
    """
    How one wait of a batch ended: the jobs that ended, and those still pending.

    :param ended: request id -> how its job ended.
    :param pending: the request ids still running.
    :param starts: request id -> start deadline (epoch seconds), for the pending jobs that have one.
    :param deadline: the deadline of the batch's try (epoch seconds); 0 when unknown.
    :param fired_at: when the trigger yielded the event (epoch seconds); 0 when unknown.
    :param ahead_of: the wave's expected end (epoch seconds) when the trigger fired before it, on its
        ``ready_at``, so that the task is running again as the wave ends; 0 otherwise.
    """

    ended: dict[str, EndedJob]
    pending: tuple[str, ...] = ()
    starts: dict[str, float] = field(default_factory=dict)
    deadline: float = 0.0
    fired_at: float = 0.0
    ahead_of: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the event as the trigger sends it: plain JSON values (the two times only when set)."""
        wire: dict[str, Any] = {
            "ended": {rid: job.to_dict() for rid, job in self.ended.items()},
            "pending": list(self.pending),
            "starts": dict(self.starts),
            "deadline": self.deadline,
        }
        if self.fired_at:
            wire["fired_at"] = self.fired_at
        if self.ahead_of:
            wire["ahead_of"] = self.ahead_of
        return wire

    @classmethod
    def from_dict(cls, data: Any) -> BatchEvent:
        """
        Read an event back; anything unusable raises a :class:`FireRedError` (Airflow's retries apply).

        :param data: the event payload, as Airflow hands it to ``execute_complete``.
        """
        unusable = FireRedError(f"FireRed batch trigger sent an unusable event: {str(data)[:200]!r}")
        if not isinstance(data, dict) or not isinstance(data.get("ended"), dict):
            raise unusable
        ended = {}
        for rid, entry in data["ended"].items():
            job = EndedJob.from_dict(entry)
            if job is None:
                raise unusable
            ended[str(rid)] = job
        pending, starts = data.get("pending"), data.get("starts")
        return cls(
            ended=ended,
            pending=tuple(str(rid) for rid in pending) if isinstance(pending, list) else (),
            starts={
                str(rid): start
                for rid, value in (starts.items() if isinstance(starts, dict) else ())
                if (start := _float(value)) is not None
            },
            deadline=_float(data.get("deadline")) or 0.0,
            fired_at=_finite(data.get("fired_at")),
            ahead_of=_finite(data.get("ahead_of")),
        )
