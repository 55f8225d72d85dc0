"""Typed views of the gateway's answers: unknown fields are ignored, the fields used are checked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_firered.exceptions import FireRedResponseError
from airflow_provider_firered.options import MAX_NUM_IMAGES
from airflow_provider_firered.responses import clip, is_request_id

#: Longest media URL accepted from a status answer.
MAX_URL_LENGTH = 4096
#: Longest kept text of the other fields (``error``, ``model_id``, ``media_type``, times, status).
_TEXT_LIMITS = {"error": 2000, "model_id": 128, "media_type": 128, "time": 64, "status": 64}


class JobStatus(str, Enum):
    """The documented job statuses, plus ``UNKNOWN`` for a value the reference does not list."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ERROR = "ERROR"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, value: Any) -> JobStatus:
        """Map a status string to the enum; anything undocumented becomes ``UNKNOWN``."""
        try:
            return cls(str(value).upper())
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        """Whether the job will not change any more."""
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ERROR)


@dataclass(frozen=True)
class SubmitResult:
    """
    The gateway's answer to a submit (``202 Accepted``).

    :param request_id: the job id, prefixed by the model id.
    :param status: normally ``QUEUED``.
    :param polling_url: the status URL the gateway suggests (informational: the provider always
        polls the status endpoint on the connection's own gateway host).
    """

    request_id: str
    status: JobStatus
    polling_url: str | None = None

    @classmethod
    def from_json(cls, data: Any, status_code: int = 202) -> SubmitResult:
        """
        Parse a submit answer; raise :class:`FireRedResponseError` (not retryable: the edit may have
        been accepted) if it carries no plain request id.
        """
        request_id = data.get("request_id") if isinstance(data, dict) else None
        if not is_request_id(request_id):
            raise FireRedResponseError(
                status_code,
                f"submit answer has no request_id made of letters, digits and '._:-': {_preview(data)}",
                retryable=False,
            )
        polling_url = data.get("polling_url")
        return cls(
            request_id=str(request_id),
            status=JobStatus.parse(data.get("status", "QUEUED")),
            polling_url=polling_url
            if isinstance(polling_url, str) and len(polling_url) <= MAX_URL_LENGTH
            else None,
        )


@dataclass(frozen=True)
class JobStatusResult:
    """
    A job's status as returned by ``GET /v2/requests/status/{request_id}``.

    :param request_id: the job id.
    :param status: the parsed status.
    :param raw_status: the status string exactly as the gateway sent it.
    :param model_id: the model that processed the job.
    :param error: the error text of a ``FAILED``/``ERROR`` job.
    :param media_urls: output URLs on the CDN (``COMPLETED`` jobs).
    :param media_type: MIME type of the outputs.
    :param created_at: when the job was created, as sent.
    :param updated_at: when the job last changed, as sent.
    :param completed_at: when the job completed, as sent.
    """

    request_id: str
    status: JobStatus
    raw_status: str
    model_id: str | None = None
    error: str | None = None
    media_urls: list[str] = field(default_factory=list)
    media_type: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    completed_at: str | None = None

    @classmethod
    def from_json(cls, data: Any, request_id: str, status_code: int = 200) -> JobStatusResult:
        """
        Parse a status answer, trusting nothing in it.

        The id used is the one that was asked for: an answer naming another ``request_id`` is a bad
        answer. A ``COMPLETED`` answer must hold 1 to ``MAX_NUM_IMAGES`` http(s) media URLs. Bad
        answers raise a retryable :class:`FireRedResponseError` (read again, like a 503). Kept text
        fields are cut to a bounded length, on one line.

        :param data: the decoded JSON body.
        :param request_id: the id that was asked for.
        :param status_code: the HTTP status, for error messages.
        """

        def bad(reason: str) -> FireRedResponseError:
            # Reading again may get a good answer; acting on this one could do harm.
            return FireRedResponseError(status_code, reason, request_id=request_id, retryable=True)

        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise bad(f"status answer has no status field: {_preview(data)}")
        named = data.get("request_id")
        if named is not None and named != request_id:
            raise bad(f"status answer names another request_id: {_preview(named)}")
        status = JobStatus.parse(data["status"])
        raw_output = data.get("output")
        output: dict[str, Any] = raw_output if isinstance(raw_output, dict) else {}
        media_urls = _media_urls(output.get("media_url"), bad) if status is JobStatus.COMPLETED else []
        return cls(
            request_id=request_id,
            status=status,
            raw_status=clip(data["status"], _TEXT_LIMITS["status"]),
            model_id=_opt_str(data.get("model_id"), _TEXT_LIMITS["model_id"]),
            error=_opt_str(data.get("error"), _TEXT_LIMITS["error"]),
            media_urls=media_urls,
            media_type=_opt_str(output.get("media_type"), _TEXT_LIMITS["media_type"]),
            created_at=_opt_str(data.get("created_at"), _TEXT_LIMITS["time"]),
            updated_at=_opt_str(data.get("updated_at"), _TEXT_LIMITS["time"]),
            completed_at=_opt_str(data.get("completed_at"), _TEXT_LIMITS["time"]),
        )

    def to_dict(self, output_paths: list[str] | None = None) -> dict[str, Any]:
        """The provider's result shape (the operator's and sensor's XCom return value)."""
        return {
            "request_id": self.request_id,
            "model_id": self.model_id,
            "status": self.status.value,
            "media_urls": list(self.media_urls),
            "media_type": self.media_type,
            "output_paths": list(output_paths or []),
        }


def _media_urls(media: Any, bad: Callable[[str], FireRedResponseError]) -> list[str]:
    """The media URLs of a ``COMPLETED`` answer: 1 to ``MAX_NUM_IMAGES`` http(s) URLs, else ``bad``."""
    if isinstance(media, str):
        media = [media]
    if not isinstance(media, list) or not media:
        raise bad("job is COMPLETED but output.media_url holds no URL")
    if len(media) > MAX_NUM_IMAGES:
        raise bad(f"job is COMPLETED with {len(media)} media URLs; an edit makes at most {MAX_NUM_IMAGES}")
    for index, url in enumerate(media):
        if not _is_http_url(url):
            raise bad(f"output.media_url[{index}] is not an http(s) URL: {_preview(url, 120)}")
    return list(media)


def _is_http_url(url: Any) -> bool:
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH or _has_control(url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x21 or ord(c) == 0x7F for c in text)


def _opt_str(value: Any, limit: int) -> str | None:
    return clip(value, limit) if isinstance(value, str) else None


def _preview(data: Any, limit: int = 200) -> str:
    return clip(repr(data), limit)
