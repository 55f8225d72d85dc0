"""
The emulator's jobs: a timeline computed from timestamps, the edit each runs once, its webhooks.

Job status is derived from timestamps when it is read, so thousands of waiting jobs cost nothing;
the edit itself (fetch the inputs, render with Pillow) runs once per job in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from airflow_provider_firered.emulator import images as imaging
from airflow_provider_firered.emulator.protocol import TERMINAL, UNFINISHED, iso
from airflow_provider_firered.emulator.validation import MODELS

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from airflow_provider_firered.emulator.records import Recorder
    from airflow_provider_firered.emulator.roles import JobsHost

_NAMESPACE = uuid.UUID("5f0c6c1e-6a44-4d64-9a7b-0f1e2d3c4b5a")


@dataclass
class Job:
    """One accepted edit and the timings it was created with."""

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
        """Return the job's status at ``now``: QUEUED, PROCESSING, then its outcome once rendered."""
        if now < self.created + self.queued_seconds:
            return "QUEUED"
        if now < self.created + self.queued_seconds + self.processing_seconds or (
            self.render is not None and not self.render.done()
        ):
            return "PROCESSING"
        return self.outcome

    def status_body(self, now: float) -> dict[str, Any]:
        """Return the status endpoint's answer for this job at ``now``."""
        status = self.status_at(now)
        terminal = status in TERMINAL
        done_at = self.created + self.queued_seconds + self.processing_seconds
        return {
            "request_id": self.request_id,
            "status": status,
            "model_id": self.model,
            "error": self.error if status in ("FAILED", "ERROR") else None,
            "output": {"media_url": list(self.media), "media_type": self.media_type}
            if status == "COMPLETED"
            else None,
            "created_at": iso(self.created),
            "updated_at": iso(min(now, done_at) if not terminal else max(done_at, self.created)),
            "completed_at": iso(done_at) if terminal else None,
        }


class Jobs:
    """
    Every job the gateway accepted and the outputs the CDN serves, with the background work they need.

    :param emulator: the emulator whose settings (timings, balance, rendering, webhooks) apply.
    :param recorder: the request record, trimmed with the jobs on long runs.
    """

    def __init__(self, emulator: JobsHost, recorder: Recorder) -> None:
        self._emulator = emulator
        self._recorder = recorder
        #: Guards the jobs, the outputs and the queued outcomes; submit holds it to admit a job.
        self.lock = threading.Lock()
        self.by_id: dict[str, Job] = {}
        self.outputs: dict[str, tuple[bytes, str]] = {}
        self._outcomes: list[tuple[str, str]] = []
        self._counter = itertools.count(1)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="firered-emulator-render")
        self._client: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle (on the emulator's loop) ---------------------------------------------------------

    async def open(self) -> None:
        """Open the client that calls webhooks and start evicting old jobs (on the emulator's loop)."""
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._spawn(self._evict_forever())

    async def close(self) -> None:
        """Cancel the renders and the eviction, and close the webhook client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    def shutdown_pool(self) -> None:
        """Stop the render threads without waiting for the renders in progress."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- bookkeeping ---------------------------------------------------------------------------------

    def queue_outcomes(self, status: str, error: str, count: int) -> None:
        """Make the next ``count`` jobs end ``status`` with ``error``."""
        with self.lock:
            self._outcomes.extend([(status, error)] * count)

    def unfinished(self, now: float) -> int:
        """Count the jobs still QUEUED or PROCESSING (call with ``lock`` held)."""
        return sum(1 for j in self.by_id.values() if j.status_at(now) in UNFINISHED)

    def create(
        self, model: str, body: dict[str, Any], images: list[str], webhook_url: str | None, webhook_mode: str
    ) -> Job:
        """Create a job with the next queued outcome (call with ``lock`` held); :meth:`start` runs it."""
        outcome, error = self._outcomes.pop(0) if self._outcomes else ("COMPLETED", None)
        request_id = f"{model}_{uuid.uuid5(_NAMESPACE, str(next(self._counter)))}"
        job = Job(
            request_id,
            model,
            body,
            images,
            time.time(),
            self._emulator.queued_seconds,
            self._emulator.processing_seconds,
            outcome=outcome,
            error=error,
            webhook_url=webhook_url,
            webhook_mode=webhook_mode,
        )
        self.by_id[request_id] = job
        return job

    def start(self, job: Job) -> None:
        """Run ``job`` in the background: its timings, its output and its webhook."""
        job.render = self._spawn(self._run(job))

    def clear(self) -> None:
        """Forget every job, output and queued outcome."""
        with self.lock:
            self.by_id.clear()
            self.outputs.clear()
            self._outcomes.clear()

    # -- background work -----------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        await asyncio.sleep(job.queued_seconds)
        if job.webhook_mode == "sync":
            self._spawn(self._deliver(job))
        if job.outcome == "COMPLETED" and not self._emulator.render_edits:
            job.media, job.media_type = job.images[:1], "image/png"
        elif job.outcome == "COMPLETED":
            try:
                await self._edit(job)
            except Exception as err:  # any input problem fails the job, as the gateway does
                job.outcome, job.error = "FAILED", f"Could not process input image: {err}"
        remaining = job.created + job.queued_seconds + job.processing_seconds - time.time()
        if remaining > 0:
            await asyncio.sleep(remaining)
        if job.outcome == "ERROR" and not job.refunded and self._emulator.balance is not None:
            job.refunded = True  # "System error — not charged"
            self._emulator.balance += 1
        self._spawn(self._deliver(job))

    async def _fetch(self, url: str) -> bytes:
        assert self._client is not None
        try:
            async with self._client.get(url) as response:
                if response.status != 200:
                    raise ValueError(f"{url} answered HTTP {response.status}")
                return await response.read()
        except aiohttp.ClientError as err:
            raise ValueError(f"{url} is unreachable ({type(err).__name__})") from None

    async def _edit(self, job: Job) -> None:
        sources = [await self._fetch(url) for url in job.images]
        body = job.body
        fmt = body.get("output_format", MODELS[job.model]["default_format"])
        count = body.get("num_images", 1) if job.model == "firered-image-edit-v1-1" else 1
        seed: int = body["seed"] if isinstance(body.get("seed"), int) else 0
        quality: int = body.get("output_quality", 95)
        ratio: str | None = body.get("aspect_ratio")
        render = functools.partial(_render_all, sources, body["prompt"], seed, count, fmt, quality, ratio)
        outputs = await asyncio.get_running_loop().run_in_executor(self._pool, render)
        ext = imaging.FORMATS[fmt][2]
        for index, (data, mime) in enumerate(outputs):
            name = f"output_{index}.{ext}" if count > 1 else f"output.{ext}"
            self.outputs[f"{job.request_id}/{name}"] = (data, mime)
            job.media.append(f"{self._emulator.cdn_url}/v1/{job.request_id}/{name}")
            job.media_type = mime

    async def _deliver(self, job: Job) -> None:
        if job.webhook_url is None:
            return
        assert self._client is not None
        payload = job.status_body(time.time())
        for attempt in range(2 if self._emulator.duplicate_webhooks else 1):
            status = 0
            try:
                async with self._client.post(job.webhook_url, json=payload) as response:
                    status = response.status
            except aiohttp.ClientError:
                pass
            self._emulator.webhook_deliveries.append(
                {"url": job.webhook_url, "payload": payload, "attempt": attempt + 1, "status": status}
            )

    async def _evict_forever(self) -> None:
        while True:
            ttl = self._emulator.job_ttl_seconds
            await asyncio.sleep(min(60.0, ttl))
            cutoff = time.time() - ttl
            with self.lock:
                for request_id in [r for r, j in self.by_id.items() if j.created < cutoff]:
                    del self.by_id[request_id]
                    for key in [k for k in self.outputs if k.startswith(request_id + "/")]:
                        del self.outputs[key]
            self._recorder.trim()


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
