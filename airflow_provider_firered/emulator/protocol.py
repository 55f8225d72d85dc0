"""The gateway's wire conventions that every origin of the emulator shares."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Mapping

KEY_HEADER = "Ocp-Apim-Subscription-Key"
STATUS_PREFIX = "/v2/requests/status/"
UNFINISHED = ("QUEUED", "PROCESSING")
TERMINAL = ("COMPLETED", "FAILED", "ERROR")


def error_answer(
    status: int, error: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Answer with the gateway's documented error body: ``{"error": ..., "message": ...}``."""
    return web.json_response({"error": error, "message": message}, status=status, headers=headers)


def has_key(headers: Mapping[str, str]) -> bool:
    """Whether ``headers`` carry the subscription key (any spelling of the header name)."""
    return any(name.lower() == KEY_HEADER.lower() for name in headers)


def iso(ts: float) -> str:
    """Format ``ts`` as the gateway writes a UTC timestamp: milliseconds and a ``Z``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
