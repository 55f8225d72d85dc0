"""What the emulator saw: every request, kept raw in-process and shown redacted over HTTP."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_firered.emulator.protocol import has_key

if TYPE_CHECKING:
    from aiohttp import web

#: Header names whose values the admin API never returns: the key and anything else that may be secret.
_SECRET_HEADER_WORDS = ("key", "token", "secret", "auth", "cookie", "password", "signature", "credential")
#: Body fields whose values the admin API never returns.
_SECRET_BODY_WORDS = ("key", "token", "secret", "password", "credential")
#: Stands for a redacted value.
REDACTED = "***"
#: Records kept on long runs (the oldest go first).
MAX_RECORDS = 100_000


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator saw it (``status`` 0 when the connection was dropped)."""

    origin: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int
    time: float


class Recorder:
    """The thread-safe record of every request both origins answered."""

    def __init__(self) -> None:
        self._records: list[RecordedRequest] = []
        self._lock = threading.Lock()

    def add(self, origin: str, request: web.Request, body: Any, response: web.StreamResponse | None) -> None:
        """
        Record ``request`` with the status it got.

        :param response: the answer, or None when the handler raised; a connection dropped on purpose
            (``request["dropped"]``) or an answer never given is recorded with status 0.
        """
        dropped = response is None or request.get("dropped", False)
        status = 0 if dropped or response is None else response.status
        record = RecordedRequest(
            origin, request.method, request.path, dict(request.headers), body, status, time.time()
        )
        with self._lock:
            self._records.append(record)

    def all(self) -> list[RecordedRequest]:
        """Every record, in order (a copy)."""
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()

    def trim(self) -> None:
        """Keep the record bounded on long runs."""
        with self._lock:
            del self._records[:-MAX_RECORDS]

    def key_violations(self) -> list[RecordedRequest]:
        """CDN requests that carried the subscription key."""
        return [r for r in self.all() if r.origin == "cdn" and has_key(r.headers)]


def _is_secret(name: str, words: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in words)


def _redact_url(url: str) -> str:
    """Drop a URL's query, fragment and user info, which may carry a token (webhook URLs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if not (parts.query or parts.fragment or parts.username or parts.password):
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc, query=REDACTED if parts.query else "", fragment="").geturl()


def _redact_headers(headers: dict[str, str]) -> dict[str, str]:
    return {
        name: REDACTED
        if _is_secret(name, _SECRET_HEADER_WORDS)
        else _redact_url(value)
        if name.lower() == "x-webhook-url"
        else value
        for name, value in headers.items()
    }


def _redact_body(body: Any) -> Any:
    if isinstance(body, dict):
        return {
            name: REDACTED
            if isinstance(name, str) and _is_secret(name, _SECRET_BODY_WORDS)
            else _redact_url(value)
            if name == "webhook" and isinstance(value, str)
            else _redact_body(value)
            for name, value in body.items()
        }
    if isinstance(body, list):
        return [_redact_body(item) for item in body]
    return body


def record_json(record: RecordedRequest) -> dict[str, Any]:
    """
    Return a recorded request for the admin API, secrets redacted.

    The subscription key and any other credential-like header or body field become ``***`` (the name
    stays, so a test can still see that one was sent), and a webhook URL loses its query.
    ``Emulator.requests`` keeps the raw values for in-process tests.
    """
    return {
        "origin": record.origin,
        "method": record.method,
        "path": record.path,
        "headers": _redact_headers(record.headers),
        "body": _redact_body(record.body),
        "status": record.status,
        "time": record.time,
    }
