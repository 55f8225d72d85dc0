"""
Emulate the gateway origin: the key check, the rate limits, both submit endpoints and the status endpoint.

Each request is recorded, and may meet an injected fault before anything else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from airflow_provider_firered.emulator.faults import answer_with_fault
from airflow_provider_firered.emulator.protocol import KEY_HEADER, STATUS_PREFIX, error_answer
from airflow_provider_firered.emulator.validation import MODELS, PATHS, Invalid, validate

if TYPE_CHECKING:
    from airflow_provider_firered.emulator.jobs import Jobs
    from airflow_provider_firered.emulator.records import Recorder
    from airflow_provider_firered.emulator.roles import GatewayHost

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The path prefix of the admin API, which is neither recorded nor faulted nor keyed.
ADMIN_PREFIX = "/_emulator/"


class Gateway:
    """
    The gateway's routes and the checks in front of them.

    :param emulator: the emulator whose settings (keys, limits, balance, models) apply.
    :param jobs: where accepted jobs go.
    :param recorder: where every request is recorded.
    """

    def __init__(self, emulator: GatewayHost, jobs: Jobs, recorder: Recorder) -> None:
        self._emulator = emulator
        self._jobs = jobs
        self._recorder = recorder
        self._window: list[float] = []

    def app(self) -> web.Application:
        """Return the gateway application (the admin API adds its routes to it)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=2 * 1024 * 1024)
        for spec in MODELS.values():
            app.router.add_post(spec["path"], self._submit)
        app.router.add_get(STATUS_PREFIX + "{request_id}", self._status)
        return app

    # -- in front of every route -------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIX):
            return await handler(request)
        body = await _read_body(request)
        target = (
            "submit"
            if request.path in PATHS
            else "status"
            if request.path.startswith(STATUS_PREFIX)
            else "any"
        )
        response: web.StreamResponse | None = None
        try:
            fault = self._emulator.faults.take(target)
            response = await answer_with_fault(
                fault, target, request, lambda: self._checked(request, handler, body)
            )
            return response
        finally:
            self._recorder.add("gateway", request, body, response)

    async def _checked(self, request: web.Request, handler: Handler, body: Any) -> web.StreamResponse:
        """Check the key, then the rate limit, then route (an unknown route is a JSON 404)."""
        refused = self._check_key(request)
        if refused is not None:
            return refused
        if self._rate_limited():
            return error_answer(
                429,
                "Too Many Requests",
                "Rate limit is exceeded. Try again in 1 seconds.",
                {"Retry-After": "1"},
            )
        request["json"] = body
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return error_answer(404, "Not Found", f"Resource not found: {request.path}")
        except web.HTTPMethodNotAllowed:
            return error_answer(404, "Not Found", f"Resource not found: {request.method} {request.path}")

    def _check_key(self, request: web.Request) -> web.Response | None:
        key = request.headers.get(KEY_HEADER, "")
        if not key:
            return error_answer(
                401,
                "Unauthorized",
                "Access denied due to missing subscription key. Make sure to include subscription key "
                "when making requests to an API.",
            )
        if key in self._emulator.disabled_keys:
            return error_answer(403, "Forbidden", "This subscription key is disabled.")
        keys = self._emulator.keys
        if keys is not None and key not in keys:
            return error_answer(401, "Unauthorized", "Access denied due to invalid subscription key.")
        return None

    def _rate_limited(self) -> bool:
        limit = self._emulator.max_requests_per_second
        if limit is None:
            return False
        now = time.monotonic()
        self._window = [t for t in self._window if now - t < 1.0]
        if len(self._window) >= limit:
            return True
        self._window.append(now)
        return False

    # -- routes --------------------------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.Response:
        emulator = self._emulator
        model = PATHS[request.path]
        body = request["json"]
        if model in emulator.disabled_models:
            return error_answer(400, "Model not found", f"Model '{model}' not found or is disabled")
        try:
            inputs = validate(model, body)
            webhook_url, webhook_mode = self._webhook(request, body)
        except Invalid as err:
            return error_answer(400, "Validation error", str(err))
        with self._jobs.lock:
            limit = emulator.max_concurrent_jobs
            if limit is not None and self._jobs.unfinished(time.time()) >= limit:
                return error_answer(
                    429, "Too Many Requests", "Too many concurrent jobs.", {"Retry-After": "1"}
                )
            if emulator.balance is not None and emulator.balance <= 0:
                return error_answer(402, "Insufficient Balance", "Your wallet does not have enough balance.")
            if emulator.balance is not None:
                emulator.balance -= 1
            job = self._jobs.create(model, body, inputs, webhook_url, webhook_mode)
        self._jobs.start(job)
        polling_url = f"{emulator.gateway_url}{STATUS_PREFIX}{job.request_id}"
        return web.json_response(
            {"request_id": job.request_id, "status": "QUEUED", "polling_url": polling_url}, status=202
        )

    def _webhook(self, request: web.Request, body: dict[str, Any]) -> tuple[str | None, str]:
        url = request.headers.get("X-Webhook-URL") or body.get("webhook")
        mode = request.headers.get("X-Webhook-Mode", "terminal")
        if mode not in ("terminal", "sync"):
            raise Invalid("X-Webhook-Mode: must be terminal or sync")
        if url is None:
            return None, mode
        parts = urlsplit(url)
        loopback_http = (
            self._emulator.allow_http_webhooks
            and parts.scheme == "http"
            and parts.hostname in ("127.0.0.1", "localhost")
        )
        if parts.scheme != "https" and not loopback_http:
            raise Invalid("X-Webhook-URL: HTTPS required; plain http:// URLs are rejected")
        return url, mode

    async def _status(self, request: web.Request) -> web.Response:
        request_id = request.match_info["request_id"]
        job = self._jobs.by_id.get(request_id)
        if job is None:
            return error_answer(404, "Not Found", f"Request '{request_id}' not found")
        return web.json_response(job.status_body(time.time()))


def _target(path: str) -> str:
    """Name what a request is, for the faults: ``submit``, ``status`` or ``any`` (another path)."""
    if path in PATHS:
        return "submit"
    return "status" if path.startswith(STATUS_PREFIX) else "any"


async def _read_body(request: web.Request) -> Any:
    """Read a POST's JSON body (its text when it is not JSON); None for other methods."""
    if request.method != "POST":
        return None
    raw = await request.read()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")
