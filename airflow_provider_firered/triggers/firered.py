"""Trigger that waits for a FireRed job in the triggerer, without holding a worker slot."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedError,
    FireRedJobEndedError,
    FireRedStartTimeoutError,
    FireRedTimeoutError,
    FireRedValidationError,
)
from airflow_provider_firered.gateway.results import JobStatus, JobStatusResult
from airflow_provider_firered.gateway.wait_policy import WaitPolicy, not_started_in_time
from airflow_provider_firered.hooks.firered import FireRedHook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

#: Polls wake on a grid of this fraction of the poll interval (at most ``MAX_GRID_SECONDS``), so that
#: the triggers sharing a loop wake up together: one wake-up of the triggerer serves many polls.
GRID_FRACTION = 0.1
MAX_GRID_SECONDS = 0.25
#: How long a trigger built without a ``deadline`` (nor a ``timeout``) waits: one day. The operator and
#: the sensor always pass their own deadline; this bounds a trigger built directly.
DEFAULT_MAX_WAIT_SECONDS = 24 * 3600.0
#: Answers that mean the gateway refused the key: a rotated key is looked up again once.
KEY_REFUSED_STATUSES = frozenset({401, 403})
#: Extra seconds Airflow's own deferral timeout allows beyond the trigger's deadline, so that the
#: trigger's clearer timeout event (naming the request and its last status) normally wins.
DEFER_SLACK = 60.0


class _KeyRefusedError(Exception):
    """The gateway refused the key even after the connection was looked up afresh."""

    def __init__(self, error: FireRedApiError) -> None:
        super().__init__(str(error))
        self.error = error


def grid_point(when: float, poll_interval: float) -> float:
    """
    The wake-up grid point nearest to ``when`` (on the loop's clock): at most half a grid step
    away, so that polls planned a fixed interval apart keep that interval on average.
    """
    grid = min(poll_interval * GRID_FRACTION, MAX_GRID_SECONDS)
    return when if grid <= 0 else round(when / grid) * grid


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

    @classmethod
    def ended(cls, job: JobStatusResult) -> StatusEvent:
        """
        The event for a job in a terminal status (``COMPLETED``, ``FAILED`` or ``ERROR``).

        :param job: the status read.
        """
        if job.status is JobStatus.COMPLETED:
            return cls(EventStatus.SUCCESS, job.request_id, result=job.to_dict())
        if job.status not in _JOB_ENDS:
            raise ValueError(f"job {job.request_id} has not ended: {job.raw_status}")
        return cls(_JOB_ENDS[job.status], job.request_id, message=job.error)

    def to_dict(self) -> dict[str, Any]:
        """The event as the trigger sends it: plain JSON values, only the keys of its status."""
        fields = {name: getattr(self, name) for name in FIELDS[self.status]}
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
        )

    def job_result(self) -> dict[str, Any]:
        """The job's result dict; for any other ending, raise the error it stands for."""
        if self.status is EventStatus.SUCCESS and self.result is not None:
            return dict(self.result)
        raise self.error()

    def error(self) -> FireRedError:
        """
        The error this ending stands for: the same type the worker path raises for the same outcome
        (``FireRedJobFailedError``, ``FireRedJobErroredError``, ``FireRedStartTimeoutError``,
        ``FireRedTimeoutError``, ``FireRedApiError``).
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


class FireRedStatusTrigger(BaseTrigger):
    """
    Poll ``GET /v2/requests/status/{request_id}`` until the job ends or a deadline passes.

    It never submits anything (a restarted triggerer must not post again), polls over the aiohttp
    session that all FireRed triggers in the triggerer's loop share, and yields exactly one
    :class:`~airflow_provider_firered.triggers.firered.StatusEvent`: ``success``, ``failed`` /
    ``error``, ``start_timeout``, ``timeout``, or ``api_error`` (``retryable`` says whether an Airflow
    retry may help: a 404 is final; a key the gateway refuses even after the connection was looked up
    afresh is retryable, and the retry resumes the same request). Transient
    failures that outlast one read's retry policy (an outage, a long 429 storm) do not end the wait:
    polling goes on, with backoff, until the deadline.
    Its kwargs are plain values: no key, no connection object.

    :param request_id: the job to wait for.
    :param firered_conn_id: the FireRed connection.
    :param poll_interval: seconds between status reads, at least 1.
    :param deadline: absolute wall-clock deadline (epoch seconds); survives a triggerer restart. When
        None, the trigger waits ``timeout`` seconds from its creation, else at most
        :data:`DEFAULT_MAX_WAIT_SECONDS` (one day): a wait never lasts forever.
    :param timeout: the wait the deadline stands for, in seconds (for the timeout message).
    :param max_poll_interval: when set, the interval grows while the job is ``PROCESSING``, up to this
        (:class:`~airflow_provider_firered.gateway.wait_policy.WaitPolicy`).
    :param start_deadline: absolute wall-clock deadline (epoch seconds) for the job to leave ``QUEUED``;
        None means none.
    :param start_timeout: the wait the start deadline stands for, in seconds (for its message).
    """

    def __init__(
        self,
        request_id: str,
        firered_conn_id: str = FireRedHook.default_conn_name,
        poll_interval: float = 5.0,
        deadline: float | None = None,
        timeout: float | None = None,
        max_poll_interval: float | None = None,
        start_deadline: float | None = None,
        start_timeout: float | None = None,
    ) -> None:
        # Airflow leaves BaseTrigger.__init__ untyped (a super() call escapes untyped_calls_exclude).
        super().__init__()  # type: ignore[no-untyped-call]
        self.policy = WaitPolicy(poll_interval, max_poll_interval, start_timeout)
        for name, value in (("deadline", deadline), ("start_deadline", start_deadline), ("timeout", timeout)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise FireRedValidationError(name, f"must be a finite number of seconds, got {value!r}")
        if timeout is not None and not timeout > 0:
            raise FireRedValidationError("timeout", f"must be a positive number of seconds, got {timeout!r}")
        self.request_id = request_id
        self.firered_conn_id = firered_conn_id
        if deadline is None:
            # Fixed now and serialized: a triggerer restart does not push it later.
            timeout = DEFAULT_MAX_WAIT_SECONDS if timeout is None else timeout
            deadline = time.time() + timeout
        self.deadline = float(deadline)
        self.timeout = None if timeout is None else float(timeout)
        if start_deadline is None and start_timeout is not None:
            start_deadline = time.time() + start_timeout  # fixed now, like the deadline
        self.start_deadline = None if start_deadline is None else float(start_deadline)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "request_id": self.request_id,
                "firered_conn_id": self.firered_conn_id,
                "poll_interval": self.policy.poll_interval,
                "deadline": self.deadline,
                "timeout": self.timeout,
                "max_poll_interval": self.policy.max_poll_interval,
                "start_deadline": self.start_deadline,
                "start_timeout": self.policy.start_timeout,
            },
        )

    def _event(self, status: EventStatus, **fields: Any) -> TriggerEvent:
        return TriggerEvent(StatusEvent(status, self.request_id, **fields).to_dict())

    async def run(self) -> AsyncIterator[TriggerEvent]:
        last_status: str | None = None
        policy = self.policy
        interval = poll_interval = policy.poll_interval
        deadline, start_deadline = self.deadline, self.start_deadline
        loop = asyncio.get_running_loop()
        # Polls are planned a fixed interval apart from the first one, independent of how long each
        # read took: many triggers waking together (the grid) must not push each other later.
        planned = loop.time()
        async with FireRedHook(self.firered_conn_id) as hook:
            while True:
                status: JobStatus | None = None
                try:
                    result = await self._read(hook)
                except _KeyRefusedError as refused:
                    yield self._key_refused_event(refused.error)
                    return
                except FireRedError as err:
                    if not err.retryable:
                        yield self._event(
                            EventStatus.API_ERROR,
                            message=str(err),
                            retryable=False,
                            http_status=err.status_code if isinstance(err, FireRedApiError) else None,
                        )
                        return
                    # The read's own retries ran out (an outage, a long 429 storm): waiting here is
                    # cheap, so keep polling until the deadline rather than failing the task's try.
                    self.log.warning("Status of %s unavailable, still waiting: %s", self.request_id, err)
                    last_status = f"unavailable ({err})"
                else:
                    status = result.status
                    last_status = result.raw_status
                    if status.is_terminal:
                        yield TriggerEvent(StatusEvent.ended(result).to_dict())
                        return
                now = time.time()
                if (
                    start_deadline is not None
                    and status is not None
                    and not_started_in_time(status, start_deadline, now)
                ):
                    yield self._event(
                        EventStatus.START_TIMEOUT,
                        last_status=last_status,
                        timeout=policy.start_timeout,
                        deadline=start_deadline,
                    )
                    return
                remaining = deadline - now
                if remaining <= 0:
                    yield self._event(
                        EventStatus.TIMEOUT,
                        last_status=last_status,
                        timeout=self.timeout,
                        deadline=deadline,
                    )
                    return
                interval = policy.next_interval(interval, status)
                planned += interval
                now_loop = loop.time()
                if planned <= now_loop:  # a read slower than the interval (its retries): plan afresh
                    planned = now_loop + interval
                delay = max(0.0, grid_point(planned, poll_interval) - now_loop)
                if status is JobStatus.QUEUED and start_deadline is not None:
                    # Read once more right at the start deadline: that read decides.
                    remaining = min(remaining, max(start_deadline - now, 0.0))
                await asyncio.sleep(min(delay, remaining))

    async def _read(self, hook: FireRedHook) -> JobStatusResult:
        """
        Read the status. A refused key (401/403) may have been rotated since the wait started: look the
        connection up afresh once, past the loop's cache, and read again.
        """
        try:
            return await hook.aget_status(self.request_id)
        except FireRedApiError as err:
            if err.status_code not in KEY_REFUSED_STATUSES:
                raise
            refused = err
        self.log.warning(
            "The gateway refused the key of connection %r (HTTP %s) while waiting for %s: "
            "looking the connection up again in case the key was rotated",
            self.firered_conn_id,
            refused.status_code,
            self.request_id,
        )
        try:
            await hook.arefresh_settings()
        except Exception as lookup_error:  # a deleted or broken connection: the refusal stands
            self.log.warning("Could not look connection %r up again: %s", self.firered_conn_id, lookup_error)
            raise _KeyRefusedError(refused) from None
        try:
            return await hook.aget_status(self.request_id)
        except FireRedApiError as err:
            if err.status_code in KEY_REFUSED_STATUSES:
                raise _KeyRefusedError(err) from None
            raise

    def _key_refused_event(self, err: FireRedApiError) -> TriggerEvent:
        # Retryable: the job may still be running and is paid for; a retry of the task resumes this
        # request id (task_state_store) once the connection holds a key the gateway accepts.
        return self._event(
            EventStatus.API_ERROR,
            message=(
                f"{err}; the key of connection {self.firered_conn_id!r} was refused again after the "
                "connection was looked up afresh. Fix the key: a retry of the task resumes this request "
                "without submitting it again"
            ),
            retryable=True,
            http_status=err.status_code,
        )

    async def on_kill(self) -> None:
        """
        Say what a user's stop leaves behind (Airflow 3.3+ calls this on mark failed, mark success
        or clear of the deferred task). The gateway has no cancel endpoint: the job runs on and is
        charged. Nothing is sent and nothing is deleted: the stored request id lets the task collect
        the job instead of paying again.
        """
        self.log.warning(stopped_by_user_text([self.request_id], STATE_KEY_HINT, AFTER_CLEAR))


#: Where the single edit keeps its request id (``FireRedEditOperator``).
STATE_KEY_HINT = "task_state_store key 'firered_request_id' (and XCom 'request_id')"
#: What a clear of the single edit does with a job a user's stop left running.
AFTER_CLEAR = (
    "clearing it runs it again, and it collects the job instead of paying again if the edit is unchanged"
)
#: The most request ids a user's stop names in the log.
MAX_IDS_NAMED = 3


def stopped_by_user_text(request_ids: list[str], kept: str, after_clear: str) -> str:
    """
    The warning a trigger logs when a user stops its task: what runs on, what it costs, where the ids
    are kept, and what Airflow does with them (Airflow 3.3's own behaviour, nothing more).

    :param request_ids: the jobs still being waited for.
    :param kept: where their request ids are kept.
    :param after_clear: what a clear of the task then does with them (the operator's behaviour).
    """
    count = len(request_ids)
    named = ", ".join(request_ids[:MAX_IDS_NAMED]) + (
        f" and {count - MAX_IDS_NAMED} more" if count > MAX_IDS_NAMED else ""
    )
    jobs = "1 FireRed job is" if count == 1 else f"{count} FireRed jobs are"
    return (
        f"Stopped by a user while waiting: the FireRed gateway has no cancel endpoint, so {jobs} still "
        f"running and will be charged ({named}). The request ids are kept in {kept}: Airflow "
        "deletes no task_state_store entry when a task is marked failed or cleared, nor when it is "
        "marked success unless [state_store] clear_on_success is set. A task marked failed or success "
        f"is not retried by Airflow; {after_clear}"
    )
