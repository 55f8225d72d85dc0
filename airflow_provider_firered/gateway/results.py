"""
Read the gateway's answers within bounds, map errors to exceptions, then type them.

Answers are bounded in size and the key is scrubbed from their text; the typed answers
(``SubmitResult``, ``JobStatusResult``) trust none of their fields.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedDownloadError,
    FireRedResponseError,
    FireRedValidationError,
)
from airflow_provider_firered.gateway.connection import url_host
from airflow_provider_firered.gateway.options import MAX_NUM_IMAGES, STATUS_PATH
from airflow_provider_firered.utils.retry import parse_retry_after
from airflow_provider_firered.utils.urls import MAX_URL_LENGTH, is_http_url

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

#: Media types accepted from the CDN: images, and the generic type the reference shows.
DOWNLOAD_MEDIA_TYPES = ("image/", "application/octet-stream")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")
#: The largest gateway answer read (the documented ones are under 2 KB): a bigger one is refused on
#: its ``Content-Length`` before reading, or as soon as the bytes read pass it.
MAX_ANSWER_BYTES = 1024 * 1024
#: What replaces the key in text taken from an answer.
REDACTED = "***"
_ERROR_TEXT_LIMIT = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def status_path(request_id: str) -> str:
    """Return the status endpoint path for ``request_id``, which is checked to be a plain id first."""
    if not isinstance(request_id, str):
        raise FireRedValidationError("request_id", f"must be a string, got {request_id!r}")
    return _status_path(request_id)


def is_request_id(value: Any) -> bool:
    """Whether ``value`` is a plain gateway request id (letters, digits, ``._:-``; up to 255)."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


@functools.lru_cache(maxsize=8192)  # a trigger asks for the same path at every poll
def _status_path(request_id: str) -> str:
    if not _REQUEST_ID.fullmatch(request_id):
        raise FireRedValidationError(
            "request_id", f"must be a gateway request id (letters, digits, '._:-'), got {request_id!r}"
        )
    return STATUS_PATH.format(request_id=quote(request_id, safe=""))


def scrub(text: str, secret: str | None) -> str:
    """
    ``text`` with every copy of ``secret`` replaced by ``***``.

    A gateway or CDN message may echo the key it was sent (``Invalid subscription key <key>``); text
    taken from an answer is scrubbed before it reaches an exception, an event, a log or the UI.

    :param text: text taken from an answer.
    :param secret: the subscription key (nothing is replaced when empty).
    """
    if not secret:
        return text
    for form in {secret, quote(secret, safe=""), quote(secret)}:
        text = text.replace(form, REDACTED)
    return text


def scrub_data(data: Any, secret: str | None) -> Any:
    """Return decoded JSON with the key scrubbed from every string in it (keys and values alike)."""
    if not secret:
        return data
    if isinstance(data, str):
        return scrub(data, secret)
    if isinstance(data, list):
        return [scrub_data(item, secret) for item in data]
    if isinstance(data, dict):
        return {scrub_data(k, secret): scrub_data(v, secret) for k, v in data.items()}
    return data


def clip(text: str, limit: int) -> str:
    """``text`` on one line (control characters become spaces), cut to ``limit`` characters."""
    if len(text) <= limit and text.isprintable():  # no control character: the common case, no regex
        return text
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_gateway_answer(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    method: str,
    request_id: str | None,
    secret: str | None = None,
) -> Any:
    """
    Turn a gateway answer into JSON data, or raise the matching :class:`FireRedError`.

    Every string taken from the answer, in the data returned and in the errors raised, has the key
    replaced by ``***``, and the texts put into errors are cut to a few hundred characters.

    :param status: the HTTP status.
    :param headers: the answer's headers (``Retry-After`` is read from them).
    :param content: the raw body, at most :data:`MAX_ANSWER_BYTES` (see :func:`check_answer_length`).
    :param method: the request method; a malformed answer to a GET is retryable, to a POST not
        (posting again could pay twice).
    :param request_id: the job concerned, for messages.
    :param secret: the subscription key the request carried, scrubbed from the answer.
    """
    data: Any = None
    try:
        data = json.loads(content) if content else None
        decoded = True
    except ValueError:
        decoded = False
    # Without a JSON escape the decoded strings are the raw bytes: a body that does not hold the
    # key holds no string that does (the common case, checked without walking the data).
    if decoded and secret and (b"\\" in content or secret.encode() in content):
        data = scrub_data(data, secret)
    if 300 <= status < 400:
        raise FireRedApiError(
            status,
            "Redirect not followed",
            f"the gateway redirected to {_text(url_host(headers.get('Location', '')), secret, 200)}; "
            "the API key is only sent to the gateway host",
            request_id=request_id,
        )
    if status >= 400:
        error = data.get("error") if isinstance(data, dict) else None
        message = data.get("message") if isinstance(data, dict) else None
        if not error and not message and content:
            message = _head(content, _ERROR_TEXT_LIMIT, secret)
        raise FireRedApiError(
            status,
            _text(str(error), secret, _ERROR_TEXT_LIMIT) if error else None,
            _text(str(message), secret, _ERROR_TEXT_LIMIT) if message else None,
            request_id=request_id,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    if not decoded or data is None:
        preview = clip(repr(scrub(_head(content, 120, secret), secret)), 200)
        raise FireRedResponseError(
            status,
            f"answer is not JSON: {preview}",
            request_id=request_id,
            retryable=method == "GET",
        )
    return data


def check_answer_length(
    status: int, content_length: int | None, *, method: str, request_id: str | None
) -> None:
    """
    Refuse an answer that announces more than :data:`MAX_ANSWER_BYTES`, before reading it.

    :param status: the HTTP status.
    :param content_length: the announced ``Content-Length`` (None when absent).
    :param method: the request method; the refusal is retryable for a GET only.
    :param request_id: the job concerned, for messages.
    """
    if content_length is not None and content_length > MAX_ANSWER_BYTES:
        raise answer_too_large(status, method=method, request_id=request_id)


def content_length(headers: Mapping[str, str]) -> int | None:
    """Return the announced ``Content-Length`` of an answer, or ``None`` when absent or not a number."""
    try:
        return int(headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def answer_too_large(status: int, *, method: str, request_id: str | None) -> FireRedResponseError:
    """Return the error for an answer over :data:`MAX_ANSWER_BYTES` (announced or counted while reading)."""
    return FireRedResponseError(
        status,
        f"answer larger than {MAX_ANSWER_BYTES} bytes; the documented answers are under 2 KB",
        request_id=request_id,
        retryable=method == "GET",
    )


def _head(content: bytes, limit: int, secret: str | None) -> str:
    # A little more than ``limit``, so that a key across the cut is still whole when scrubbed.
    return content[: limit + 3 * len(secret or "")].decode("utf-8", "replace")


def _text(text: str, secret: str | None, limit: int) -> str:
    # Scrub before cutting: a cut through the key would leave part of it.
    return clip(scrub(text, secret), limit)


def check_media_type(url: str, content_type: str | None) -> None:
    """Refuse a media answer that is not an image (an HTML error page, say)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if not kind.startswith(DOWNLOAD_MEDIA_TYPES):
        raise FireRedDownloadError(url, f"unexpected Content-Type {content_type!r}; expected an image")


#: Longest kept text of the other fields (``error``, ``model_id``, ``media_type``, times, status).
_TEXT_LIMITS = {"error": 2000, "model_id": 128, "media_type": 128, "time": 64, "status": 64}
_STATUS_LIMIT, _MODEL_LIMIT, _ERROR_LIMIT, _MEDIA_TYPE_LIMIT, _TIME_LIMIT = (
    _TEXT_LIMITS[name] for name in ("status", "model_id", "error", "media_type", "time")
)


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
        known = _STATUS_BY_TEXT.get(value) if type(value) is str else None
        if known is not None:  # the documented spelling, as every poll gets it: one dict lookup
            return known
        try:
            return cls(str(value).upper())
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        """Whether the job will not change any more."""
        return self is JobStatus.COMPLETED or self is JobStatus.FAILED or self is JobStatus.ERROR


_STATUS_BY_TEXT: dict[str, JobStatus] = {status.value: status for status in JobStatus}


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
        Parse a submit answer; raise :class:`FireRedResponseError` if it carries no plain request id.

        That error is not retryable: the edit may have been accepted.
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

    def as_status(self) -> JobStatusResult:
        """Return the status this answer states, as a status read would give it (no request is made)."""
        return JobStatusResult(self.request_id, self.status, self.status.value)


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

        raw_status = data.get("status") if type(data) is dict else None
        if type(raw_status) is not str:
            if not isinstance(data, dict) or not isinstance(data.get("status"), str):
                raise bad(f"status answer has no status field: {_preview(data)}")
            raw_status = data["status"]  # a dict or str subclass: not from json.loads
        named = data.get("request_id")
        if named is not None and named != request_id:
            raise bad(f"status answer names another request_id: {_preview(named)}")
        status = JobStatus.parse(raw_status)
        raw_output = data.get("output")
        output: dict[str, Any] = raw_output if isinstance(raw_output, dict) else {}
        media_urls = _media_urls(output.get("media_url"), bad) if status is JobStatus.COMPLETED else []
        return cls(
            request_id=request_id,
            status=status,
            raw_status=clip(raw_status, _STATUS_LIMIT),
            model_id=_opt_str(data.get("model_id"), _MODEL_LIMIT),
            error=_opt_str(data.get("error"), _ERROR_LIMIT),
            media_urls=media_urls,
            media_type=_opt_str(output.get("media_type"), _MEDIA_TYPE_LIMIT),
            created_at=_opt_str(data.get("created_at"), _TIME_LIMIT),
            updated_at=_opt_str(data.get("updated_at"), _TIME_LIMIT),
            completed_at=_opt_str(data.get("completed_at"), _TIME_LIMIT),
        )

    @property
    def duration(self) -> float | None:
        """
        Return the seconds from the job's creation to its end, by the gateway's own timestamps.

        ``None`` unless the job ended and both ``created_at`` and ``completed_at`` are ISO 8601 times
        with a UTC offset, the end not before the creation: a time without an offset is not guessed.
        """
        if not self.status.is_terminal:
            return None
        created, completed = _timestamp(self.created_at), _timestamp(self.completed_at)
        if created is None or completed is None or completed < created:
            return None
        return (completed - created).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """Return the result shape the operator and the sensor return, before any output is downloaded."""
        return {
            "request_id": self.request_id,
            "model_id": self.model_id,
            "status": self.status.value,
            "media_urls": list(self.media_urls),
            "media_type": self.media_type,
            "output_paths": [],
        }


def _media_urls(media: Any, bad: Callable[[str], FireRedResponseError]) -> list[str]:
    """Return the media URLs of a ``COMPLETED`` answer: 1 to ``MAX_NUM_IMAGES`` http(s) URLs, else ``bad``."""
    if isinstance(media, str):
        media = [media]
    if not isinstance(media, list) or not media:
        raise bad("job is COMPLETED but output.media_url holds no URL")
    if len(media) > MAX_NUM_IMAGES:
        raise bad(f"job is COMPLETED with {len(media)} media URLs; an edit makes at most {MAX_NUM_IMAGES}")
    for index, url in enumerate(media):
        if not is_http_url(url):
            raise bad(f"output.media_url[{index}] is not an http(s) URL: {_preview(url, 120)}")
    return list(media)


def _timestamp(text: str | None) -> datetime | None:
    """Return a gateway time (``2026-03-31T10:00:15.000Z``) as an aware datetime; None without an offset."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _opt_str(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    return clip(value, limit) if isinstance(value, str) else None


def _preview(data: Any, limit: int = 200) -> str:
    return clip(repr(data), limit)
