"""Operator that submits a FireRed image edit and waits for it, deferred or on the worker."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import BaseOperator, BaseOperatorLink, XCom, conf

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedError,
    FireRedJobFailedError,
    FireRedStartTimeoutError,
    FireRedTimeoutError,
    FireRedValidationError,
    airflow_errors,
)
from airflow_provider_firered.gateway.options import DEFAULT_MODEL, expected_outputs, validate_edit
from airflow_provider_firered.gateway.results import JobStatus, JobStatusResult, SubmitResult
from airflow_provider_firered.gateway.wait_policy import WaitPolicy, not_started_in_time, validate_timeout
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.media.downloads import download_outputs
from airflow_provider_firered.triggers.events import EventStatus, StatusEvent
from airflow_provider_firered.triggers.firered import FireRedStatusTrigger
from airflow_provider_firered.triggers.polling import DEFER_SLACK
from airflow_provider_firered.utils.saturation import (
    MIN_DEFERRAL_SECONDS,
    saturation_delay,
    saturation_trigger,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.providers.common.compat.sdk import TaskInstanceKey
    from airflow.sdk import Context

#: XCom key holding the request id, pushed right after the gateway accepts a job.
REQUEST_ID_XCOM_KEY = "request_id"
#: task_state_store key holding the request id across tries (Airflow 3.3+).
REQUEST_ID_STATE_KEY = "firered_request_id"
#: XCom key counting the resubmissions of ERROR jobs within a try.
RESUBMISSIONS_XCOM_KEY = "resubmissions"
#: The most resubmissions of an ERROR job ``resubmit_on_error`` may ask for.
MAX_RESUBMITS = 10
#: XCom key holding the saturation wait (its deadline, the 429s so far) of a deferred submit.
SATURATION_XCOM_KEY = "saturation"
#: HTTP status of a gateway that is saturated (too many jobs at once): it created no job.
SATURATED = 429


def validate_wait(timeout: Any, resubmit_on_error: Any) -> None:
    """Check the waiting arguments the wait policy does not cover, naming the field."""
    validate_timeout(timeout)
    if (
        isinstance(resubmit_on_error, bool)
        or not isinstance(resubmit_on_error, int)
        or not 0 <= resubmit_on_error <= MAX_RESUBMITS
    ):
        raise FireRedValidationError(
            "resubmit_on_error",
            f"must be a whole number from 0 to {MAX_RESUBMITS}, got {resubmit_on_error!r}",
        )


def web_link(url: Any) -> str:
    """
    ``url`` if it is a plain http(s) URL with a host, else ``""``.

    The URL comes from the gateway's answer and the UI turns it into a link: a ``javascript:``,
    ``data:`` or ``file:`` URL must not become one.
    """
    if not isinstance(url, str) or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return ""
    parts = urlsplit(url)
    return url if parts.scheme.lower() in ("http", "https") and parts.hostname else ""


class FireRedOutputLink(BaseOperatorLink):
    """Extra link to the first output image of the edit (http and https URLs only)."""

    name = "FireRed output"

    # BaseOperatorLink's signature: the link needs only the task instance's key.
    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:  # noqa: ARG002
        return web_link(XCom.get_value(key=self.xcom_key, ti_key=ti_key))


@dataclass(frozen=True)
class Saturation:
    """
    How long a deferrable submit may keep meeting a saturated gateway (``429``), and how often it did.

    :param deadline: epoch seconds past which a ``429`` fails the try instead of deferring again.
    :param refusals: the ``429`` answers this submit got so far.
    """

    deadline: float
    refusals: int = 0


@dataclass(frozen=True)
class Start:
    """
    Where a try starts: the job's latest known status, and whether the try waits for it.

    :param status: the job's status (a fresh submit's own answer, or a resumed job's last read).
    :param wait: False when the try returns right after the submit (``wait_for_completion=False``).
    """

    status: JobStatusResult
    wait: bool


class FireRedEditOperator(BaseOperator):
    """
    Submit an image edit to the FireRed gateway, wait for it, and optionally download the outputs.

    The edit is submitted on the worker, then waited for in the triggerer (``deferrable=True``, no
    worker slot held) or by polling on the worker. The request id is pushed to XCom (key
    ``request_id``) and, on Airflow 3.3+, kept in ``task_state_store``, so a retry after a crash, a
    timeout or a lost triggerer resumes the same job instead of paying for a new one. A user's clear
    submits a new edit, unless the stored job of the same edit is still running: it is collected.

    Returns ``{"request_id", "model_id", "status", "media_urls", "media_type", "output_paths"}``.

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
        """The FireRed hook (created on first use, never in ``__init__``)."""
        return FireRedHook(self.firered_conn_id)

    @cached_property
    def policy(self) -> WaitPolicy:
        """How the wait paces its reads; built (and checked) from the arguments on first use."""
        return WaitPolicy(self.poll_interval, self.max_poll_interval, self.start_timeout)

    def execute(self, context: Context) -> dict[str, Any]:
        # A deferrable submit refused with 429 waits for the gateway at most `timeout` from here.
        self._try_started = time.time()
        with airflow_errors():
            # Validated after rendering and before any request: a bad task fails alone, without retries.
            validate_edit(
                self.model,
                self.prompt,
                self.images,
                self.parameters,
                webhook_url=self.webhook_url,
                webhook_mode=self.webhook_mode,
            )
            validate_wait(self.timeout, self.resubmit_on_error)
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
        with airflow_errors():
            if saturation_deadline is None:
                # dag.test() hands the method the event alone, not the deferral's kwargs (Airflow
                # merges them): the same values, kept in XCom for the try, stand in.
                ti = context["ti"]
                kept = ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index, key=SATURATION_XCOM_KEY)
                if isinstance(kept, dict):
                    saturation_deadline, refusals = kept.get("deadline"), kept.get("refusals")
            saturation = Saturation(_number(saturation_deadline, time.time()), int(_number(refusals, 1)))
            return self._go(context, self._started(self._submit(context, saturation)))

    def _go(self, context: Context, start: Start) -> dict[str, Any]:
        """Return the result as of the submit, or wait for the job and collect it."""
        if not start.wait:  # the result as of the submit: QUEUED, nothing to collect yet
            queued = JobStatus.QUEUED
            return JobStatusResult(start.status.request_id, queued, queued.value, self.model).to_dict()
        return self._wait(context, start.status)

    # -- 1. submit, or resume the request an earlier try submitted --------------------------------

    def _resume_or_submit(self, context: Context) -> Start:
        """Resume the request an earlier try of this task submitted, if it can be; else submit."""
        previous = self._previous_status(context)
        if previous is not None:
            if previous.status is JobStatus.FAILED:
                # Charged and final (an earlier try stopped before it saw the outcome): posting the
                # same input again would pay again, so this try fails for good too.
                raise FireRedJobFailedError(previous.request_id, "FAILED", previous.error)
            if previous.status is not JobStatus.ERROR:
                return self._resume(context, previous)
            self.log.info(
                "Previous request %s ended %s: submitting a fresh edit",
                previous.request_id,
                previous.raw_status,
            )
        return self._started(self._submit(context))

    def _started(self, submitted: SubmitResult) -> Start:
        """Where the try goes on from an accepted submit."""
        if not self.wait_for_completion:
            return Start(_answered(submitted), wait=False)
        return Start(self._first_status(submitted), wait=True)

    def _resume(self, context: Context, previous: JobStatusResult) -> Start:
        """Take up a request that is COMPLETED (collected, waiting or not) or still running."""
        context["ti"].xcom_push(key=REQUEST_ID_XCOM_KEY, value=previous.request_id)
        if previous.status is JobStatus.COMPLETED:
            self.log.info(
                "Request %s already COMPLETED: collecting it without posting again", previous.request_id
            )
            return Start(previous, wait=True)
        self.log.info(
            "Resuming request %s (%s) instead of posting again", previous.request_id, previous.raw_status
        )
        return Start(previous, wait=self.wait_for_completion)

    def _previous_status(self, context: Context) -> JobStatusResult | None:
        """The status of the request an earlier try submitted, unless there is none to resume."""
        store = context.get("task_state_store")  # type: ignore[call-overload,unused-ignore]  # 3.3+ key
        if store is None:
            self.log.info(
                "This Airflow has no task_state_store (3.3+): crash recovery is off, "
                "a retry submits a new edit"
            )
            return None
        stored = store.get(REQUEST_ID_STATE_KEY)
        if not isinstance(stored, dict) or not stored.get("request_id"):
            return None
        request_id = str(stored["request_id"])
        if stored.get("max_tries") == context["ti"].max_tries:
            return self._stored_status(request_id)
        return self._still_running_after_clear(request_id, stored.get("edit"))

    def _still_running_after_clear(self, request_id: str, edit: Any) -> JobStatusResult | None:
        """
        After a user's clear, the stored request only if it is this same edit and still running.

        A clear asks for a new edit, but a job of the same edit still ``QUEUED``/``PROCESSING`` was
        never collected (its task was stopped by the user while deferred, or crashed): it is paid
        for and still running, so it is collected instead of paying again. A finished one is not
        reused: the clear submits afresh, as asked.
        """
        if edit != self._edit_fingerprint():
            self.log.info(
                "The task was cleared after request %s was submitted: submitting a fresh edit, as asked",
                request_id,
            )
            return None
        status = self._stored_status(request_id)
        if status is None or status.status.is_terminal:
            self.log.info(
                "The task was cleared after request %s ended: submitting a fresh edit, as asked", request_id
            )
            return None
        self.log.info(
            "The task was cleared while request %s (this same edit) was still %s: collecting it "
            "instead of paying for it again",
            request_id,
            status.raw_status,
        )
        return status

    def _edit_fingerprint(self) -> str:
        """A digest of what is submitted (rendered): a stored request is resumed only for the same edit."""
        edit = [self.model, self.prompt, self.images, self.parameters, self.webhook_url, self.webhook_mode]
        text = json.dumps(edit, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def _stored_status(self, request_id: str) -> JobStatusResult | None:
        try:
            return self.hook.get_status(request_id)
        except FireRedApiError as err:
            if err.status_code == 404:  # forgotten by the gateway: nothing left to resume
                self.log.info(
                    "Stored request %s is unknown to the gateway: submitting a fresh edit", request_id
                )
                return None
            raise

    def _submit(self, context: Context, saturation: Saturation | None = None) -> SubmitResult:
        """
        Post the edit; record its request id (XCom, and task_state_store where Airflow has it).

        :param context: the task's context.
        :param saturation: the ``429`` answers met so far, when this submit comes after a deferral.
        """
        submitted = self._post(context, saturation)
        ti = context["ti"]
        store = context.get("task_state_store")  # type: ignore[call-overload,unused-ignore]  # 3.3+ key
        if store is not None:
            # Stored first, the job is paid for: if anything after this fails (the XCom push
            # included), a retry still finds the request and resumes it instead of posting again.
            # max_tries changes only when the task is cleared: it tells a retry from a user's clear.
            # The digest lets a clear collect this job if it is stopped before it ends.
            store.set(
                REQUEST_ID_STATE_KEY,
                {
                    "request_id": submitted.request_id,
                    "max_tries": ti.max_tries,
                    "edit": self._edit_fingerprint(),
                },
            )
        ti.xcom_push(key=REQUEST_ID_XCOM_KEY, value=submitted.request_id)
        return submitted

    def _post(self, context: Context, saturation: Saturation | None) -> SubmitResult:
        """
        Send the edit. On the worker path the hook waits out a ``429`` itself (its retry policy).
        Deferrable, a ``429`` defers the task on a timer instead (no worker slot held while the
        gateway is saturated) and :meth:`execute_after_saturation` sends it again: a ``429`` created
        no job, so nothing is paid twice.
        """
        if not self.deferrable:
            return self._send(retry=True)
        try:
            return self._send(retry=False)
        except FireRedApiError as err:
            if err.status_code != SATURATED:
                raise
            self._defer_until_unsaturated(context, err, saturation)
        except FireRedError as err:
            if not err.retryable:
                raise
            # A connection that never opened sent nothing: the hook's own retries deal with it.
            return self._send(retry=True)
        raise AssertionError("unreachable: deferring raises")  # pragma: no cover

    def _send(self, *, retry: bool) -> SubmitResult:
        return self.hook.submit_edit(
            self.model,
            self.prompt,
            self.images,
            self.parameters,
            webhook_url=self.webhook_url,
            webhook_mode=self.webhook_mode,
            retry=retry,
        )

    def _defer_until_unsaturated(
        self, context: Context, err: FireRedApiError, saturation: Saturation | None
    ) -> None:
        """
        Defer on a timer until the gateway's ``Retry-After`` (capped, with jitter; at least
        :data:`~airflow_provider_firered.utils.saturation.MIN_DEFERRAL_SECONDS`), within the deadline.
        """
        now = time.time()
        if saturation is None:
            saturation = Saturation(getattr(self, "_try_started", now) + self.timeout)
        refusals = saturation.refusals + 1
        remaining = saturation.deadline - now
        if remaining <= 0:
            raise self._saturated_error(err, refusals)
        delay = saturation_delay(err, self.hook.settings.retry.max_retry_after)
        delay = min(max(delay, MIN_DEFERRAL_SECONDS), remaining)
        self.log.warning(
            "The gateway is saturated (HTTP 429 to submit #%d, Retry-After %s): no job was created. "
            "Deferring %.1f s without holding a worker slot, then submitting again (until %.0f s "
            "from now)",
            refusals,
            "not given" if err.retry_after is None else f"{err.retry_after:g} s",
            delay,
            remaining,
        )
        kept = {"deadline": saturation.deadline, "refusals": refusals}
        context["ti"].xcom_push(key=SATURATION_XCOM_KEY, value=kept)
        self.defer(
            trigger=saturation_trigger(delay),
            method_name="execute_after_saturation",
            kwargs={"saturation_deadline": saturation.deadline, "refusals": refusals},
            timeout=timedelta(seconds=delay + DEFER_SLACK),
        )

    def _saturated_error(self, err: FireRedApiError, refusals: int) -> FireRedApiError:
        """The retryable error of a submit the gateway refused with ``429`` until the deadline."""
        error = FireRedApiError(SATURATED, err.error, err.message, retry_after=err.retry_after)
        error.args = (
            f"The FireRed gateway answered HTTP 429 (saturated: too many jobs at once) to all {refusals} "
            f"submits of this edit within its timeout of {self.timeout:g} s; no job was created and "
            "nothing was paid. A retry of the task submits it again",
        )
        return error

    def _first_status(self, submitted: SubmitResult) -> JobStatusResult:
        """
        The status to start waiting from: the submit answer's own (``QUEUED``), which saves a status
        read per edit (a trigger polls as soon as it starts). An unexpected terminal answer is read back.
        """
        if submitted.status.is_terminal:
            return self.hook.get_status(submitted.request_id)
        return _answered(submitted)

    # -- 2. wait, in the triggerer or here; resubmit an ERROR job while allowed ---------------------

    def _wait(self, context: Context, status: JobStatusResult) -> dict[str, Any]:
        """Wait for the job (deferred or here) and collect it; resubmit an ERROR job while allowed."""
        while True:
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
            status = self._poll(status, deadline, start_deadline)

    def _poll(
        self, status: JobStatusResult, deadline: float, start_deadline: float | None
    ) -> JobStatusResult:
        """
        Read the status on the worker until the job ends, or it is still ``QUEUED`` at
        ``start_deadline``, or ``deadline`` passes (epoch seconds): the trigger's policy, on the worker.
        """
        interval = self.policy.poll_interval
        while not status.status.is_terminal:
            now = time.time()
            if not_started_in_time(status.status, start_deadline, now):
                raise FireRedStartTimeoutError(status.request_id, self.start_timeout or 0.0)
            remaining = deadline - now
            if remaining <= 0:
                raise FireRedTimeoutError(status.request_id, self.timeout, status.raw_status)
            if status.status is JobStatus.QUEUED and start_deadline is not None:
                remaining = min(remaining, max(start_deadline - now, 0.0))  # read again right then
            time.sleep(min(interval, remaining))
            status = self.hook.get_status(status.request_id)
            interval = self.policy.next_interval(interval, status.status)
        return status

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger fired: collect the outputs or fail with the request id."""
        with airflow_errors():
            ended = StatusEvent.from_dict(event)
            if ended.status is EventStatus.ERROR and (left := self._resubmissions_left(context)):
                return self._wait(context, self._resubmit(context, ended.request_id, ended.message, left))
            self._refuse_retry_that_would_resubmit(context, ended)
            return self._collect(context, ended.job_result())

    def _refuse_retry_that_would_resubmit(self, context: Context, ended: StatusEvent) -> None:
        """
        A retryable trigger failure (a key refused even after a fresh look-up) relies on the retry
        resuming the request from ``task_state_store``. Without it (Airflow before 3.3) a retry would
        post the edit again and pay twice: fail for good instead, naming the request to collect.
        """
        if ended.status is not EventStatus.API_ERROR or not ended.retryable:
            return
        if context.get("task_state_store") is not None:  # type: ignore[call-overload,unused-ignore]  # 3.3+
            return
        raise FireRedApiError.reported(
            f"{ended.message} (request_id={ended.request_id}). This Airflow has no "
            "task_state_store, so a retry would submit the edit again: not retried. Collect the "
            f"request with FireRedStatusSensor(request_id={ended.request_id!r}) once the key is fixed",
            status_code=ended.http_status,
            request_id=ended.request_id,
            retryable=False,
        )

    def _resubmissions_left(self, context: Context) -> int:
        """How many more times an ERROR job may be resubmitted in this try."""
        if not self.resubmit_on_error:
            return 0
        # Counted in XCom, which lasts for the try and across its deferrals.
        ti = context["ti"]
        done = ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index, key=RESUBMISSIONS_XCOM_KEY)
        return max(self.resubmit_on_error - int(done or 0), 0)

    def _resubmit(self, context: Context, request_id: str, error: str | None, left: int) -> JobStatusResult:
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
        result["output_paths"] = download_outputs(
            self.hook,
            result,
            self.output_dir,
            max_outputs=expected_outputs(self.model, self.parameters),
        )
        if result["media_urls"] and (link := web_link(result["media_urls"][0])):
            context["ti"].xcom_push(key=FireRedOutputLink().xcom_key, value=link)
        self.log.info(
            "FireRed job %s COMPLETED with %d output(s)%s",
            result["request_id"],
            len(result["media_urls"]),
            f", saved to {self.output_dir}" if result["output_paths"] else "",
        )
        return result


def _number(value: Any, default: float) -> float:
    """A finite number from a deferral's kwargs, else ``default``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def _answered(submitted: SubmitResult) -> JobStatusResult:
    """The status a submit answer states, as a status read (no request made)."""
    return JobStatusResult(submitted.request_id, submitted.status, submitted.status.value)
