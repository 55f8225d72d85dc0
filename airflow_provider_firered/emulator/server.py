"""
The emulated FireRed gateway and its CDN: two aiohttp origins on loopback, run in a thread.

:class:`Emulator` holds the settings and the in-process controls; the roles live beside it:
``gateway`` (key, rate limits, submit, status), ``jobs`` (timeline, edits, webhooks), ``cdn``,
``admin`` (the controls over HTTP), ``faults`` (every injected fault), ``records`` (what was seen).
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

from aiohttp import web

from airflow_provider_firered.emulator import images as imaging
from airflow_provider_firered.emulator.admin import add_admin_routes
from airflow_provider_firered.emulator.cdn import Cdn
from airflow_provider_firered.emulator.faults import Fault, FaultBook
from airflow_provider_firered.emulator.gateway import Gateway
from airflow_provider_firered.emulator.jobs import Jobs
from airflow_provider_firered.emulator.records import RecordedRequest, Recorder
from airflow_provider_firered.emulator.validation import PATHS

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = ["Emulator", "RecordedRequest"]

#: The emulator listens on loopback only.
HOST = "127.0.0.1"
# Per-request values are kept on the request object; string keys are fine for this private app.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning)


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
        self.gateway_url = ""
        self.cdn_url = ""
        self.faults = FaultBook()
        self.webhook_deliveries: list[dict[str, Any]] = []
        self._recorder = Recorder()
        self._jobs = Jobs(self, self._recorder)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []

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
        self._jobs.shutdown_pool()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        await self._jobs.open()
        gateway = Gateway(self, self._jobs, self._recorder).app()
        add_admin_routes(gateway, self)
        cdn = Cdn(self, self._jobs, self._recorder).app()
        self.gateway_url = f"http://{HOST}:{await self._serve(gateway, self.port)}"
        self.cdn_url = f"http://{HOST}:{await self._serve(cdn, self.cdn_port)}"

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, HOST, port)
        await site.start()
        self._runners.append(runner)
        return int(runner.addresses[0][1])

    async def _shutdown(self) -> None:
        await self._jobs.close()
        for runner in self._runners:
            await runner.cleanup()

    # -- in-process control ----------------------------------------------------------------------

    @property
    def sample_images(self) -> list[str]:
        """URLs of the sample input pictures (served by the CDN origin)."""
        return [f"{self.cdn_url}/samples/{name}" for name in imaging.SAMPLES]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request seen by both origins, in order (a copy)."""
        return self._recorder.all()

    def submit_attempts(self) -> list[RecordedRequest]:
        """Every POST to a submit path, whatever its answer."""
        return [r for r in self.requests if r.origin == "gateway" and r.method == "POST" and r.path in PATHS]

    def submissions(self, model: str | None = None) -> list[RecordedRequest]:
        """Return the POSTs that created a job (answered 202), optionally for one model."""
        return [
            r for r in self.submit_attempts() if r.status == 202 and (model is None or PATHS[r.path] == model)
        ]

    @property
    def cdn_key_violations(self) -> list[RecordedRequest]:
        """CDN requests that carried the subscription key (there must be none)."""
        return self._recorder.key_violations()

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
        self._jobs.queue_outcomes(status, error, count)

    def job(self, request_id: str) -> dict[str, Any]:
        """Return the status body of a job, as the status endpoint would answer it now."""
        return self._jobs.by_id[request_id].status_body(time.time())

    def reset(self) -> None:
        """Forget records, faults, jobs, outputs and queued outcomes."""
        self._recorder.clear()
        self._jobs.clear()
        self.webhook_deliveries.clear()
        self.faults.clear()
