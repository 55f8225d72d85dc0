"""
Serve the admin API (``/_emulator/...`` on the gateway origin).

The in-process controls over HTTP, for an emulator in another process. It needs no key, and the
records it returns are redacted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from airflow_provider_firered.emulator.faults import Fault
from airflow_provider_firered.emulator.gateway import ADMIN_PREFIX
from airflow_provider_firered.emulator.protocol import error_answer
from airflow_provider_firered.emulator.records import record_json

if TYPE_CHECKING:
    from airflow_provider_firered.emulator.roles import AdminHost

_OK = {"ok": True}


def add_admin_routes(app: web.Application, emulator: AdminHost) -> None:
    """Add the admin routes to the gateway application ``app``."""
    admin = _Admin(emulator)
    app.router.add_get(ADMIN_PREFIX + "requests", admin.requests)
    app.router.add_get(ADMIN_PREFIX + "submissions", admin.submissions)
    app.router.add_post(ADMIN_PREFIX + "faults", admin.add_fault)
    app.router.add_delete(ADMIN_PREFIX + "faults", admin.clear_faults)
    app.router.add_post(ADMIN_PREFIX + "timings", admin.timings)
    app.router.add_post(ADMIN_PREFIX + "outcome", admin.outcome)
    app.router.add_post(ADMIN_PREFIX + "reset", admin.reset)


class _Admin:
    """Each route calls the emulator's in-process control of the same name."""

    def __init__(self, emulator: AdminHost) -> None:
        self._emulator = emulator

    async def requests(self, _request: web.Request) -> web.Response:
        return web.json_response([record_json(r) for r in self._emulator.requests])

    async def submissions(self, _request: web.Request) -> web.Response:
        return web.json_response([record_json(r) for r in self._emulator.submissions()])

    async def add_fault(self, request: web.Request) -> web.Response:
        try:
            self._emulator.inject(Fault(**await request.json()))
        except (TypeError, ValueError) as err:
            return error_answer(400, "Bad fault", str(err))
        return web.json_response(_OK)

    async def clear_faults(self, _request: web.Request) -> web.Response:
        self._emulator.clear_faults()
        return web.json_response(_OK)

    async def timings(self, request: web.Request) -> web.Response:
        data = await request.json()
        emulator = self._emulator
        emulator.set_timings(
            queued_seconds=data.get("queued_seconds"), processing_seconds=data.get("processing_seconds")
        )
        return web.json_response(
            {"queued_seconds": emulator.queued_seconds, "processing_seconds": emulator.processing_seconds}
        )

    async def outcome(self, request: web.Request) -> web.Response:
        data = await request.json()
        try:
            self._emulator.set_next_outcome(
                data["status"], data.get("error", "Emulated failure"), int(data.get("count", 1))
            )
        except (KeyError, ValueError) as err:
            return error_answer(400, "Bad outcome", str(err))
        return web.json_response(_OK)

    async def reset(self, _request: web.Request) -> web.Response:
        self._emulator.reset()
        return web.json_response(_OK)
