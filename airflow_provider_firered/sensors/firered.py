"""Sensor that waits for a FireRed job submitted elsewhere, by its request id."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowSkipException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_provider_firered.exceptions import FireRedError, FireRedStartTimeoutError, FireRedValidationError
from airflow_provider_firered.gateway.results import JobStatusResult, status_path
from airflow_provider_firered.gateway.wait_policy import WaitPolicy, not_started_in_time
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.triggers.events import StatusEvent
from airflow_provider_firered.triggers.firered import FireRedStatusTrigger
from airflow_provider_firered.triggers.polling import DEFER_SLACK
from airflow_provider_firered.utils.airflow_errors import AirflowErrorAdapter, as_final, for_airflow

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context


class FireRedStatusSensor(BaseSensorOperator):
    """
    Wait for a FireRed job to finish and return the same result dict as ``FireRedEditOperator``.

    ``COMPLETED`` succeeds; ``FAILED`` (charged, final) fails the task without retries, naming the
    request id and the gateway's error; ``ERROR`` fails it too (skip either with ``soft_fail``).
    Works in ``poke`` and ``reschedule`` modes and, with ``deferrable=True``, waits in the triggerer.
    ``poke_interval`` must be at least 1 second (5-10 is recommended).

    :param request_id: the job, e.g. ``"{{ ti.xcom_pull('submit', key='request_id') }}"``. (templated)
    :param firered_conn_id: the FireRed connection.
    :param output_dir: download every output here (local folder or object storage URL). (templated)
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param start_timeout: seconds the job may stay ``QUEUED`` once the sensor starts waiting (in
        ``reschedule`` mode, from its first poke); past that the task fails for good with
        ``FireRedStartTimeoutError`` (None: no limit).
    :param max_poll_interval: with ``deferrable=True``, let the interval grow (x1.5 per read) while the
        job is ``PROCESSING``, up to this many seconds. In ``poke`` and ``reschedule`` modes use
        Airflow's own ``exponential_backoff`` and ``max_wait`` instead.
    """

    template_fields: Sequence[str] = ("request_id", "output_dir")
    ui_color = "#ffe4d6"

    def __init__(
        self,
        *,
        request_id: str,
        firered_conn_id: str = FireRedHook.default_conn_name,
        output_dir: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        start_timeout: float | None = None,
        max_poll_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.request_id = request_id
        self.firered_conn_id = firered_conn_id
        self.output_dir = output_dir
        self.deferrable = deferrable
        self.start_timeout = start_timeout
        self.max_poll_interval = max_poll_interval
        #: The start deadline of a poke or reschedule wait, in epoch seconds (set by ``execute``).
        self._start_deadline: float | None = None

    @cached_property
    def hook(self) -> FireRedHook:
        """Return the FireRed hook (created on first use)."""
        return FireRedHook(self.firered_conn_id)

    @cached_property
    def policy(self) -> WaitPolicy:
        """Return how the wait paces its reads; built (and checked) from the arguments on first use."""
        return WaitPolicy(self.poke_interval, self.max_poll_interval, self.start_timeout, "poke_interval")

    def _check_arguments(self) -> None:
        with AirflowErrorAdapter():
            status_path(self.request_id)
            if self.max_poll_interval is not None and not self.deferrable:
                raise FireRedValidationError(
                    "max_poll_interval",
                    "applies to deferrable=True only; in poke and reschedule modes use Airflow's "
                    "exponential_backoff=True with max_wait",
                )
            _ = self.policy  # checks poke_interval, max_poll_interval and start_timeout

    def execute(self, context: Context) -> Any:
        """
        Wait for the job: poke or reschedule as Airflow's sensors do, or in the triggerer (deferrable).

        :param context: the task's context.
        """
        self._check_arguments()
        now = time.time()
        if not self.deferrable:
            # A reschedule wait spans several tries of execute: its start deadline counts from the
            # first, as Airflow's own sensor timeout does.
            if self.reschedule and (first := context["ti"].get_first_reschedule_date(context)):
                now = _epoch(first)
            self._start_deadline = self.policy.start_deadline(now)
            return super().execute(context)
        with AirflowErrorAdapter():
            status = self.hook.get_status(self.request_id)
        if status.status.is_terminal:
            return self._done(status)
        self.defer(
            trigger=FireRedStatusTrigger(
                request_id=self.request_id,
                firered_conn_id=self.firered_conn_id,
                poll_interval=self.poke_interval,
                deadline=now + self.timeout,
                timeout=self.timeout,
                max_poll_interval=self.max_poll_interval,
                start_deadline=self.policy.start_deadline(now),
                start_timeout=self.start_timeout,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + DEFER_SLACK),
        )

    # Airflow's signature: a poke needs only the request id, not the context.
    def poke(self, context: Context) -> PokeReturnValue | bool:  # noqa: ARG002
        """
        Read the job's status once: done with its result once it ended, else not yet.

        :param context: the task's context.
        """
        with AirflowErrorAdapter():
            status = self.hook.get_status(self.request_id)
            if not_started_in_time(status.status, self._start_deadline, time.time()):
                raise FireRedStartTimeoutError(self.request_id, self.start_timeout or 0.0)
        if status.status.is_terminal:
            return PokeReturnValue(is_done=True, xcom_value=self._done(status))
        self.log.info("FireRed job %s is %s", self.request_id, status.raw_status)
        return False

    # Airflow resumes with context= and event=: the event alone carries the outcome.
    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:  # noqa: ARG002
        """
        Resume after the trigger fired (soft_fail turns failures into a skip).

        :param context: the task's context.
        :param event: the trigger's :class:`~airflow_provider_firered.triggers.events.StatusEvent`.
        """
        try:
            result = StatusEvent.from_dict(event).job_result()
        except FireRedError as err:
            raise self._failure(err) from None
        return self._collect(result)

    def _done(self, status: JobStatusResult) -> dict[str, Any]:
        try:
            result = StatusEvent.ended(status).job_result()
        except FireRedError as err:
            # FAILED/ERROR are final for this request id: reading it again cannot change them.
            raise self._failure(as_final(err)) from None
        return self._collect(result)

    def _failure(self, err: FireRedError) -> Exception:
        """Return ``err`` as the task raises it; ``soft_fail`` turns it into a skip."""
        # Airflow 3.3 applies soft_fail to deferred sensors itself; 3.0-3.2 do not.
        if self.soft_fail:
            return AirflowSkipException(f"Skipping due to soft_fail: {err}")
        return for_airflow(err)

    def _collect(self, result: dict[str, Any]) -> dict[str, Any]:
        with AirflowErrorAdapter():
            result["output_paths"] = self.hook.download_outputs(result, self.output_dir)
        return result


def _epoch(when: datetime | str) -> float:
    """Return a date from Airflow as epoch seconds (Airflow 3.0 gives the first reschedule date as text)."""
    return (datetime.fromisoformat(when) if isinstance(when, str) else when).timestamp()
