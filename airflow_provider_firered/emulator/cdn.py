"""The emulated CDN origin: the sample pictures and the jobs' outputs, never behind the key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from airflow_provider_firered.emulator import images as imaging
from airflow_provider_firered.emulator.faults import answer_with_fault
from airflow_provider_firered.emulator.protocol import error_answer, has_key

if TYPE_CHECKING:
    from airflow_provider_firered.emulator.gateway import Handler
    from airflow_provider_firered.emulator.jobs import Jobs
    from airflow_provider_firered.emulator.records import Recorder
    from airflow_provider_firered.emulator.roles import CdnHost


class Cdn:
    """
    The CDN's routes: a request that carries the subscription key is refused and recorded.

    :param emulator: the emulator whose faults apply.
    :param jobs: where the outputs are.
    :param recorder: where every request is recorded.
    """

    def __init__(self, emulator: CdnHost, jobs: Jobs, recorder: Recorder) -> None:
        self._emulator = emulator
        self._jobs = jobs
        self._recorder = recorder

    def app(self) -> web.Application:
        """Return the CDN application: the sample images and the jobs' outputs."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/samples/{name}", self._sample)
        app.router.add_get("/v1/{request_id}/{name}", self._media)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response: web.StreamResponse | None = None
        try:
            if has_key(request.headers):
                response = error_answer(403, "Forbidden", "The CDN does not accept subscription keys.")
                return response

            async def normal() -> web.StreamResponse:
                try:
                    return await handler(request)
                except web.HTTPNotFound:
                    return web.Response(status=404, text="Not Found")

            response = await answer_with_fault(self._emulator.faults.take("cdn"), "cdn", request, normal)
            return response
        finally:
            self._recorder.add("cdn", request, None, response)

    async def _sample(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in imaging.SAMPLES:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=imaging.sample_image(name), content_type="image/png")

    async def _media(self, request: web.Request) -> web.Response:
        stored = self._jobs.outputs.get(f"{request.match_info['request_id']}/{request.match_info['name']}")
        if stored is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=stored[0], content_type=stored[1])
