"""
Keep the single edit's request id for its task's later tries, and find the request a try takes up.

A submitted request id goes to ``task_state_store`` (Airflow 3.3+) before anything else can fail,
then to XCom. A retry resumes it instead of paying again. A user's clear (a new ``max_tries``)
submits afresh, unless the stored job of the same edit is still running: that one is collected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_firered.exceptions import FireRedApiError
from airflow_provider_firered.gateway.results import JobStatus, JobStatusResult
from airflow_provider_firered.triggers.events import EventStatus
from airflow_provider_firered.version_compat import task_state_store

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from airflow_provider_firered.hooks.firered import FireRedHook
    from airflow_provider_firered.triggers.events import StatusEvent


class TaskLog(Protocol):
    """The part of the task's logger used here (a ``logging.Logger`` or Airflow's own)."""

    def info(self, msg: str, /, *args: Any) -> Any:
        """Log ``msg % args`` at INFO."""


#: XCom key holding the request id, pushed right after the gateway accepts a job.
REQUEST_ID_XCOM_KEY = "request_id"
#: task_state_store key holding the request id across tries (Airflow 3.3+).
REQUEST_ID_STATE_KEY = "firered_request_id"


def edit_fingerprint(edit: Sequence[Any]) -> str:
    """
    Return a digest of what is submitted: a stored request is resumed only for the same edit.

    :param edit: the rendered model, prompt, images, parameters, webhook URL and webhook mode.
    """
    text = json.dumps(list(edit), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class StoredRequest:
    """
    The request id a try keeps in ``task_state_store`` for the later tries of its task.

    :param request_id: the gateway's request id.
    :param max_tries: the task instance's ``max_tries`` when it was stored: only a clear changes it,
        so it tells a retry from a user's clear.
    :param edit: the :func:`edit_fingerprint` of the edit submitted (None when stored without one).
    """

    request_id: str
    max_tries: Any
    edit: str | None = None

    @classmethod
    def read(cls, value: Any) -> StoredRequest | None:
        """
        Return the stored request ``value`` holds, or None when it holds none.

        :param value: what ``task_state_store`` keeps under :data:`REQUEST_ID_STATE_KEY`.
        """
        if not isinstance(value, dict) or not value.get("request_id"):
            return None
        edit = value.get("edit")
        return cls(str(value["request_id"]), value.get("max_tries"), edit if isinstance(edit, str) else None)

    def to_dict(self) -> dict[str, Any]:
        """Return the request as ``task_state_store`` keeps it (plain JSON)."""
        return {"request_id": self.request_id, "max_tries": self.max_tries, "edit": self.edit}


@dataclass(frozen=True)
class Start:
    """
    Where a try starts: the job's latest known status, and whether the try waits for it.

    :param status: the job's status (a fresh submit's own answer, or a resumed job's last read).
    :param wait: False when the try returns right after the submit (``wait_for_completion=False``).
    """

    status: JobStatusResult
    wait: bool


def remember_request(context: Context, request_id: str, edit: str) -> None:
    """
    Keep an accepted request id for the task's later tries: ``task_state_store`` first, then XCom.

    Stored first, the job is paid for: if anything after this fails (the XCom push included), a retry
    still finds the request and resumes it instead of posting again. The digest lets a clear collect
    this job if it is stopped before it ends.

    :param context: the try's context.
    :param request_id: the request the gateway accepted.
    :param edit: the :func:`edit_fingerprint` of the edit submitted.
    """
    ti = context["ti"]
    store = task_state_store(context)
    if store is not None:
        store.set(REQUEST_ID_STATE_KEY, StoredRequest(request_id, ti.max_tries, edit).to_dict())
    ti.xcom_push(key=REQUEST_ID_XCOM_KEY, value=request_id)


def previous_status(context: Context, hook: FireRedHook, edit: str, log: TaskLog) -> JobStatusResult | None:
    """
    Return the status of the request an earlier try submitted, unless there is none to take up.

    A retry takes up its stored request; after a user's clear only a job of this same edit still
    running is (:func:`_still_running_after_clear`).

    :param context: the try's context.
    :param hook: reads the stored request's status.
    :param edit: the :func:`edit_fingerprint` of this try's edit.
    :param log: the task's logger.
    """
    store = task_state_store(context)
    if store is None:
        log.info(
            "This Airflow has no task_state_store (3.3+): crash recovery is off, a retry submits a new edit"
        )
        return None
    stored = StoredRequest.read(store.get(REQUEST_ID_STATE_KEY))
    if stored is None:
        return None
    if stored.max_tries == context["ti"].max_tries:
        return _stored_status(hook, stored.request_id, log)
    return _still_running_after_clear(hook, stored, edit, log)


def resume(context: Context, previous: JobStatusResult, *, wait: bool, log: TaskLog) -> Start:
    """
    Take up a request an earlier try submitted that is ``COMPLETED`` or still running.

    A ``COMPLETED`` one is collected whether the task waits or not.

    :param context: the try's context.
    :param previous: the request's status.
    :param wait: whether the task waits for its job (``wait_for_completion``).
    :param log: the task's logger.
    """
    context["ti"].xcom_push(key=REQUEST_ID_XCOM_KEY, value=previous.request_id)
    if previous.status is JobStatus.COMPLETED:
        log.info("Request %s already COMPLETED: collecting it without posting again", previous.request_id)
        return Start(previous, wait=True)
    log.info("Resuming request %s (%s) instead of posting again", previous.request_id, previous.raw_status)
    return Start(previous, wait=wait)


def _still_running_after_clear(
    hook: FireRedHook, stored: StoredRequest, edit: str, log: TaskLog
) -> JobStatusResult | None:
    """
    Return the stored request after a user's clear, only if it is this same edit and still running.

    A clear asks for a new edit, but a job of the same edit still ``QUEUED``/``PROCESSING`` was never
    collected (its task was stopped by the user while deferred, or crashed): it is paid for and still
    running, so it is collected instead of paying again. A finished one is not reused: the clear
    submits afresh, as asked.
    """
    request_id = stored.request_id
    if stored.edit != edit:
        log.info(
            "The task was cleared after request %s was submitted: submitting a fresh edit, as asked",
            request_id,
        )
        return None
    status = _stored_status(hook, request_id, log)
    if status is None or status.status.is_terminal:
        log.info("The task was cleared after request %s ended: submitting a fresh edit, as asked", request_id)
        return None
    log.info(
        "The task was cleared while request %s (this same edit) was still %s: collecting it "
        "instead of paying for it again",
        request_id,
        status.raw_status,
    )
    return status


def _stored_status(hook: FireRedHook, request_id: str, log: TaskLog) -> JobStatusResult | None:
    """Return the status of a stored request, or None when the gateway has forgotten it."""
    try:
        return hook.get_status(request_id)
    except FireRedApiError as err:
        if err.status_code == 404:  # forgotten by the gateway: nothing left to resume
            log.info("Stored request %s is unknown to the gateway: submitting a fresh edit", request_id)
            return None
        raise


def refuse_retry_that_would_resubmit(context: Context, ended: StatusEvent) -> None:
    """
    Fail for good a retryable trigger failure that a retry could only submit again.

    A retryable trigger failure (a key refused even after a fresh look-up) relies on the retry
    resuming the request from ``task_state_store``. Without it (Airflow before 3.3) a retry would
    post the edit again and pay twice: fail for good instead, naming the request to collect.

    :param context: the try's context.
    :param ended: the trigger's event.
    """
    if ended.status is not EventStatus.API_ERROR or not ended.retryable:
        return
    if task_state_store(context) is not None:
        return
    raise FireRedApiError.reported(
        f"{ended.message} (request_id={ended.request_id}). This Airflow has no "
        "task_state_store, so a retry would submit the edit again: not retried. Collect the "
        f"request with FireRedStatusSensor(request_id={ended.request_id!r}) once the key is fixed",
        status_code=ended.http_status,
        request_id=ended.request_id,
        retryable=False,
    )
