"""FireRed triggers in one event loop share one aiohttp session and recent connection lookups."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airflow_provider_firered.emulator import Emulator
from airflow_provider_firered.hooks import loop_shared
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.triggers.firered import FireRedStatusTrigger
from tests.conftest import TEST_KEY, conn_uri_json

V11 = "firered-image-edit-v1-1"


def count_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lookups: list[str] = []
    original = FireRedHook._aresolve

    async def spy(self: FireRedHook) -> Any:
        lookups.append(self.firered_conn_id)
        return await original(self)

    monkeypatch.setattr(FireRedHook, "_aresolve", spy)
    return lookups


async def test_waits_share_one_session_and_one_lookup(
    firered_emulator: Emulator, firered_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    firered_emulator.set_timings(queued_seconds=0.1, processing_seconds=0.5)
    hook = FireRedHook(firered_conn)
    request_ids = [
        hook.submit_edit(V11, f"p{i}", firered_emulator.sample_images[:1]).request_id for i in range(20)
    ]
    lookups = count_lookups(monkeypatch)
    sessions: set[int] = set()
    original = FireRedHook._get_async_session

    def spy(self: FireRedHook) -> Any:
        session = original(self)
        sessions.add(id(session))
        return session

    monkeypatch.setattr(FireRedHook, "_get_async_session", spy)

    async def wait(request_id: str) -> str:
        trigger = FireRedStatusTrigger(request_id, firered_conn, poll_interval=0.05)
        (event,) = [e.payload async for e in trigger.run()]
        return str(event["status"])

    first = FireRedStatusTrigger(request_ids[0], firered_conn, poll_interval=0.05)
    runs = asyncio.gather(*(wait(r) for r in request_ids[1:]))
    assert [e.payload["status"] async for e in first.run()] == ["success"]
    assert await asyncio.wait_for(runs, 30) == ["success"] * 19
    assert len(sessions) == 1
    assert lookups == [firered_conn]  # one lookup for 20 waits
    shared = loop_shared._shared()
    assert (shared.session, shared.users) == (None, 0)  # the last wait closed it


async def test_a_lookup_is_reused_for_a_minute_only(
    firered_emulator: Emulator, firered_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = count_lookups(monkeypatch)
    request_id = (
        FireRedHook(firered_conn).submit_edit(V11, "p", firered_emulator.sample_images[:1]).request_id
    )
    async with FireRedHook(firered_conn) as hook:
        await hook.aget_status(request_id)
    # The key is rotated: waits starting within the minute still use the old (valid) lookup ...
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(firered_emulator.gateway_url, "rotated"))
    async with FireRedHook(firered_conn) as hook:
        assert (await hook.aget_settings()).api_key == TEST_KEY
    assert len(lookups) == 1
    # ... and later ones look the connection up again.
    monkeypatch.setattr(loop_shared, "SETTINGS_TTL_SECONDS", 0.0)
    async with FireRedHook(firered_conn) as hook:
        assert (await hook.aget_settings()).api_key == "rotated"
    assert len(lookups) == 2


async def test_a_hook_outside_async_with_owns_its_session(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    request_id = (
        FireRedHook(firered_conn).submit_edit(V11, "p", firered_emulator.sample_images[:1]).request_id
    )
    async with FireRedHook(firered_conn) as shared_hook:
        await shared_hook.aget_status(request_id)
        own = FireRedHook(firered_conn)
        await own.aget_status(request_id)
        assert own._async_session is not shared_hook._async_session
        await own.aclose()
        assert not shared_hook._async_session.closed  # type: ignore[union-attr]
    assert loop_shared._shared().session is None


def test_each_event_loop_has_its_own_session(firered_emulator: Emulator, firered_conn: str) -> None:
    request_id = (
        FireRedHook(firered_conn).submit_edit(V11, "p", firered_emulator.sample_images[:1]).request_id
    )
    seen: list[Any] = []

    async def poll_once() -> None:
        async with FireRedHook(firered_conn) as hook:
            await hook.aget_status(request_id)
            seen.append(hook._async_session)

    for _ in range(2):
        asyncio.run(poll_once())
    assert seen[0] is not seen[1]
    assert seen[0].closed
    assert seen[1].closed


async def test_a_failed_lookup_is_not_kept(
    firered_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_FIRERED_LATER", raising=False)
    with pytest.raises(Exception, match="firered_later"):
        async with FireRedHook("firered_later") as hook:
            await hook.aget_settings()
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_LATER", conn_uri_json(firered_emulator.gateway_url))
    async with FireRedHook("firered_later") as hook:
        assert (await hook.aget_settings()).api_key == TEST_KEY
