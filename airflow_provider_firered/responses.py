"""Reading the gateway's answers: status paths, error answers, media types."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from airflow_provider_firered.connection import url_host
from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedDownloadError,
    FireRedResponseError,
    FireRedValidationError,
)
from airflow_provider_firered.options import STATUS_PATH
from airflow_provider_firered.retry import parse_retry_after

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
    """The status endpoint path for ``request_id``, which is checked to be a plain id first."""
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
    """Decoded JSON with the key scrubbed from every string in it (keys and values alike)."""
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
    """The announced ``Content-Length`` of an answer, or ``None`` when absent or not a number."""
    try:
        return int(headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def answer_too_large(status: int, *, method: str, request_id: str | None) -> FireRedResponseError:
    """The error for an answer over :data:`MAX_ANSWER_BYTES` (announced or counted while reading)."""
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
