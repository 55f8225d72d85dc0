"""
Injectable faults: what the emulator does instead of (or on top of) a normal answer.

Every kind is applied here, by :func:`answer_with_fault`, for the gateway and the CDN alike; the
origins only pick the fault that matches a request and say how to give the normal answer.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from airflow_provider_firered.emulator.protocol import STATUS_PREFIX, UNFINISHED

TARGETS = ("submit", "status", "cdn", "any")
KINDS = (
    "status",  # answer status_code with body/headers
    "drop",  # close the connection without an answer
    "reset_mid_body",  # send headers and half a body, then abort
    "delay",  # wait delay_seconds, then answer normally
    "malformed_json",  # a 2xx with a body that is not JSON
    "missing_fields",  # valid JSON without the documented fields
    "status_value",  # the status endpoint reports status_value
    "pending_status",  # the status endpoint answers status_code while the job is unfinished
    "foreign_polling_url",  # the submit answer's polling_url is on another host
    "wrong_content_type",  # CDN answers text/html
    "truncated",  # CDN announces more bytes than it sends
    "oversized",  # CDN sends size_bytes bytes
)


@dataclass
class Fault:
    """
    One fault to inject.

    :param target: which requests it applies to: ``submit``, ``status``, ``cdn`` or ``any``.
    :param kind: what happens (see ``KINDS``).
    :param status_code: the HTTP status for ``kind="status"`` and ``kind="pending_status"``.
    :param body: the JSON body for ``kind="status"`` (a documented error body when None).
    :param headers: extra answer headers (``Retry-After``, ``Location``, ...).
    :param delay_seconds: the wait for ``kind="delay"``.
    :param status_value: the reported status for ``kind="status_value"``.
    :param size_bytes: the body size for ``kind="oversized"``.
    :param count: apply to the next N matching requests (None: no count limit).
    :param fraction: apply to this fraction of matching requests instead (seeded, deterministic).
    """

    target: str = "any"
    kind: str = "status"
    status_code: int = 500
    body: Any = None
    headers: dict[str, str] | None = None
    delay_seconds: float = 0.0
    status_value: str = ""
    size_bytes: int = 0
    count: int | None = 1
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.fraction is not None:
            self.count = None


class FaultBook:
    """Thread-safe list of active faults; ``take`` consumes the first one that matches."""

    def __init__(self, seed: int = 1234) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def add(self, fault: Fault) -> None:
        """Inject ``fault``; faults are matched in the order they were added."""
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def take(self, target: str) -> Fault | None:
        """Return the fault to apply to a request of ``target``, if any, and count it used."""
        if not self._faults:  # the hot path: no lock when nothing is injected
            return None
        with self._lock:
            for fault in self._faults:
                if fault.target not in (target, "any"):
                    continue
                if fault.fraction is not None:
                    if self._rng.random() < fault.fraction:
                        return fault
                    continue
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                return fault
        return None


#: Gives the answer the origin would give without a fault.
NormalAnswer = Callable[[], Awaitable[web.StreamResponse]]

_ERROR_NAMES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Insufficient Balance",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _default_error(status: int) -> dict[str, str]:
    name = _ERROR_NAMES.get(status, "Error")
    return {"error": name, "message": f"Emulated {status} {name}"}


async def answer_with_fault(
    fault: Fault | None, target: str, request: web.Request, normal: NormalAnswer
) -> web.StreamResponse:
    """
    Answer ``request`` with ``fault`` applied.

    Kinds that replace the answer (``status``, ``drop``, ``reset_mid_body``, ``malformed_json`` and the
    CDN's ``wrong_content_type`` and ``oversized``) never call ``normal``, so they come before the
    key check and the rate limit, as a failing proxy in front of the gateway would. Kinds that alter
    an answer apply to the requests they make sense for and leave every other answer as it is.

    :param target: what the request is: ``submit``, ``status``, ``cdn`` or ``any`` (another path).
    :param normal: gives the answer without a fault (the key check, the handler, ...).
    """
    if fault is None:
        return await normal()
    if fault.kind == "delay":
        await asyncio.sleep(fault.delay_seconds)
        return await normal()
    replaced = await _replace(fault, request)
    if replaced is not None:
        return replaced
    if target == "cdn":
        return await _cdn_answer(fault, request, normal)
    return _alter(fault, target, await normal())


async def _replace(fault: Fault, request: web.Request) -> web.StreamResponse | None:
    """Return the answer that replaces the normal one on every origin, if ``fault`` is of such a kind."""
    if fault.kind == "status":
        body = fault.body if fault.body is not None else _default_error(fault.status_code)
        return web.json_response(body, status=fault.status_code, headers=fault.headers)
    if fault.kind == "drop":
        request["dropped"] = True  # recorded with status 0
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)
    if fault.kind == "reset_mid_body":
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = 200
        await response.prepare(request)
        await response.write(b'{"request_id": "')
        if request.transport is not None:
            request.transport.abort()
        return response
    if fault.kind == "malformed_json":
        status = 202 if request.method == "POST" else 200
        return web.Response(
            status=status, text='{"request_id": "x", "status": ', content_type="application/json"
        )
    return None


async def _cdn_answer(fault: Fault, request: web.Request, normal: NormalAnswer) -> web.StreamResponse:
    """Apply the CDN's own kinds: a wrong media type, too many bytes, fewer bytes than announced."""
    if fault.kind == "wrong_content_type":
        return web.Response(status=200, text="<html>Access denied</html>", content_type="text/html")
    if fault.kind == "oversized":
        return web.Response(status=200, body=b"\0" * fault.size_bytes, content_type="image/png")
    real = await normal()
    if fault.kind != "truncated":
        return real
    data = real.body if isinstance(real, web.Response) and isinstance(real.body, bytes) else b""
    response = web.StreamResponse(status=200, headers={"Content-Type": real.content_type})
    response.content_length = len(data) + 1000
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    if request.transport is not None:
        request.transport.abort()
    return response


def _alter(fault: Fault, target: str, answer: web.StreamResponse) -> web.StreamResponse:
    """Apply the gateway's kinds that bend a successful submit (202) or status (200) answer."""
    if not isinstance(answer, web.Response) or answer.status not in (200, 202):
        return answer
    if target == "submit" and answer.status == 202:
        body = json.loads(answer.text or "null")
        if fault.kind == "foreign_polling_url":
            polling_url = f"https://foreign.invalid{STATUS_PREFIX}{body['request_id']}"
            return web.json_response({**body, "polling_url": polling_url}, status=202)
        if fault.kind == "missing_fields":
            return web.json_response({"status": "QUEUED"}, status=202)
    if target == "status" and answer.status == 200:
        body = json.loads(answer.text or "null")
        if fault.kind == "status_value":
            return web.json_response({**body, "status": fault.status_value})
        if fault.kind == "missing_fields":
            return web.json_response({"request_id": body["request_id"]})
        if fault.kind == "pending_status" and body["status"] in UNFINISHED:
            return web.json_response(body, status=fault.status_code)
    return answer
