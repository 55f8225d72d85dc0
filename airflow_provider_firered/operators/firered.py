"""Operator that submits a FireRed image edit and waits for it, deferred or on the worker."""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, conf

from airflow_provider_firered.exceptions import FireRedApiError, FireRedError, FireRedJobFailedError
from airflow_provider_firered.gateway.options import (
    DEFAULT_MODEL,
    EditRequest,
    expected_outputs,
    validate_edit,
)
from airflow_provider_firered.gateway.results import JobStatus, JobStatusResult, SubmitResult
from airflow_provider_firered.gateway.wait_policy import (
    WaitPolicy,
    poll_until_done,
    validate_resubmit_on_error,
    validate_timeout,
)
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.operators.firered_resume import (
    REQUEST_ID_STATE_KEY,
    REQUEST_ID_XCOM_KEY,
    Start,
    edit_fingerprint,
    previous_status,
    refuse_retry_that_would_resubmit,
    remember_request,
    resume,
)
from airflow_provider_firered.operators.links import FireRedOutputLink, web_link
from airflow_provider_firered.operators.reporting import announce, edit_lineage, edit_outcome
from airflow_provider_firered.triggers.events import EventStatus, StatusEvent
from airflow_provider_firered.triggers.firered import FireRedStatusTrigger
from airflow_provider_firered.triggers.polling import DEFER_SLACK
from airflow_provider_firered.utils import metrics
from airflow_provider_firered.utils.airflow_errors import AirflowErrorAdapter
from airflow_provider_firered.utils.saturation import (
    MIN_DEFERRAL_SECONDS,
    SATURATED,
    Saturation,
    saturated_error,
    saturation_delay,
    saturation_trigger,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

__all__ = [
    "REQUEST_ID_STATE_KEY",
    "REQUEST_ID_XCOM_KEY",
    "RESUBMISSIONS_XCOM_KEY",
    "SATURATION_XCOM_KEY",
    "FireRedEditOperator",
    "FireRedOutputLink",
]

#: XCom key counting the resubmissions of ERROR jobs within a try.
RESUBMISSIONS_XCOM_KEY = "resubmissions"
#: XCom key holding the saturation wait (its deadline, the 429s so far) of a deferred submit.
SATURATION_XCOM_KEY = "saturation"


class FireRedEditOperator(BaseOperator):
    """
    Submit an image edit to the FireRed gateway, wait for it, and optionally download the outputs.

    The edit is submitted on the worker, then waited for in the triggerer (``deferrable=True``, no
    worker slot held) or by polling on the worker. The request id is pushed to XCom (key
    ``request_id``) and, on Airflow 3.3+, kept in ``task_state_store``, so a retry after a crash, a
    timeout or a lost triggerer resumes the same job instead of paying for a new one. A user's clear
    submits a new edit, unless the stored job of the same edit is still running: it is collected.

    Returns ``{"request_id", "model_id", "status", "media_urls", "media_type", "output_paths"}``; each
    outlet asset's event carries the request id, output paths and counts (:mod:`.reporting`).

    :param prompt: the edit instruction. (templated)
    :param images: input image URLs, http or https. (templated)
    :param model: ``firered-image-edit-v1-1`` (default) or ``firered-image-edit``.
    :param parameters: the model's documented options by API name, e.g. ``{"num_images": 2}``. (templated)
    :param firered_conn_id: the FireRed connection.
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``.
    :param wait_for_completion: wait for the job; if False, return right after the submit.
    :param poll_interval: seconds between status reads, at least 1 (5-10 is recommended).
    :param timeout: seconds one try waits for the job; a retry resumes the same job with a fresh wait.
        A deferrable submit refused with ``429`` (the gateway is saturated) waits for the gateway
        in the triggerer, then submits again, for at most this many seconds from the try's start.
    :param start_timeout: seconds the job may stay ``QUEUED`` once the try starts waiting; past that the
        task fails for good with ``FireRedStartTimeoutError``, naming the request (None: no limit).
    :param max_poll_interval: let the interval grow (x1.5 per read) while the job is ``PROCESSING``, up
        to this many seconds; None (the default) keeps ``poll_interval``.
    :param output_dir: download every output here: a local folder or an object storage URL such as
        ``s3://bucket/edits/``. (templated)
    :param webhook_url: https URL the gateway calls back (``X-Webhook-URL``).
    :param webhook_mode: ``terminal`` or ``sync`` (``X-Webhook-Mode``).
    :param resubmit_on_error: how many times a job that ends ``ERROR`` (a failure on the gateway's
        side, not charged) is submitted again within one try; 0, the default, fails the task at once
        (Airflow's ``retries`` then apply). ``FAILED`` jobs (a problem with the input, charged) are
        never submitted again: they fail the task without retries, naming the request id and the
        gateway's error.
    """

    template_fields: Sequence[str] = ("prompt", "images", "parameters", "output_dir")
    template_fields_renderers = {"parameters": "json", "images": "json"}
    ui_color = "#ffe4d6"
    operator_extra_links = (FireRedOutputLink(),)

    def __init__(
        self,
        *,
        prompt: str,
        images: list[str],
        model: str = DEFAULT_MODEL,
        parameters: dict[str, Any] | None = None,
        firered_conn_id: str = FireRedHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        wait_for_completion: bool = True,
        poll_interval: float = 5.0,
        timeout: float = 3600.0,
        start_timeout: float | None = None,
        max_poll_interval: float | None = None,
        output_dir: str | None = None,
        webhook_url: str | None = None,
        webhook_mode: str | None = None,
        resubmit_on_error: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.images = images
        self.model = model
        self.parameters = parameters
        self.firered_conn_id = firered_conn_id
        self.deferrable = deferrable
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.max_poll_interval = max_poll_interval
        self.output_dir = output_dir
        self.webhook_url = webhook_url
        self.webhook_mode = webhook_mode
        self.resubmit_on_error = resubmit_on_error

    @cached_property
    def hook(self) -> FireRedHook:
        """Return the FireRed hook (created on first use, never in ``__init__``)."""
        return FireRedHook(self.firered_conn_id)

    @cached_property
    def policy(self) -> WaitPolicy:
        """Return how the wait paces its reads; built (and checked) from the arguments on first use."""
        return WaitPolicy(self.poll_interval, self.max_poll_interval, self.start_timeout)

    @cached_property
    def edit_request(self) -> EditRequest:
        """Return the rendered edit, validated once (on first use) and ready to send."""
        return validate_edit(
            self.model,
            self.prompt,
            self.images,
            self.parameters,
            webhook_url=self.webhook_url,
            webhook_mode=self.webhook_mode,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        """
        Submit the edit (or take up the one an earlier try submitted) and wait for it.

        :param context: the task's context.
        """
        # A deferrable submit refused with 429 waits for the gateway at most `timeout` from here.
        self._try_started = time.time()
        with AirflowErrorAdapter():
            # Validated after rendering and before any request: a bad task fails alone, without retries.
            _ = self.edit_request
            validate_timeout(self.timeout)
            validate_resubmit_on_error(self.resubmit_on_error)
            _ = self.policy  # checks poll_interval, max_poll_interval and start_timeout
            return self._go(context, self._resume_or_submit(context))

    def execute_after_saturation(
        self,
        context: Context,
        event: Any = None,  # noqa: ARG002 - the timer's event says only that it fired
        saturation_deadline: Any = None,
        refusals: Any = 0,
    ) -> dict[str, Any]:
        """
        Resume after waiting out a saturated gateway in the triggerer: submit the edit again, go on.

        :param context: the task's context.
        :param event: the timer trigger's event.
        :param saturation_deadline: epoch seconds past which another ``429`` fails the try.
        :param refusals: the ``429`` answers the submit got so far.
        """
        with AirflowErrorAdapter():
            if saturation_deadline is None:
                # dag.test() hands the method the event alone, not the deferral's kwargs (Airflow
                # merges them): the same values, kept in XCom for the try, stand in.
                ti = context["ti"]
                kept = ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index, key=SATURATION_XCOM_KEY)
                if isinstance(kept, dict):
                    saturation_deadline, refusals = kept.get("deadline"), kept.get("refusals")
            saturation = Saturation.from_kwargs(saturation_deadline, refusals, time.time())
            return self._go(context, self._started(self._submit(context, saturation)))

    def _go(self, context: Context, start: Start) -> dict[str, Any]:
        """Return the result as of the submit, or wait for the job and collect it."""
        if not start.wait:  # the result as of the submit: QUEUED, nothing to collect yet
            queued = JobStatus.QUEUED
            status = JobStatusResult(start.status.request_id, queued, queued.value, self.model)
            return self._done(context, status.to_dict())
        return self._wait(context, start.status)

    # -- 1. submit, or resume the request an earlier try submitted --------------------------------

    def _resume_or_submit(self, context: Context) -> Start:
        """Resume the request an earlier try of this task submitted, if it can be; else submit."""
        previous = previous_status(context, self.hook, self._edit_fingerprint(), self.log)
        if previous is not None:
            if previous.status is JobStatus.FAILED:
                # Charged and final (an earlier try stopped before it saw the outcome): posting the
                # same input again would pay again, so this try fails for good too.
                raise FireRedJobFailedError(previous.request_id, "FAILED", previous.error)
            if previous.status is not JobStatus.ERROR:
                return resume(context, previous, wait=self.wait_for_completion, log=self.log)
            self.log.info(
                "Previous request %s ended %s: submitting a fresh edit",
                previous.request_id,
                previous.raw_status,
            )
        return self._started(self._submit(context))

    def _started(self, submitted: SubmitResult) -> Start:
        """Return where the try goes on from an accepted submit."""
        if not self.wait_for_completion:
            return Start(submitted.as_status(), wait=False)
        return Start(self._first_status(submitted), wait=True)

    def _edit_fingerprint(self) -> str:
        """Return a digest of the rendered edit: a stored request is resumed only for the same edit."""
        return edit_fingerprint(
            [self.model, self.prompt, self.images, self.parameters, self.webhook_url, self.webhook_mode]
        )

    def _submit(self, context: Context, saturation: Saturation | None = None) -> SubmitResult:
        """
        Post the edit; keep its request id for later tries (see :func:`remember_request`).

        :param context: the task's context.
        :param saturation: the ``429`` answers met so far, when this submit comes after a deferral.
        """
        submitted = self._post(context, saturation)
        remember_request(context, submitted.request_id, self._edit_fingerprint())
        return submitted

    def _post(self, context: Context, saturation: Saturation | None) -> SubmitResult:
        """
        Send the edit; deferrable, wait out a saturated gateway in the triggerer.

        On the worker path the hook waits out a ``429`` itself (its retry policy). Deferrable, a
        ``429`` defers the task on a timer instead (no worker slot held while the gateway is
        saturated) and :meth:`execute_after_saturation` sends it again: a ``429`` created no job, so
        nothing is paid twice.
        """
        if not self.deferrable:
            return self.hook.submit_request(self.edit_request, retry=True)
        try:
            return self.hook.submit_request(self.edit_request, retry=False)
        except FireRedApiError as err:
            if err.status_code != SATURATED:
                raise
            self._defer_until_unsaturated(context, err, saturation)
        except FireRedError as err:
            if not err.retryable:
                raise
            # A connection that never opened sent nothing: the hook's own retries deal with it.
            return self.hook.submit_request(self.edit_request, retry=True)
        raise AssertionError("unreachable: deferring raises")  # pragma: no cover

    def _defer_until_unsaturated(
        self, context: Context, err: FireRedApiError, saturation: Saturation | None
    ) -> None:
        """
        Defer on a timer until the gateway's ``Retry-After``, within the try's deadline.

        The wait is capped, with jitter, and at least
        :data:`~airflow_provider_firered.utils.saturation.MIN_DEFERRAL_SECONDS`.
        """
        now = time.time()
        if saturation is None:
            saturation = Saturation(getattr(self, "_try_started", now) + self.timeout)
        saturation = saturation.refused_again()
        remaining = saturation.deadline - now
        if remaining <= 0:
            raise saturated_error(err, saturation.refusals, self.timeout)
        delay = saturation_delay(err, self.hook.settings.retry.max_retry_after)
        delay = min(max(delay, MIN_DEFERRAL_SECONDS), remaining)
        self.log.warning(
            "The gateway is saturated (HTTP 429 to submit #%d, Retry-After %s): no job was created. "
            "Deferring %.1f s without holding a worker slot, then submitting again (until %.0f s "
            "from now)",
            saturation.refusals,
            "not given" if err.retry_after is None else f"{err.retry_after:g} s",
            delay,
            remaining,
        )
        context["ti"].xcom_push(key=SATURATION_XCOM_KEY, value=saturation.to_dict())
        self.defer(
            trigger=saturation_trigger(delay),
            method_name="execute_after_saturation",
            kwargs={"saturation_deadline": saturation.deadline, "refusals": saturation.refusals},
            timeout=timedelta(seconds=delay + DEFER_SLACK),
        )

    def _first_status(self, submitted: SubmitResult) -> JobStatusResult:
        """
        Return the status to start waiting from: the submit answer's own (``QUEUED``).

        That saves a status read per edit (a trigger polls as soon as it starts). An unexpected
        terminal answer is read back.
        """
        if submitted.status.is_terminal:
            return self.hook.get_status(submitted.request_id)
        return submitted.as_status()

    # -- 2. wait, in the triggerer or here; resubmit an ERROR job while allowed ---------------------

    def _wait(self, context: Context, status: JobStatusResult) -> dict[str, Any]:
        """Wait for the job (deferred or here) and collect it; resubmit an ERROR job while allowed."""
        while True:
            metrics.job_ended(status.status.value, model=self.model, seconds=status.duration)  # a final one
            if status.status is JobStatus.ERROR and (left := self._resubmissions_left(context)):
                status = self._resubmit(context, status.request_id, status.error, left)
                continue
            if status.status.is_terminal:
                return self._collect(context, StatusEvent.ended(status).job_result())
            now = time.time()
            deadline, start_deadline = now + self.timeout, self.policy.start_deadline(now)
            if self.deferrable:
                self.defer(
                    trigger=FireRedStatusTrigger(
                        request_id=status.request_id,
                        firered_conn_id=self.firered_conn_id,
                        poll_interval=self.poll_interval,
                        deadline=deadline,
                        timeout=self.timeout,
                        max_poll_interval=self.max_poll_interval,
                        start_deadline=start_deadline,
                        start_timeout=self.start_timeout,
                    ),
                    method_name="execute_complete",
                    timeout=timedelta(seconds=self.timeout + DEFER_SLACK),
                )
            status = poll_until_done(
                self.hook.get_status,
                status,
                self.policy,
                deadline=deadline,
                start_deadline=start_deadline,
                timeout=self.timeout,
            )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """
        Resume after the trigger fired: collect the outputs or fail with the request id.

        :param context: the task's context.
        :param event: the trigger's :class:`~airflow_provider_firered.triggers.events.StatusEvent`.
        """
        with AirflowErrorAdapter():
            ended = StatusEvent.from_dict(event)
            metrics.job_ended(ended.status.value, model=self.model, seconds=ended.duration)
            if ended.status is EventStatus.ERROR and (left := self._resubmissions_left(context)):
                return self._wait(context, self._resubmit(context, ended.request_id, ended.message, left))
            refuse_retry_that_would_resubmit(context, ended)
            return self._collect(context, ended.job_result())

    def _resubmissions_left(self, context: Context) -> int:
        """Return how many more times an ERROR job may be resubmitted in this try."""
        if not self.resubmit_on_error:
            return 0
        # Counted in XCom, which lasts for the try and across its deferrals.
        ti = context["ti"]
        done = ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index, key=RESUBMISSIONS_XCOM_KEY)
        return max(self.resubmit_on_error - int(done or 0), 0)

    def _resubmit(self, context: Context, request_id: str, error: str | None, left: int) -> JobStatusResult:
        """Submit the edit again after its job ended ``ERROR`` (not charged); count it for the try."""
        self.log.warning(
            "Request %s ended ERROR (%s), which the gateway does not charge: submitting the edit again "
            "(%d of %d resubmissions left)",
            request_id,
            error or "no reason given",
            left - 1,
            self.resubmit_on_error,
        )
        context["ti"].xcom_push(key=RESUBMISSIONS_XCOM_KEY, value=self.resubmit_on_error - left + 1)
        return self._first_status(self._submit(context))

    # -- 3. collect ---------------------------------------------------------------------------------

    def _collect(self, context: Context, result: dict[str, Any]) -> dict[str, Any]:
        """Download the outputs (when asked), show the first as the extra link, return the result."""
        result["output_paths"] = self.hook.download_outputs(
            result, self.output_dir, max_outputs=expected_outputs(self.model, self.parameters)
        )
        if result["media_urls"] and (link := web_link(result["media_urls"][0])):
            context["ti"].xcom_push(key=FireRedOutputLink().xcom_key, value=link)
        self.log.info(
            "FireRed job %s COMPLETED with %d output(s)%s",
            result["request_id"],
            len(result["media_urls"]),
            f", saved to {self.output_dir}" if result["output_paths"] else "",
        )
        return self._done(context, result)

    def _done(self, context: Context, result: dict[str, Any]) -> dict[str, Any]:
        """Give the outlet assets' events the edit's figures, keep them for lineage; return the result."""
        paid = 1 + self.resubmit_on_error - self._resubmissions_left(context)
        announce(self, context, edit_outcome(result, self.images, paid, self.model))
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """
        Return the edit's OpenLineage datasets (source images in, files written out) and run facet.

        :param task_instance: the finished task instance.
        """
        return edit_lineage(self, task_instance)
