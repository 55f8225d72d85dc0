"""Typed views of the gateway's answers, parsed leniently (unknown fields are ignored)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from airflow_provider_firered.exceptions import FireRedResponseError


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
        """Parse a submit answer; raise :class:`FireRedResponseError` if it carries no request id."""
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("request_id"), str)
            or not data["request_id"]
        ):
            raise FireRedResponseError(
                status_code, f"submit answer has no request_id: {_preview(data)}", retryable=False
            )
        polling_url = data.get("polling_url")
        return cls(
            request_id=data["request_id"],
            status=JobStatus.parse(data.get("status", "QUEUED")),
            polling_url=polling_url if isinstance(polling_url, str) else None,
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
        Parse a status answer.

        :param data: the decoded JSON body.
        :param request_id: the id that was asked for (used when the body omits it).
        :param status_code: the HTTP status, for error messages.
        """
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            # An answer without a status cannot be acted on; polling again may get a good one.
            raise FireRedResponseError(
                status_code,
                f"status answer has no status field: {_preview(data)}",
                request_id=request_id,
                retryable=True,
            )
        raw_output = data.get("output")
        output: dict[str, Any] = raw_output if isinstance(raw_output, dict) else {}
        media = output.get("media_url") or []
        if isinstance(media, str):
            media = [media]
        status = JobStatus.parse(data["status"])
        result = cls(
            request_id=str(data.get("request_id") or request_id),
            status=status,
            raw_status=data["status"],
            model_id=_opt_str(data.get("model_id")),
            error=_opt_str(data.get("error")),
            media_urls=[u for u in media if isinstance(u, str)],
            media_type=_opt_str(output.get("media_type")),
            created_at=_opt_str(data.get("created_at")),
            updated_at=_opt_str(data.get("updated_at")),
            completed_at=_opt_str(data.get("completed_at")),
        )
        if status is JobStatus.COMPLETED and not result.media_urls:
            raise FireRedResponseError(
                status_code,
                "job is COMPLETED but output.media_url holds no URL",
                request_id=result.request_id,
                retryable=True,
            )
        return result

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


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _preview(data: Any, limit: int = 200) -> str:
    text = repr(data)
    return text if len(text) <= limit else text[:limit] + "..."
