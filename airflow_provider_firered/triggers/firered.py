"""Trigger that waits for a FireRed job in the triggerer, without holding a worker slot."""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedError,
    FireRedValidationError,
)
from airflow_provider_firered.gateway.results import JobStatus, JobStatusResult
from airflow_provider_firered.gateway.wait_policy import WaitPolicy, not_started_in_time
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.triggers.events import EventStatus, StatusEvent
from airflow_provider_firered.triggers.polling import (
    DEFAULT_MAX_WAIT_SECONDS,
    KEY_REFUSED_STATUSES,
    grid_point,
    stopped_by_user_text,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class _KeyRefusedError(Exception):
    """The gateway refused the key even after the connection was looked up afresh."""

    def __init__(self, error: FireRedApiError) -> None:
        super().__init__(str(error))
        self.error = error


class FireRedStatusTrigger(BaseTrigger):
    """
    Poll ``GET /v2/requests/status/{request_id}`` until the job ends or a deadline passes.

    It never submits anything (a restarted triggerer must not post again), polls over the aiohttp
    session that all FireRed triggers in the triggerer's loop share, and yields exactly one
    :class:`~airflow_provider_firered.triggers.events.StatusEvent`: ``success``, ``failed`` /
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
        """Return the trigger's class path and kwargs: plain values, no key, no connection object."""
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
        """Poll the status until the job ends or a deadline passes; yield exactly one event."""
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
        Read the status; after a refused key, look the connection up afresh once and read again.

        A refused key (401/403) may have been rotated since the wait started: the lookup goes past
        the loop's cache.
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
        Say what a user's stop leaves behind.

        Airflow 3.3+ calls this on mark failed, mark success or clear of the deferred task. The
        gateway has no cancel endpoint: the job runs on and is charged. Nothing is sent and nothing
        is deleted: the stored request id lets the task collect the job instead of paying again.
        """
        self.log.warning(stopped_by_user_text([self.request_id], STATE_KEY_HINT, AFTER_CLEAR))


#: Where the single edit keeps its request id (``FireRedEditOperator``).
STATE_KEY_HINT = "task_state_store key 'firered_request_id' (and XCom 'request_id')"
#: What a clear of the single edit does with a job a user's stop left running.
AFTER_CLEAR = (
    "clearing it runs it again, and it collects the job instead of paying again if the edit is unchanged"
)
