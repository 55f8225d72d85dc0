"""
The emulated FireRed gateway and its CDN: two aiohttp origins on loopback, run in a thread.

Job status is derived from timestamps when it is read, so thousands of waiting jobs cost nothing;
the edit itself (fetch the inputs, render with Pillow) runs once per job in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import threading
import time
import uuid
import warnings
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from airflow_provider_firered.emulator import images as imaging
from airflow_provider_firered.emulator.faults import Fault, FaultBook
from airflow_provider_firered.emulator.validation import MODELS, PATHS, Invalid, validate

KEY_HEADER = "Ocp-Apim-Subscription-Key"
STATUS_PREFIX = "/v2/requests/status/"
# Per-request values are kept on the request object; string keys are fine for this private app.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning)
_NAMESPACE = uuid.UUID("5f0c6c1e-6a44-4d64-9a7b-0f1e2d3c4b5a")


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


@dataclass
class _Job:
    request_id: str
    model: str
    body: dict[str, Any]
    images: list[str]
    created: float
    queued_seconds: float
    processing_seconds: float
    outcome: str = "COMPLETED"
    error: str | None = None
    webhook_url: str | None = None
    webhook_mode: str = "terminal"
    render: asyncio.Task[None] | None = None
    media: list[str] = field(default_factory=list)
    media_type: str | None = None
    refunded: bool = False

    def status_at(self, now: float) -> str:
        if now < self.created + self.queued_seconds:
            return "QUEUED"
        if now < self.created + self.queued_seconds + self.processing_seconds or (
            self.render is not None and not self.render.done()
        ):
            return "PROCESSING"
        return self.outcome


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _error(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status, headers=headers)


class Emulator:
    """
    An offline FireRed gateway for development, tests and demos.

    :param port: gateway port on 127.0.0.1 (0 = a free one).
    :param cdn_port: CDN port (0 = a free one).
    :param keys: accepted subscription keys (None = any non-empty key).
    :param disabled_keys: keys answered with 403.
    :param balance: jobs the wallet can pay for (None = unlimited); ERROR jobs are refunded.
    :param queued_seconds: how long a job stays QUEUED.
    :param processing_seconds: how long a job stays PROCESSING (at least as long as its edit takes).
    :param allow_http_webhooks: accept plain-http webhook URLs on loopback (tests).
    :param job_ttl_seconds: jobs and their outputs are forgotten after this long.
    :param disabled_models: model ids answered with 400 "Model not found".
    :param max_concurrent_jobs: unfinished jobs allowed at once before submits get 429.
    :param max_requests_per_second: gateway requests per second before 429.
    :param duplicate_webhooks: deliver every webhook twice (as network retries may).
    :param render_edits: render every edit with Pillow (the default). False makes jobs cheap for load
        runs and benchmarks: a completed job's output is its first input image, unedited.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        cdn_port: int = 0,
        keys: Collection[str] | None = None,
        disabled_keys: Collection[str] = (),
        balance: int | None = None,
        queued_seconds: float = 0.05,
        processing_seconds: float = 0.2,
        allow_http_webhooks: bool = False,
        job_ttl_seconds: float = 3600,
        disabled_models: Collection[str] = (),
        max_concurrent_jobs: int | None = None,
        max_requests_per_second: float | None = None,
        duplicate_webhooks: bool = False,
        render_edits: bool = True,
        public_host: str = "127.0.0.1",
    ) -> None:
        self.port = port
        self.cdn_port = cdn_port
        self.keys = set(keys) if keys is not None else None
        self.disabled_keys = set(disabled_keys)
        self.balance = balance
        self.queued_seconds = queued_seconds
        self.processing_seconds = processing_seconds
        self.allow_http_webhooks = allow_http_webhooks
        self.job_ttl_seconds = job_ttl_seconds
        self.disabled_models = set(disabled_models)
        self.max_concurrent_jobs = max_concurrent_jobs
        self.max_requests_per_second = max_requests_per_second
        self.duplicate_webhooks = duplicate_webhooks
        self.render_edits = render_edits
        self.host = public_host
        self.gateway_url = ""
        self.cdn_url = ""
        self.faults = FaultBook()
        self.webhook_deliveries: list[dict[str, Any]] = []
        self._records: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._outputs: dict[str, tuple[bytes, str]] = {}
        self._outcomes: list[tuple[str, str]] = []
        self._counter = itertools.count(1)
        self._window: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._client: aiohttp.ClientSession | None = None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="firered-emulator-render")
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Emulator:
        """Start both origins in a daemon thread; return once their ports are bound."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as err:  # reported to the starting thread
                failure.append(err)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="firered-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(30) or failure:
            raise RuntimeError(f"emulator did not start: {failure[0] if failure else 'timeout'}")
        return self

    def stop(self) -> None:
        """Stop both origins and the thread (idempotent)."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        gateway = web.Application(middlewares=[self._gateway_middleware], client_max_size=2 * 1024 * 1024)
        gateway.router.add_post(MODELS["firered-image-edit"]["path"], self._submit)
        gateway.router.add_post(MODELS["firered-image-edit-v1-1"]["path"], self._submit)
        gateway.router.add_get(STATUS_PREFIX + "{request_id}", self._status)
        gateway.router.add_get("/_emulator/requests", self._admin_requests)
        gateway.router.add_get("/_emulator/submissions", self._admin_submissions)
        gateway.router.add_post("/_emulator/faults", self._admin_add_fault)
        gateway.router.add_delete("/_emulator/faults", self._admin_clear_faults)
        gateway.router.add_post("/_emulator/timings", self._admin_timings)
        gateway.router.add_post("/_emulator/outcome", self._admin_outcome)
        gateway.router.add_post("/_emulator/reset", self._admin_reset)
        cdn = web.Application(middlewares=[self._cdn_middleware])
        cdn.router.add_get("/samples/{name}", self._sample)
        cdn.router.add_get("/v1/{request_id}/{name}", self._media)
        self.gateway_url = f"http://{self.host}:{await self._serve(gateway, self.port)}"
        self.cdn_url = f"http://{self.host}:{await self._serve(cdn, self.cdn_port)}"
        self._spawn(self._evict_forever())

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self._runners.append(runner)
        return int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        for runner in self._runners:
            await runner.cleanup()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- in-process control ----------------------------------------------------------------------

    @property
    def sample_images(self) -> list[str]:
        """URLs of the sample input pictures (served by the CDN origin)."""
        return [f"{self.cdn_url}/samples/{name}" for name in imaging.SAMPLES]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request seen by both origins, in order (a copy)."""
        with self._lock:
            return list(self._records)

    def submit_attempts(self) -> list[RecordedRequest]:
        """Every POST to a submit path, whatever its answer."""
        return [r for r in self.requests if r.origin == "gateway" and r.method == "POST" and r.path in PATHS]

    def submissions(self, model: str | None = None) -> list[RecordedRequest]:
        """The POSTs that created a job (answered 202), optionally for one model."""
        return [
            r for r in self.submit_attempts() if r.status == 202 and (model is None or PATHS[r.path] == model)
        ]

    @property
    def cdn_key_violations(self) -> list[RecordedRequest]:
        """CDN requests that carried the subscription key (there must be none)."""
        return [r for r in self.requests if r.origin == "cdn" and _has_key(r.headers)]

    def inject(self, fault: Fault) -> None:
        """Add a fault (see :class:`Fault`)."""
        self.faults.add(fault)

    def clear_faults(self) -> None:
        """Remove every fault."""
        self.faults.clear()

    def set_timings(
        self, *, queued_seconds: float | None = None, processing_seconds: float | None = None
    ) -> None:
        """Change how long new jobs stay QUEUED and PROCESSING."""
        if queued_seconds is not None:
            self.queued_seconds = queued_seconds
        if processing_seconds is not None:
            self.processing_seconds = processing_seconds

    def set_next_outcome(self, status: str, error: str = "Emulated failure", count: int = 1) -> None:
        """Make the next ``count`` jobs end ``FAILED`` or ``ERROR`` with ``error``."""
        if status not in ("FAILED", "ERROR", "COMPLETED"):
            raise ValueError("status must be FAILED, ERROR or COMPLETED")
        with self._lock:
            self._outcomes.extend([(status, error)] * count)

    def job(self, request_id: str) -> dict[str, Any]:
        """The status body of a job, as the status endpoint would answer it now."""
        return self._status_body(self._jobs[request_id], time.time())

    def reset(self) -> None:
        """Forget records, faults, jobs, outputs and queued outcomes."""
        with self._lock:
            self._records.clear()
            self._jobs.clear()
            self._outputs.clear()
            self._outcomes.clear()
            self.webhook_deliveries.clear()
        self.faults.clear()

    # -- gateway ---------------------------------------------------------------------------------

    def _record(self, origin: str, request: web.Request, body: Any, status: int) -> None:
        record = RecordedRequest(
            origin, request.method, request.path, dict(request.headers), body, status, time.time()
        )
        with self._lock:
            self._records.append(record)

    @web.middleware
    async def _gateway_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            return await handler(request)
        body: Any = None
        if request.method == "POST":
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
        target = (
            "submit"
            if request.path in PATHS
            else "status"
            if request.path.startswith(STATUS_PREFIX)
            else "any"
        )
        response: web.StreamResponse | None = None
        try:
            response = await self._answer(request, handler, target, body)
            return response
        finally:
            dropped = response is None or request.get("dropped", False)
            self._record("gateway", request, body, 0 if dropped or response is None else response.status)

    async def _answer(self, request: web.Request, handler: Any, target: str, body: Any) -> web.StreamResponse:
        fault = self.faults.take(target)
        if fault is not None:
            early = await self._apply_fault(request, fault)
            if early is not None:
                return early
            request["fault"] = fault
        auth = self._check_key(request)
        if auth is not None:
            return auth
        if self._rate_limited():
            return _error(
                429,
                "Too Many Requests",
                "Rate limit is exceeded. Try again in 1 seconds.",
                {"Retry-After": "1"},
            )
        request["json"] = body
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _error(404, "Not Found", f"Resource not found: {request.path}")
        except web.HTTPMethodNotAllowed:
            return _error(404, "Not Found", f"Resource not found: {request.method} {request.path}")

    async def _apply_fault(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay_seconds)
            return None
        if fault.kind == "status":
            body = fault.body if fault.body is not None else _default_error(fault.status_code)
            return web.json_response(body, status=fault.status_code, headers=fault.headers)
        if fault.kind == "drop":
            request["dropped"] = True
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
        return None  # the handler applies the kinds that alter a normal answer

    def _check_key(self, request: web.Request) -> web.Response | None:
        key = request.headers.get(KEY_HEADER, "")
        if not key:
            return _error(
                401,
                "Unauthorized",
                "Access denied due to missing subscription key. Make sure to include subscription key "
                "when making requests to an API.",
            )
        if key in self.disabled_keys:
            return _error(403, "Forbidden", "This subscription key is disabled.")
        if self.keys is not None and key not in self.keys:
            return _error(401, "Unauthorized", "Access denied due to invalid subscription key.")
        return None

    def _rate_limited(self) -> bool:
        if self.max_requests_per_second is None:
            return False
        now = time.monotonic()
        self._window = [t for t in self._window if now - t < 1.0]
        if len(self._window) >= self.max_requests_per_second:
            return True
        self._window.append(now)
        return False

    async def _submit(self, request: web.Request) -> web.Response:
        model = PATHS[request.path]
        body = request["json"]
        if model in self.disabled_models:
            return _error(400, "Model not found", f"Model '{model}' not found or is disabled")
        try:
            inputs = validate(model, body)
            webhook_url, webhook_mode = self._webhook(request, body)
        except Invalid as err:
            return _error(400, "Validation error", str(err))
        now = time.time()
        with self._lock:
            unfinished = sum(1 for j in self._jobs.values() if j.status_at(now) in ("QUEUED", "PROCESSING"))
            if self.max_concurrent_jobs is not None and unfinished >= self.max_concurrent_jobs:
                return _error(429, "Too Many Requests", "Too many concurrent jobs.", {"Retry-After": "1"})
            if self.balance is not None and self.balance <= 0:
                return _error(402, "Insufficient Balance", "Your wallet does not have enough balance.")
            if self.balance is not None:
                self.balance -= 1
            outcome, error = self._outcomes.pop(0) if self._outcomes else ("COMPLETED", None)
            request_id = f"{model}_{uuid.uuid5(_NAMESPACE, str(next(self._counter)))}"
            job = _Job(
                request_id,
                model,
                body,
                inputs,
                now,
                self.queued_seconds,
                self.processing_seconds,
                outcome=outcome,
                error=error,
                webhook_url=webhook_url,
                webhook_mode=webhook_mode,
            )
            self._jobs[request_id] = job
        job.render = self._spawn(self._run_job(job))
        polling_url = f"{self.gateway_url}{STATUS_PREFIX}{request_id}"
        fault = request.get("fault")
        if fault is not None and fault.kind == "foreign_polling_url":
            polling_url = f"https://foreign.invalid{STATUS_PREFIX}{request_id}"
        if fault is not None and fault.kind == "missing_fields":
            return web.json_response({"status": "QUEUED"}, status=202)
        return web.json_response(
            {"request_id": request_id, "status": "QUEUED", "polling_url": polling_url}, status=202
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
            self.allow_http_webhooks
            and parts.scheme == "http"
            and parts.hostname in ("127.0.0.1", "localhost")
        )
        if parts.scheme != "https" and not loopback_http:
            raise Invalid("X-Webhook-URL: HTTPS required; plain http:// URLs are rejected")
        return url, mode

    async def _status(self, request: web.Request) -> web.Response:
        job = self._jobs.get(request.match_info["request_id"])
        if job is None:
            return _error(404, "Not Found", f"Request '{request.match_info['request_id']}' not found")
        body = self._status_body(job, time.time())
        fault = request.get("fault")
        if fault is not None and fault.kind == "status_value":
            body["status"] = fault.status_value
        if fault is not None and fault.kind == "missing_fields":
            body = {"request_id": job.request_id}
        if (
            fault is not None
            and fault.kind == "pending_status"
            and body["status"] in ("QUEUED", "PROCESSING")
        ):
            return web.json_response(body, status=fault.status_code)
        return web.json_response(body)

    def _status_body(self, job: _Job, now: float) -> dict[str, Any]:
        status = job.status_at(now)
        terminal = status in ("COMPLETED", "FAILED", "ERROR")
        done_at = job.created + job.queued_seconds + job.processing_seconds
        return {
            "request_id": job.request_id,
            "status": status,
            "model_id": job.model,
            "error": job.error if status in ("FAILED", "ERROR") else None,
            "output": {"media_url": list(job.media), "media_type": job.media_type}
            if status == "COMPLETED"
            else None,
            "created_at": _iso(job.created),
            "updated_at": _iso(min(now, done_at) if not terminal else max(done_at, job.created)),
            "completed_at": _iso(done_at) if terminal else None,
        }

    async def _run_job(self, job: _Job) -> None:
        await asyncio.sleep(job.queued_seconds)
        if job.webhook_mode == "sync":
            self._spawn(self._deliver(job))
        if job.outcome == "COMPLETED" and not self.render_edits:
            job.media, job.media_type = job.images[:1], "image/png"
        elif job.outcome == "COMPLETED":
            try:
                await self._edit(job)
            except Exception as err:  # any input problem fails the job, as the gateway does
                job.outcome, job.error = "FAILED", f"Could not process input image: {err}"
        remaining = job.created + job.queued_seconds + job.processing_seconds - time.time()
        if remaining > 0:
            await asyncio.sleep(remaining)
        if job.outcome == "ERROR" and not job.refunded and self.balance is not None:
            job.refunded = True  # "System error — not charged"
            self.balance += 1
        self._spawn(self._deliver(job))

    async def _edit(self, job: _Job) -> None:
        assert self._client is not None
        sources = []
        for url in job.images:
            try:
                async with self._client.get(url) as response:
                    if response.status != 200:
                        raise ValueError(f"{url} answered HTTP {response.status}")
                    data = await response.read()
            except aiohttp.ClientError as err:
                raise ValueError(f"{url} is unreachable ({type(err).__name__})") from None
            sources.append(data)
        body = job.body
        fmt = body.get("output_format", MODELS[job.model]["default_format"])
        count = body.get("num_images", 1) if job.model == "firered-image-edit-v1-1" else 1
        seed: int = body["seed"] if isinstance(body.get("seed"), int) else 0
        loop = asyncio.get_running_loop()
        quality: int = body.get("output_quality", 95)
        ratio: str | None = body.get("aspect_ratio")
        render = functools.partial(_render_all, sources, body["prompt"], seed, count, fmt, quality, ratio)
        outputs = await loop.run_in_executor(self._pool, render)
        ext = imaging.FORMATS[fmt][2]
        for index, (data, mime) in enumerate(outputs):
            name = f"output_{index}.{ext}" if count > 1 else f"output.{ext}"
            self._outputs[f"{job.request_id}/{name}"] = (data, mime)
            job.media.append(f"{self.cdn_url}/v1/{job.request_id}/{name}")
            job.media_type = mime

    async def _deliver(self, job: _Job) -> None:
        if job.webhook_url is None:
            return
        assert self._client is not None
        payload = self._status_body(job, time.time())
        for attempt in range(2 if self.duplicate_webhooks else 1):
            status = 0
            try:
                async with self._client.post(job.webhook_url, json=payload) as response:
                    status = response.status
            except aiohttp.ClientError:
                pass
            with self._lock:
                self.webhook_deliveries.append(
                    {"url": job.webhook_url, "payload": payload, "attempt": attempt + 1, "status": status}
                )

    async def _evict_forever(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.job_ttl_seconds))
            cutoff = time.time() - self.job_ttl_seconds
            with self._lock:
                for request_id in [r for r, j in self._jobs.items() if j.created < cutoff]:
                    del self._jobs[request_id]
                    for key in [k for k in self._outputs if k.startswith(request_id + "/")]:
                        del self._outputs[key]
                # Keep the record bounded too on long runs.
                del self._records[:-100_000]

    # -- CDN -------------------------------------------------------------------------------------

    @web.middleware
    async def _cdn_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse | None = None
        try:
            if _has_key(dict(request.headers)):
                response = _error(403, "Forbidden", "The CDN does not accept subscription keys.")
                return response
            fault = self.faults.take("cdn")
            if fault is not None:
                response = await self._apply_cdn_fault(request, handler, fault)
                if response is not None:
                    return response
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                response = web.Response(status=404, text="Not Found")
            return response
        finally:
            dropped = response is None or request.get("dropped", False)
            self._record("cdn", request, None, 0 if dropped or response is None else response.status)

    async def _apply_cdn_fault(
        self, request: web.Request, handler: Any, fault: Fault
    ) -> web.StreamResponse | None:
        if fault.kind in ("status", "drop", "delay", "reset_mid_body", "malformed_json"):
            return await self._apply_fault(request, fault)
        if fault.kind == "wrong_content_type":
            return web.Response(status=200, text="<html>Access denied</html>", content_type="text/html")
        if fault.kind == "oversized":
            return web.Response(status=200, body=b"\0" * fault.size_bytes, content_type="image/png")
        if fault.kind == "truncated":
            real = await handler(request)
            data = real.body if isinstance(real, web.Response) and isinstance(real.body, bytes) else b""
            response = web.StreamResponse(status=200, headers={"Content-Type": real.content_type})
            response.content_length = len(data) + 1000
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            if request.transport is not None:
                request.transport.abort()
            return response
        return None

    async def _sample(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in imaging.SAMPLES:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=imaging.sample_image(name), content_type="image/png")

    async def _media(self, request: web.Request) -> web.Response:
        stored = self._outputs.get(f"{request.match_info['request_id']}/{request.match_info['name']}")
        if stored is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=stored[0], content_type=stored[1])

    # -- admin (out-of-process control) ----------------------------------------------------------

    async def _admin_requests(self, request: web.Request) -> web.Response:
        return web.json_response([_record_json(r) for r in self.requests])

    async def _admin_submissions(self, request: web.Request) -> web.Response:
        return web.json_response([_record_json(r) for r in self.submissions()])

    async def _admin_add_fault(self, request: web.Request) -> web.Response:
        try:
            self.inject(Fault(**await request.json()))
        except (TypeError, ValueError) as err:
            return _error(400, "Bad fault", str(err))
        return web.json_response({"ok": True})

    async def _admin_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"ok": True})

    async def _admin_timings(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.set_timings(
            queued_seconds=data.get("queued_seconds"), processing_seconds=data.get("processing_seconds")
        )
        return web.json_response(
            {"queued_seconds": self.queued_seconds, "processing_seconds": self.processing_seconds}
        )

    async def _admin_outcome(self, request: web.Request) -> web.Response:
        data = await request.json()
        try:
            self.set_next_outcome(
                data["status"], data.get("error", "Emulated failure"), int(data.get("count", 1))
            )
        except (KeyError, ValueError) as err:
            return _error(400, "Bad outcome", str(err))
        return web.json_response({"ok": True})

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


def _render_all(
    sources: list[bytes], prompt: str, seed: int, count: int, fmt: str, quality: int, ratio: str | None
) -> list[tuple[bytes, str]]:
    checked = [imaging.check_input(data) for data in sources]
    return [
        imaging.render_edit(
            checked[0], prompt, seed=seed, index=i, output_format=fmt, quality=quality, aspect_ratio=ratio
        )
        for i in range(count)
    ]


def _has_key(headers: dict[str, str]) -> bool:
    return any(name.lower() == KEY_HEADER.lower() for name in headers)


def _default_error(status: int) -> dict[str, str]:
    names = {
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
    name = names.get(status, "Error")
    return {"error": name, "message": f"Emulated {status} {name}"}


#: Header names whose values the admin API never returns: the key and anything else that may be secret.
_SECRET_HEADER_WORDS = ("key", "token", "secret", "auth", "cookie", "password", "signature", "credential")
#: Body fields whose values the admin API never returns.
_SECRET_BODY_WORDS = ("key", "token", "secret", "password", "credential")
#: Stands for a redacted value.
REDACTED = "***"


def _is_secret(name: str, words: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in words)


def _redact_url(url: str) -> str:
    """A URL without its query, fragment or user info, which may carry a token (webhook URLs)."""
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


def _record_json(record: RecordedRequest) -> dict[str, Any]:
    """
    A recorded request for the admin API, secrets redacted: the subscription key and any other
    credential-like header or body field become ``***`` (the name stays, so a test can still see that
    one was sent), and a webhook URL loses its query. ``Emulator.requests`` keeps the raw values for
    in-process tests.
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
