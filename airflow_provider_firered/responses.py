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


def status_path(request_id: str) -> str:
    """The status endpoint path for ``request_id``, which is checked to be a plain id first."""
    if not isinstance(request_id, str):
        raise FireRedValidationError("request_id", f"must be a string, got {request_id!r}")
    return _status_path(request_id)


@functools.lru_cache(maxsize=8192)  # a trigger asks for the same path at every poll
def _status_path(request_id: str) -> str:
    if not _REQUEST_ID.match(request_id):
        raise FireRedValidationError(
            "request_id", f"must be a gateway request id (letters, digits, '._:-'), got {request_id!r}"
        )
    return STATUS_PATH.format(request_id=quote(request_id, safe=""))


def parse_gateway_answer(
    status: int, headers: Mapping[str, str], content: bytes, *, method: str, request_id: str | None
) -> Any:
    """
    Turn a gateway answer into JSON data, or raise the matching :class:`FireRedError`.

    :param status: the HTTP status.
    :param headers: the answer's headers (``Retry-After`` is read from them).
    :param content: the raw body.
    :param method: the request method; a malformed answer to a GET is retryable, to a POST not
        (posting again could pay twice).
    :param request_id: the job concerned, for messages.
    """
    data: Any = None
    try:
        data = json.loads(content) if content else None
        decoded = True
    except ValueError:
        decoded = False
    if 300 <= status < 400:
        raise FireRedApiError(
            status,
            "Redirect not followed",
            f"the gateway redirected to {url_host(headers.get('Location', ''))}; "
            "the API key is only sent to the gateway host",
            request_id=request_id,
        )
    if status >= 400:
        error = data.get("error") if isinstance(data, dict) else None
        message = data.get("message") if isinstance(data, dict) else None
        if not error and not message and content:
            message = content[:200].decode("utf-8", "replace")
        raise FireRedApiError(
            status,
            str(error) if error else None,
            str(message) if message else None,
            request_id=request_id,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    if not decoded or data is None:
        raise FireRedResponseError(
            status,
            f"answer is not JSON: {content[:120].decode('utf-8', 'replace')!r}",
            request_id=request_id,
            retryable=method == "GET",
        )
    return data


def check_media_type(url: str, content_type: str | None) -> None:
    """Refuse a media answer that is not an image (an HTML error page, say)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if not kind.startswith(DOWNLOAD_MEDIA_TYPES):
        raise FireRedDownloadError(url, f"unexpected Content-Type {content_type!r}; expected an image")
