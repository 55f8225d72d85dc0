"""
FireRed triggers in one event loop share one aiohttp session (a bounded pool, no cookies) and recent
connection lookups, which a refused key makes them look up afresh.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.gateway.connection import GatewaySettings
from airflow_provider_firered.gateway.http import PreparedGet
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.triggers.firered import FireRedStatusTrigger
from airflow_provider_firered.utils import loop_shared
from tests.conftest import TEST_KEY, conn_uri_json
from tests.hostile import Answer, HostileServer, Seen

if TYPE_CHECKING:
    from airflow_provider_firered.emulator import Emulator

V11 = "firered-image-edit-v1-1"


def record_sessions(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every aiohttp session a status read goes through, in order."""
    sessions: list[Any] = []
    original = FireRedHook._get_async_session

    def spy(self: FireRedHook) -> Any:
        session = original(self)
        sessions.append(session)
        return session

    monkeypatch.setattr(FireRedHook, "_get_async_session", spy)
    return sessions


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
    firered_emulator.set_timings(queued_seconds=0.1, processing_seconds=0.3)
    hook = FireRedHook(firered_conn)
    request_ids = [
        hook.submit_edit(V11, f"p{i}", firered_emulator.sample_images[:1]).request_id for i in range(20)
    ]
    lookups = count_lookups(monkeypatch)
    sessions = record_sessions(monkeypatch)

    async def wait(request_id: str) -> str:
        trigger = FireRedStatusTrigger(request_id, firered_conn, poll_interval=1)
        (event,) = [e.payload async for e in trigger.run()]
        return str(event["status"])

    first = FireRedStatusTrigger(request_ids[0], firered_conn, poll_interval=1)
    runs = asyncio.gather(*(wait(r) for r in request_ids[1:]))
    assert [e.payload["status"] async for e in first.run()] == ["success"]
    assert await asyncio.wait_for(runs, 30) == ["success"] * 19
    assert len({id(session) for session in sessions}) == 1
    assert lookups == [firered_conn]  # one lookup for 20 waits
    assert sessions[0].closed  # the last wait closed it
    async with FireRedHook(firered_conn) as hook:  # a later wait opens a new one
        assert (await hook.aget_status(request_ids[0])).status.value == "COMPLETED"
    assert sessions[-1] is not sessions[0]
    assert sessions[-1].closed


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
    firered_emulator: Emulator, firered_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = (
        FireRedHook(firered_conn).submit_edit(V11, "p", firered_emulator.sample_images[:1]).request_id
    )
    sessions = record_sessions(monkeypatch)
    async with FireRedHook(firered_conn) as shared_hook:
        await shared_hook.aget_status(request_id)
        own = FireRedHook(firered_conn)
        await own.aget_status(request_id)
        shared, owned = sessions
        assert owned is not shared
        await own.aclose()
        assert owned.closed
        await shared_hook.aget_status(request_id)  # closing its own session left the shared one open
        assert not shared.closed
    assert shared.closed  # the last user gave it back


def test_each_event_loop_has_its_own_session(
    firered_emulator: Emulator, firered_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = (
        FireRedHook(firered_conn).submit_edit(V11, "p", firered_emulator.sample_images[:1]).request_id
    )
    seen = record_sessions(monkeypatch)

    async def poll_once() -> None:
        async with FireRedHook(firered_conn) as hook:
            await hook.aget_status(request_id)

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


async def test_arefresh_settings_looks_the_connection_up_past_the_cache(
    firered_emulator: Emulator, firered_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = count_lookups(monkeypatch)
    async with FireRedHook(firered_conn) as hook:
        assert (await hook.aget_settings()).api_key == TEST_KEY
        monkeypatch.setenv(
            "AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(firered_emulator.gateway_url, "rotated")
        )
        # Within the minute a new wait still gets the cached lookup ...
        async with FireRedHook(firered_conn) as other:
            assert (await other.aget_settings()).api_key == TEST_KEY
        # ... but a refresh looks the connection up again, whatever the cache holds,
        refreshed = await hook.arefresh_settings()
        assert refreshed.api_key == "rotated"
        assert hook.settings is refreshed
    # and waits starting afterwards get the new settings too.
    async with FireRedHook(firered_conn) as later:
        assert (await later.aget_settings()).api_key == "rotated"
    assert len(lookups) == 2


async def test_waits_refused_together_share_one_fresh_lookup(
    firered_emulator: Emulator, firered_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = count_lookups(monkeypatch)
    hooks = [FireRedHook(firered_conn) for _ in range(10)]
    for hook in hooks:
        await hook.aget_settings()
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(firered_emulator.gateway_url, "rotated"))
    fresh = await asyncio.gather(*(hook.arefresh_settings() for hook in hooks))
    assert {s.api_key for s in fresh} == {"rotated"}
    assert len(lookups) == 2  # the first lookup, then one refresh for the ten waits


async def test_a_cookie_set_by_one_gateway_is_sent_to_no_one(monkeypatch: pytest.MonkeyPatch) -> None:
    rid = "firered-image-edit-v1-1_cookie"
    body = json.dumps({"request_id": rid, "status": "PROCESSING"}).encode()
    setter, other = HostileServer().start(), HostileServer().start()
    try:
        cookie = {"Set-Cookie": "session=stolen; Path=/", "Content-Type": "application/json"}
        setter.route("/", Answer(200, cookie, body))
        other.route("/", Answer(200, {"Content-Type": "application/json"}, body))
        # "localhost", not an IP address: aiohttp's default jar keeps cookies only for host names,
        # and a cookie ignores ports, so both gateways are the same cookie host.
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_A", conn_uri_json(f"http://localhost:{setter.port}"))
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_B", conn_uri_json(f"http://localhost:{other.port}"))
        sessions = record_sessions(monkeypatch)
        async with FireRedHook("firered_a") as first, FireRedHook("firered_b") as second:
            await first.aget_status(rid)
            await second.aget_status(rid)
            await first.aget_status(rid)
        assert sessions[0] is sessions[1] is sessions[2]  # one shared session
        own = FireRedHook("firered_b")  # a hook outside ``async with`` has its own session
        await own.aget_status(rid)
        await own.aclose()
        seen = setter.seen + other.seen
        assert len(seen) == 4
        assert [s.headers.get("Cookie") for s in seen] == [None] * 4
    finally:
        setter.stop()
        other.stop()


async def test_the_shared_pool_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loop_shared.POOL_LIMIT <= 256  # well under a common limit of 1,024 open files
    rid = "firered-image-edit-v1-1_pool"
    body = json.dumps({"request_id": rid, "status": "PROCESSING"}).encode()
    in_flight = [0, 0]  # now, most
    lock = threading.Lock()

    def slow(_seen: Seen) -> Answer:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        time.sleep(0.3)
        with lock:
            in_flight[0] -= 1
        return Answer(200, {"Content-Type": "application/json"}, body)

    server = HostileServer().start()
    try:
        server.route("/", slow)
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(server.url))
        monkeypatch.setattr(loop_shared, "POOL_LIMIT", 4)
        hooks = [FireRedHook() for _ in range(12)]
        for hook in hooks:
            await hook.__aenter__()
        try:
            results = await asyncio.wait_for(asyncio.gather(*(h.aget_status(rid) for h in hooks)), 20)
        finally:
            for hook in hooks:
                await hook.__aexit__(None, None, None)
    finally:
        server.stop()
    assert len(results) == 12
    assert in_flight[1] == 4  # twelve waits, four sockets: the others queued for one


async def test_a_hook_reads_each_request_it_is_asked_for(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    """A wait builds its status GET once; a hook asked for another request builds that one's."""
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=0)
    hook = FireRedHook(firered_conn)
    done = hook.submit_edit(V11, "p", firered_emulator.sample_images[:1]).request_id
    firered_emulator.set_next_outcome("FAILED", "NSFW content")
    failed = hook.submit_edit(V11, "p", firered_emulator.sample_images[:1]).request_id
    await asyncio.sleep(0.3)  # both jobs end
    async with FireRedHook(firered_conn) as reader:
        results = [await reader.aget_status(rid) for rid in (done, failed, done, failed)]
    assert [(r.request_id, r.status.value) for r in results] == [
        (done, "COMPLETED"),
        (failed, "FAILED"),
        (done, "COMPLETED"),
        (failed, "FAILED"),
    ]
    paths = [r.path for r in firered_emulator.requests if "/status/" in r.path]
    assert [p.rsplit("/", 1)[1] for p in paths] == [done, failed, done, failed]


async def test_a_wait_reads_the_moved_gateway_after_a_fresh_lookup(
    firered_emulator: Emulator, firered_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prepared status GET follows the settings: a lookup afresh sends the next read to the new host."""
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=30)
    request_id = (
        FireRedHook(firered_conn).submit_edit(V11, "p", firered_emulator.sample_images[:1]).request_id
    )
    moved = HostileServer().start()
    try:
        moved.route("/", Answer(200, {"Content-Type": "application/json"}, b'{"status": "PROCESSING"}'))
        async with FireRedHook(firered_conn) as hook:
            assert (await hook.aget_status(request_id)).status.value == "PROCESSING"
            monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(moved.url, "moved-key"))
            await hook.arefresh_settings()
            assert (await hook.aget_status(request_id)).status.value == "PROCESSING"
    finally:
        moved.stop()
    assert [(s.path, s.headers.get("Ocp-Apim-Subscription-Key")) for s in moved.seen] == [
        (f"/v2/requests/status/{request_id}", "moved-key")
    ]
    assert len([r for r in firered_emulator.requests if "/status/" in r.path]) == 1


def test_a_prepared_status_get_does_not_show_the_key() -> None:
    settings = GatewaySettings(base_url="http://127.0.0.1:1", api_key="very-secret-key")
    prepared = PreparedGet.build(settings, "/v2/requests/status/firered-image-edit-v1-1_x")
    assert prepared.headers["Ocp-Apim-Subscription-Key"] == "very-secret-key"
    assert str(prepared.url) == "http://127.0.0.1:1/v2/requests/status/firered-image-edit-v1-1_x"
    assert "very-secret-key" not in repr(prepared)
