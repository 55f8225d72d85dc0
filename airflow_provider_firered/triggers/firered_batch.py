"""Trigger that waits for many FireRed jobs at once, for a batch edit, without holding a worker slot."""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_firered.exceptions import FireRedApiError, FireRedError, FireRedValidationError
from airflow_provider_firered.gateway.wait_policy import WaitPolicy, not_started_in_time
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.triggers.events import BatchEvent, EndedJob, EndedStatus
from airflow_provider_firered.triggers.polling import KEY_REFUSED_STATUSES, grid_point, stopped_by_user_text

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from airflow_provider_firered.gateway.results import JobStatusResult

#: What a clear of a batch does with the jobs a user's stop left running (``FireRedBatchEditOperator``).
AFTER_CLEAR = (
    "clearing it runs the batch again: it collects the jobs still running of items left unchanged "
    "instead of paying again, and submits afresh the items whose job ended or that changed"
)
#: Seconds a batch waits after deferring before its trigger may fire. Airflow 3.3 can fail a task
#: that resumes while the scheduler has yet to hear that its deferring process exited; a batch whose
#: other half-wave already ended would otherwise resume at once.
RESUME_AFTER = 5.0
#: How much before ``ready_at`` a wake-up still counts as on time (the loop's clock is not the wall's).
READY_SLACK = 0.05


class FireRedBatchStatusTrigger(BaseTrigger):
    """
    Poll the status of many requests until enough of them ended, then yield one event.

    Reads go on the shared session and the wake-up grid until at least ``min_ended`` requests ended
    (or all did, or the deadline passed); the event is a
    :class:`~airflow_provider_firered.triggers.events.BatchEvent`: how each ended job ended
    (:class:`~airflow_provider_firered.triggers.events.EndedStatus`), the requests still pending and
    their start deadlines. A read whose retries ran out leaves its request pending. It never submits
    anything; its kwargs are plain values: request ids, no key.

    :param requests: ``[request_id, start_deadline or None]`` pairs.
    :param firered_conn_id: the FireRed connection.
    :param poll_interval: seconds between reads of each request, at least 1.
    :param deadline: absolute wall-clock deadline (epoch seconds) of the whole wait.
    :param min_ended: fire once this many requests ended (at most all of them).
    :param not_before: no read, and so no event, before this wall-clock time (epoch seconds) unless the
        deadline comes first.
    :param ready_at: yield by this wall-clock time (epoch seconds) however few requests ended, so that
        the task is running again when its wave is due to end; 0 for never. The event then says
        ``ahead_of=due``.
    :param due: when the wave is expected to end (epoch seconds), for the event of ``ready_at``.
    :param manifest: where the batch's manifest is (a path or URL, as the operator wrote it), named
        in the log if a user stops the task; optional.
    """

    def __init__(
        self,
        requests: list[list[Any]],
        firered_conn_id: str = FireRedHook.default_conn_name,
        poll_interval: float = 10.0,
        deadline: float = 0.0,
        min_ended: int = 1,
        not_before: float = 0.0,
        manifest: str | None = None,
        ready_at: float = 0.0,
        due: float = 0.0,
    ) -> None:
        # Airflow leaves BaseTrigger.__init__ untyped (a super() call escapes untyped_calls_exclude).
        super().__init__()  # type: ignore[no-untyped-call]
        self.policy = WaitPolicy(poll_interval)
        if not isinstance(requests, list) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)
            for pair in requests
        ):
            raise FireRedValidationError("requests", "must be a list of [request_id, start_deadline] pairs")
        self.requests: list[tuple[str, float | None]] = [
            (str(rid), None if start is None else float(start)) for rid, start in requests
        ]
        self.firered_conn_id = firered_conn_id
        self.deadline = float(deadline)
        self.min_ended = max(1, min(int(min_ended), len(self.requests)))
        self.not_before = float(not_before)
        self.ready_at = float(ready_at)
        self.due = float(due)
        if manifest is not None and not isinstance(manifest, str):
            raise FireRedValidationError(
                "manifest", f"must be a string or None, got {type(manifest).__name__}"
            )
        self.manifest = manifest

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the plain kwargs that rebuild this trigger."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "requests": [list(pair) for pair in self.requests],
                "firered_conn_id": self.firered_conn_id,
                "poll_interval": self.policy.poll_interval,
                "deadline": self.deadline,
                "min_ended": self.min_ended,
                "not_before": self.not_before,
                "manifest": self.manifest,
                "ready_at": self.ready_at,
                "due": self.due,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait until enough requests ended, then yield the one :class:`BatchEvent`."""
        pending: dict[str, float | None] = {str(rid): start for rid, start in self.requests}
        ended: dict[str, EndedJob] = {}
        interval = self.policy.poll_interval
        ready_at = self.ready_at or math.inf
        hold = min(self.not_before, self.deadline, ready_at) - time.time()
        if hold > 0:
            await asyncio.sleep(hold)
        loop = asyncio.get_running_loop()
        planned = loop.time()
        refreshed = False
        async with FireRedHook(self.firered_conn_id) as hook:
            while True:
                if ready_at - READY_SLACK <= time.time() < self.deadline:
                    # Nothing is read: the task reads the wave itself, from the moment it is due.
                    yield self._event(ended, pending, ahead_of=self.due)
                    return
                ids = list(pending)
                reads = await asyncio.gather(*(self._read(hook, rid) for rid in ids))
                now = time.time()
                refused = [read for read in reads if isinstance(read, FireRedApiError)]
                if refused and not refreshed:
                    # The key may have been rotated: look the connection up afresh once, read again.
                    self.log.warning(
                        "The gateway refused the key: looking connection %r up again", self.firered_conn_id
                    )
                    await hook.arefresh_settings()
                    refreshed = True
                    continue
                for rid, read in zip(ids, reads, strict=True):
                    if read is None:
                        continue  # unavailable for now: still pending
                    if isinstance(read, FireRedApiError):
                        read = EndedJob(
                            EndedStatus.API_ERROR,
                            error=f"{read}: the key was refused again",
                            http_status=read.status_code,
                        )
                    if isinstance(read, EndedJob):
                        ended[rid] = read
                    elif read.status.is_terminal:
                        ended[rid] = EndedJob.ended(read)
                    elif not_started_in_time(read.status, pending[rid], now):
                        ended[rid] = EndedJob(
                            EndedStatus.START_TIMEOUT, error="still QUEUED at its start deadline"
                        )
                    else:
                        continue
                    del pending[rid]
                if len(ended) >= self.min_ended or not pending or now >= self.deadline:
                    yield self._event(ended, pending)
                    return
                planned += interval
                now_loop = loop.time()
                if planned <= now_loop:  # reads slower than the interval: plan afresh
                    planned = now_loop + interval
                wake = grid_point(planned, interval) - now_loop
                until = min(wake + now, self.deadline, self._next_start_deadline(pending), ready_at)
                await asyncio.sleep(max(0.0, until - now))

    def _event(
        self, ended: dict[str, EndedJob], pending: dict[str, float | None], ahead_of: float = 0.0
    ) -> TriggerEvent:
        starts = {rid: start for rid, start in pending.items() if start is not None}
        event = BatchEvent(ended, tuple(pending), starts, self.deadline, time.time(), ahead_of)
        return TriggerEvent(event.to_dict())

    @staticmethod
    def _next_start_deadline(pending: dict[str, float | None]) -> float:
        starts = [start for start in pending.values() if start is not None]
        return min(starts) if starts else float("inf")

    async def _read(
        self, hook: FireRedHook, request_id: str
    ) -> JobStatusResult | EndedJob | FireRedApiError | None:
        """
        Read one request's status.

        Return a final refusal as its ended entry, a refused key as its error, and None while the
        status cannot be read.
        """
        try:
            return await hook.aget_status(request_id)
        except FireRedApiError as err:
            if err.status_code in KEY_REFUSED_STATUSES:
                return err
            if err.retryable:
                return None
            return EndedJob(EndedStatus.API_ERROR, error=str(err), http_status=err.status_code)
        except FireRedError as err:
            if err.retryable:
                return None
            return EndedJob(EndedStatus.API_ERROR, error=str(err))

    async def on_kill(self) -> None:
        """
        Log what a user's stop leaves behind.

        Airflow 3.3+ calls this on mark failed, mark success or clear of the deferred task. The
        gateway has no cancel endpoint: the jobs run on and are charged. Nothing is sent and nothing
        is deleted.
        """
        kept = "task_state_store keys 'firered_batch_ids:<n>'"
        kept += f" and the manifest {self.manifest}" if self.manifest else " and the batch's manifest"
        self.log.warning(stopped_by_user_text([rid for rid, _ in self.requests], kept, AFTER_CLEAR))
