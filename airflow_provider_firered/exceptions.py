"""
Define the exceptions raised by the FireRed provider, one type per outcome.

``retryable`` says whether the hook may try the same request again; which of them an Airflow retry
of the task can change is decided in :mod:`airflow_provider_firered.utils.airflow_errors`.
``FireRedError`` is an ``AirflowException``, as provider errors are. Airflow imports the provider's
connection form while it starts, so the modules that form needs (``connection_extras``, ``retry``)
import these errors only where they raise them.
No exception text ever contains the subscription key: messages are built from the gateway's
answer and from values the user passed, never from request headers.
"""

from __future__ import annotations

from airflow.providers.common.compat.sdk import AirflowException


class FireRedError(AirflowException):
    """Base class for every error raised by this provider."""

    #: Whether trying the same request again may succeed.
    retryable: bool = False


class FireRedValidationError(FireRedError, ValueError):
    """
    Bad input, detected before anything is sent.

    :param field: the offending field, by its API name (``parameters.output_quality``, ``prompt``, ...).
    :param message: what is wrong and what is allowed.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class FireRedApiError(FireRedError):
    """
    The gateway answered with an error status (or an answer that cannot be used).

    :param status_code: the HTTP status (0 when no answer was received).
    :param error: the gateway's ``error`` field.
    :param message: the gateway's ``message`` field, or a description of the problem.
    :param request_id: the job concerned, when known.
    :param retry_after: seconds the gateway asked to wait (``Retry-After``), when given.
    """

    #: Statuses that are worth another try: rate limiting and server-side failures.
    RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

    def __init__(
        self,
        status_code: int,
        error: str | None = None,
        message: str | None = None,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        # The gateway's HTTP status; AirflowException's own status_code is for API server answers.
        self.status_code = status_code  # type: ignore[assignment]
        self.error = error
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after
        self.retryable = status_code in self.RETRYABLE_STATUSES or status_code >= 500
        super().__init__(self._describe())

    @classmethod
    def reported(
        cls, text: str, *, status_code: int | None, request_id: str, retryable: bool
    ) -> FireRedApiError:
        """
        Return the error a trigger reported in its event, as text, for the task to raise with that text.

        :param text: the message, as the task shows it.
        :param status_code: the HTTP status, when the gateway answered.
        :param request_id: the job concerned.
        :param retryable: whether a retry of the task may succeed.
        """
        error = cls(status_code or 0, request_id=request_id)
        error.args = (text,)
        error.retryable = retryable
        return error

    def _describe(self) -> str:
        parts = [f"FireRed gateway answered HTTP {self.status_code}"]
        if self.error:
            parts.append(f"error={self.error!r}")
        if self.message:
            parts.append(f"message={self.message!r}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return ", ".join(parts)


class FireRedResponseError(FireRedApiError):
    """A 2xx answer whose body is not what the gateway documents (malformed JSON, missing fields)."""

    def __init__(
        self, status_code: int, message: str, *, request_id: str | None = None, retryable: bool = False
    ) -> None:
        super().__init__(status_code, "Unexpected response", message, request_id=request_id)
        self.retryable = retryable


class FireRedConnectionError(FireRedError):
    """
    The gateway or CDN could not be reached, or the answer was cut off (transient).

    :param url_host: host that was being contacted (never a full URL with credentials).
    :param reason: what went wrong.
    """

    retryable = True

    def __init__(self, url_host: str, reason: str, *, request_id: str | None = None) -> None:
        self.url_host = url_host
        self.reason = reason
        self.request_id = request_id
        suffix = f", request_id={request_id}" if request_id else ""
        super().__init__(f"Could not complete the request to {url_host}: {reason}{suffix}")


class FireRedSubmitUncertainError(FireRedError):
    """
    A submit left for the gateway but no usable answer came back: it may have been accepted.

    A 5xx or 408 answer, a reset, a read timeout, an unreadable 2xx answer: the gateway may have
    accepted, and charged for, the edit. Not retried, so an edit is never paid for twice.

    :param url_host: the gateway host.
    :param reason: what went wrong.
    """

    def __init__(self, url_host: str, reason: str) -> None:
        self.url_host = url_host
        self.reason = reason
        super().__init__(
            f"The submit to {url_host} was sent but no usable answer came back ({reason}): the gateway "
            "may have accepted the edit and charged for it, so it is not posted again automatically. "
            "Check the gateway's usage or request history before clearing the task to submit again."
        )


class FireRedJobEndedError(FireRedError):
    """
    The job ended ``FAILED`` or ``ERROR`` at the gateway.

    Raised as one of the two kinds below, which tell the outcomes apart (:meth:`for_status` picks it).

    :param request_id: the job.
    :param status: ``FAILED`` or ``ERROR``.
    :param error: the gateway's error text.
    """

    #: Whether the gateway charged for the job.
    charged: bool = False
    #: What the outcome means for the user, appended to the message.
    _consequence: str = ""

    def __init__(self, request_id: str, status: str, error: str | None) -> None:
        self.request_id = request_id
        self.status = status
        self.error = error
        self.retryable = not self.charged
        super().__init__(
            f"FireRed job {request_id} ended {status}: {error or 'no error text given'} ({self._consequence})"
        )

    @staticmethod
    def for_status(request_id: str, status: str, error: str | None) -> FireRedJobEndedError:
        """
        Return the error for a job that ended ``status``.

        :param request_id: the job.
        :param status: ``FAILED`` or ``ERROR``.
        :param error: the gateway's error text.
        """
        kind = FireRedJobFailedError if status == "FAILED" else FireRedJobErroredError
        return kind(request_id, status, error)


class FireRedJobFailedError(FireRedJobEndedError):
    """
    The job ended ``FAILED``: a problem with the input.

    The gateway charged for it and the outcome is final, so no retry is worth it (it would submit
    the same input and pay again).
    """

    charged = True
    _consequence = (
        "the gateway charged for this job and its outcome is final; it is not retried, because "
        "submitting the same input again would be paid again. Fix the input, then clear the task"
    )


class FireRedJobErroredError(FireRedJobEndedError):
    """The job ended ``ERROR``: a failure on the gateway's side, not charged; submitting again may succeed."""

    _consequence = "a failure on the gateway's side; ERROR jobs are not charged, submitting again may succeed"


class FireRedStartTimeoutError(FireRedError):
    """
    The gateway did not start the job (it stayed ``QUEUED``) within ``start_timeout``.

    It may still start, complete and be charged later.

    :param request_id: the job, which can still be collected later (for example with the sensor).
    :param start_timeout: the start deadline that passed, in seconds.
    """

    def __init__(self, request_id: str, start_timeout: float) -> None:
        self.request_id = request_id
        self.start_timeout = start_timeout
        super().__init__(
            f"The gateway did not start request {request_id} within {start_timeout:g}s (still QUEUED); "
            "it may still start and be charged: collect it with "
            f"FireRedStatusSensor(request_id={request_id!r}), or raise start_timeout"
        )


class FireRedTimeoutError(FireRedError):
    """
    The job did not finish before the deadline; it may still complete at the gateway.

    :param request_id: the job, which can still be collected later (for example with the sensor).
    :param timeout: the wait that elapsed, in seconds.
    :param last_status: the last status seen.
    """

    def __init__(self, request_id: str, timeout: float, last_status: str | None = None) -> None:
        self.request_id = request_id
        self.timeout = timeout
        self.last_status = last_status
        seen = f" (last status {last_status})" if last_status else ""
        super().__init__(
            f"FireRed job {request_id} did not finish within {timeout:g}s{seen}; it may still complete: "
            f"collect it with FireRedStatusSensor(request_id={request_id!r}) or retry the task to resume it"
        )


class FireRedDownloadError(FireRedError):
    """
    A media file could not be downloaded as expected.

    :param url: the media URL (CDN URLs carry no credentials).
    :param reason: what went wrong.
    :param retryable: whether another try may succeed (timeouts, truncated bodies).
    """

    def __init__(self, url: str, reason: str, *, retryable: bool = False) -> None:
        self.url = url
        self.reason = reason
        self.retryable = retryable
        super().__init__(f"Could not download {url}: {reason}")


class FireRedBatchFailedError(FireRedError):
    """
    More items of a batch failed than ``max_failed`` allows (every success was collected first).

    :param failures: ``(key, status, error)`` of each failed item.
    :param max_failed: how many failures were allowed.
    :param manifest: where the manifest lists every item.
    :param retryable: whether a retry may change the outcome: some items failed in a way a retry takes
        up again (``ERROR``, a timeout, a download); the others are final.
    """

    #: The most failures named in the message.
    SHOWN = 20

    def __init__(
        self, failures: list[tuple[str, str, str]], max_failed: int, manifest: str, *, retryable: bool
    ) -> None:
        self.failures = failures
        self.retryable = retryable
        shown = "; ".join(f"{key}: {status} {error}"[:300] for key, status, error in failures[: self.SHOWN])
        more = f"; and {len(failures) - self.SHOWN} more" if len(failures) > self.SHOWN else ""
        super().__init__(
            f"{len(failures)} item(s) of the batch failed, more than max_failed={max_failed} "
            f"(every other item was collected; see {manifest}): {shown}{more}"
        )
