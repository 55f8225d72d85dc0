"""What the operator and the sensor share: error mapping, trigger events, and output downloads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedDownloadError,
    FireRedJobFailedError,
    FireRedSubmitUncertainError,
    FireRedTimeoutError,
    FireRedValidationError,
)
from airflow_provider_firered.results import JobStatus

if TYPE_CHECKING:
    from airflow_provider_firered.results import JobStatusResult

#: XCom key holding the request id, pushed right after the gateway accepts a job.
REQUEST_ID_XCOM_KEY = "request_id"
#: task_state_store key holding the request id across tries (Airflow 3.3+).
REQUEST_ID_STATE_KEY = "firered_request_id"
#: The shortest accepted ``poll_interval`` / ``poke_interval``, in seconds (the reference recommends 5-10).
MIN_POLL_INTERVAL = 1.0


@contextmanager
def airflow_errors() -> Iterator[None]:
    """
    Map provider errors to Airflow's retry semantics.

    Bad input, non-retryable gateway answers (400/401/402/403/404), a ``FAILED`` job (charged: a retry
    would pay again) and deterministic download failures (not an image, too large, a refused host, a
    CDN 4xx) fail the task without retries; anything else propagates and Airflow's own ``retries``
    apply.
    """
    try:
        yield
    except FireRedValidationError as err:
        raise AirflowFailException(f"Invalid input: {err}") from None
    except FireRedSubmitUncertainError as err:
        raise AirflowFailException(str(err)) from None  # a retry could pay for the edit twice
    except (FireRedApiError, FireRedDownloadError, FireRedJobFailedError) as err:
        if err.retryable:
            raise AirflowException(str(err)) from None
        raise AirflowFailException(str(err)) from None


def job_failure(request_id: str, status: str, error: str | None) -> AirflowException:
    """
    The Airflow exception for a job that ended ``FAILED`` or ``ERROR``.

    ``FAILED`` was charged and is final: the task fails without retries, since a retry would submit the
    same input and pay again. ``ERROR`` was not charged: Airflow's retries apply.

    :param request_id: the job.
    :param status: ``FAILED`` or ``ERROR``.
    :param error: the gateway's error text.
    """
    failure = FireRedJobFailedError(request_id, status, error)
    return AirflowException(str(failure)) if failure.retryable else AirflowFailException(str(failure))


def check_event(event: dict[str, Any] | None) -> dict[str, Any]:
    """
    Turn a :class:`FireRedStatusTrigger` event into the result dict, or raise the matching failure.

    :param event: the event payload.
    """
    if not event or "status" not in event:
        raise AirflowException(f"FireRed trigger sent an unusable event: {event!r}")
    request_id = str(event.get("request_id", "unknown"))
    kind = event["status"]
    if kind == "success":
        return dict(event["result"])
    if kind in ("failed", "error"):
        raise job_failure(request_id, kind.upper(), event.get("message"))
    if kind == "timeout":
        raise AirflowException(
            str(FireRedTimeoutError(request_id, float(event.get("timeout") or 0), event.get("last_status")))
        )
    message = f"{event.get('message')} (request_id={request_id})"
    if event.get("retryable"):
        raise AirflowException(message)
    raise AirflowFailException(message)


def check_status(status: JobStatusResult) -> None:
    """Raise for a job that ended ``FAILED`` (final, see :func:`job_failure`) or ``ERROR``."""
    if status.status in (JobStatus.FAILED, JobStatus.ERROR):
        raise job_failure(status.request_id, status.status.value, status.error)


#: The most resubmissions of an ERROR job ``resubmit_on_error`` may ask for.
MAX_RESUBMITS = 10


def validate_resubmits(value: Any) -> None:
    """Check ``resubmit_on_error``, naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RESUBMITS:
        raise FireRedValidationError(
            "resubmit_on_error", f"must be a whole number from 0 to {MAX_RESUBMITS}, got {value!r}"
        )


def validate_poll_interval(name: str, value: Any) -> None:
    """
    Check a polling interval, naming the field: at least :data:`MIN_POLL_INTERVAL` seconds.

    :param name: the field, as the user spells it (``poll_interval``, ``poke_interval``).
    :param value: its value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= MIN_POLL_INTERVAL:
        raise FireRedValidationError(
            name,
            f"must be at least {MIN_POLL_INTERVAL:g} second (5-10 s is recommended), got {value!r}",
        )


def validate_wait(poll_interval: Any, timeout: Any) -> None:
    """Check the waiting arguments, naming the field."""
    validate_poll_interval("poll_interval", poll_interval)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise FireRedValidationError("timeout", f"must be a positive number of seconds, got {timeout!r}")
