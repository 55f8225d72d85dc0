"""What the operator and the sensor share: error mapping, trigger events, and output downloads."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedJobFailedError,
    FireRedSubmitUncertainError,
    FireRedTimeoutError,
    FireRedValidationError,
)
from airflow_provider_firered.hooks.firered import as_target
from airflow_provider_firered.results import JobStatus

if TYPE_CHECKING:
    from airflow_provider_firered.hooks.firered import FireRedHook
    from airflow_provider_firered.results import JobStatusResult

#: XCom key holding the request id, pushed right after the gateway accepts a job.
REQUEST_ID_XCOM_KEY = "request_id"
#: task_state_store key holding the request id across tries (Airflow 3.3+).
REQUEST_ID_STATE_KEY = "firered_request_id"
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


@contextmanager
def airflow_errors() -> Iterator[None]:
    """
    Map provider errors to Airflow's retry semantics.

    Bad input and non-retryable gateway answers (400/401/402/403/404) fail the task without
    retries; anything else propagates and Airflow's own ``retries`` apply.
    """
    try:
        yield
    except FireRedValidationError as err:
        raise AirflowFailException(f"Invalid input: {err}") from None
    except FireRedSubmitUncertainError as err:
        raise AirflowFailException(str(err)) from None  # a retry could pay for the edit twice
    except FireRedApiError as err:
        if err.retryable:
            raise AirflowException(str(err)) from None
        raise AirflowFailException(str(err)) from None


def check_event(event: dict[str, Any] | None) -> dict[str, Any]:
    """
    Turn a :class:`FireRedStatusTrigger` event into the result dict, or raise the matching failure.

    :param event: the event payload.
    """
    if not event or "status" not in event:
        raise AirflowException(f"FireRed trigger sent an unusable event: {event!r}")
    request_id = event.get("request_id", "unknown")
    kind = event["status"]
    if kind == "success":
        return dict(event["result"])
    if kind in ("failed", "error"):
        raise AirflowException(str(FireRedJobFailedError(request_id, kind.upper(), event.get("message"))))
    if kind == "timeout":
        raise AirflowException(
            str(FireRedTimeoutError(request_id, float(event.get("timeout") or 0), event.get("last_status")))
        )
    message = f"{event.get('message')} (request_id={request_id})"
    if event.get("retryable"):
        raise AirflowException(message)
    raise AirflowFailException(message)


def check_status(status: JobStatusResult) -> None:
    """Raise for a job that ended ``FAILED`` or ``ERROR``."""
    if status.status in (JobStatus.FAILED, JobStatus.ERROR):
        raise AirflowException(
            str(FireRedJobFailedError(status.request_id, status.status.value, status.error))
        )


def output_name(request_id: str, index: int, media_type: str | None, url: str) -> str:
    """``<request_id>_<index><ext>``, the extension taken from the media type, else from the URL."""
    ext = _EXTENSIONS.get((media_type or "").lower()) or PurePosixPath(urlsplit(url).path).suffix
    if not ext and media_type:
        ext = mimetypes.guess_extension(media_type) or ""
    return f"{request_id}_{index}{ext or '.bin'}"


def download_outputs(
    hook: FireRedHook, result: dict[str, Any], output_dir: str | os.PathLike[str] | None
) -> list[str]:
    """
    Download every media URL of a completed job into ``output_dir`` (local path or object storage URL).

    :return: the paths written, in media order.
    """
    if not output_dir:
        return []
    base = as_target(output_dir)
    return [
        hook.download(url, base / output_name(result["request_id"], index, result.get("media_type"), url))
        for index, url in enumerate(result["media_urls"])
    ]


#: The most resubmissions of an ERROR job ``resubmit_on_error`` may ask for.
MAX_RESUBMITS = 10


def validate_resubmits(value: Any) -> None:
    """Check ``resubmit_on_error``, naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RESUBMITS:
        raise FireRedValidationError(
            "resubmit_on_error", f"must be a whole number from 0 to {MAX_RESUBMITS}, got {value!r}"
        )


def validate_wait(poll_interval: Any, timeout: Any) -> None:
    """Check the waiting arguments, naming the field."""
    for name, value in (("poll_interval", poll_interval), ("timeout", timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise FireRedValidationError(name, f"must be a positive number of seconds, got {value!r}")
