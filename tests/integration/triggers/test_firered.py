"""FireRedStatusTrigger run directly in an event loop against the emulator."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.emulator import Emulator, Fault
from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.triggers.firered import FireRedStatusTrigger
from airflow_provider_firered.triggers.polling import DEFAULT_MAX_WAIT_SECONDS
from tests.conftest import TEST_KEY, conn_uri_json

if TYPE_CHECKING:
    from airflow.triggers.base import BaseTrigger

V11 = "firered-image-edit-v1-1"


def submit(emulator: Emulator, conn_id: str) -> str:
    return FireRedHook(conn_id).submit_edit(V11, "x", emulator.sample_images[:1]).request_id


async def events(trigger: BaseTrigger, limit: float = 20) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return await asyncio.wait_for(collect(), limit)


async def test_success(firered_emulator: Emulator, firered_conn: str) -> None:
    request_id = submit(firered_emulator, firered_conn)
    (event,) = await events(FireRedStatusTrigger(request_id, firered_conn, poll_interval=1))
    # The wire keys of a success; "duration" as the gateway's answer gives both times.
    assert set(event) == {"status", "request_id", "result", "duration"}
    assert event["status"] == "success"
    assert event["result"]["status"] == "COMPLETED"
    assert event["result"]["media_urls"]
    assert firered_emulator.submit_attempts()[0].path.startswith("/firered-image-edit-v1-1/")
    assert len(firered_emulator.submit_attempts()) == 1  # the trigger never posts


@pytest.mark.parametrize("outcome", ["FAILED", "ERROR"])
async def test_failed_and_error(firered_emulator: Emulator, firered_conn: str, outcome: str) -> None:
    firered_emulator.set_next_outcome(outcome, "went wrong")
    request_id = submit(firered_emulator, firered_conn)
    (event,) = await events(FireRedStatusTrigger(request_id, firered_conn, poll_interval=1))
    assert (event["status"], event["message"], event["request_id"]) == (
        outcome.lower(),
        "went wrong",
        request_id,
    )


async def test_deadline_is_wall_clock(firered_emulator: Emulator, firered_conn: str) -> None:
    firered_emulator.set_timings(processing_seconds=30)
    request_id = submit(firered_emulator, firered_conn)
    # A deadline already in the past (as after a long triggerer outage) ends the wait at once.
    (event,) = await events(FireRedStatusTrigger(request_id, firered_conn, 1, deadline=time.time() - 1))
    assert event["status"] == "timeout"
    assert event["last_status"] in ("QUEUED", "PROCESSING")
    (event,) = await events(FireRedStatusTrigger(request_id, firered_conn, 1, deadline=time.time() + 0.3))
    assert event["status"] == "timeout"


async def test_429_storm_and_500s_and_drops_recover(
    firered_emulator: Emulator, firered_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = conn_uri_json(firered_emulator.gateway_url, retry_max_attempts=10)
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn)
    request_id = submit(firered_emulator, firered_conn)
    firered_emulator.inject(
        Fault(target="status", kind="status", status_code=429, headers={"Retry-After": "0"}, count=3)
    )
    firered_emulator.inject(Fault(target="status", kind="status", status_code=500, fraction=0.3))
    firered_emulator.inject(Fault(target="status", kind="drop", count=2))
    (event,) = await events(FireRedStatusTrigger(request_id, firered_conn, poll_interval=1))
    assert event["status"] == "success"
    statuses = [r.status for r in firered_emulator.requests if r.path.startswith("/v2/requests/status/")]
    assert 429 in statuses
    assert 0 in statuses


async def test_exhausted_retries_keep_waiting_until_the_job_ends(
    firered_emulator: Emulator,
    firered_conn: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    request_id = submit(firered_emulator, firered_conn)
    # More 503s than one read's retry budget (4 attempts on the test connection): the wait goes on.
    firered_emulator.inject(Fault(target="status", kind="status", status_code=503, count=10))
    (event,) = await events(FireRedStatusTrigger(request_id, firered_conn, poll_interval=1))
    assert event["status"] == "success"
    statuses = [r.status for r in firered_emulator.requests if r.path.startswith("/v2/requests/status/")]
    assert statuses[:10] == [503] * 10
    # Airflow 3.3 routes trigger logs through structlog to stdout, older versions through logging.
    assert "unavailable, still waiting" in caplog.text + capfd.readouterr().out


async def test_outage_until_the_deadline_is_a_timeout_naming_the_error(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    request_id = submit(firered_emulator, firered_conn)
    firered_emulator.inject(Fault(target="status", kind="status", status_code=503, count=1000))
    trigger = FireRedStatusTrigger(request_id, firered_conn, poll_interval=1, deadline=time.time() + 1.0)
    (event,) = await events(trigger)
    assert event["status"] == "timeout"
    assert "HTTP 503" in event["last_status"]


async def test_slow_reads_do_not_push_the_polls_later(firered_emulator: Emulator, firered_conn: str) -> None:
    # Each read takes 0.15 s, more than half the 0.1 s grid of a 1 s interval: planned from the
    # previous read's end, every poll would slip 0.2 s and the triggers of one loop would pile up.
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=3.5)
    request_id = submit(firered_emulator, firered_conn)
    firered_emulator.inject(Fault(target="status", kind="delay", delay_seconds=0.15, count=None))
    (event,) = await events(FireRedStatusTrigger(request_id, firered_conn, poll_interval=1.0))
    assert event["status"] == "success"
    polls = [r.time for r in firered_emulator.requests if "/status/" in r.path]
    gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
    assert len(gaps) >= 3
    assert all(0.85 <= gap <= 1.15 for gap in gaps), gaps


async def test_unknown_request_is_a_final_error(firered_conn: str) -> None:
    (event,) = await events(FireRedStatusTrigger("firered-image-edit-v1-1_gone", firered_conn, 1))
    assert (event["status"], event["retryable"], event["http_status"]) == ("api_error", False, 404)


async def test_session_closed_on_cancellation(firered_emulator: Emulator, firered_conn: str) -> None:
    firered_emulator.set_timings(processing_seconds=30)
    request_id = submit(firered_emulator, firered_conn)
    opened: list[Any] = []
    original = FireRedHook._get_async_session

    def spy(self: FireRedHook) -> Any:
        session = original(self)
        opened.append(session)
        return session

    FireRedHook._get_async_session = spy  # type: ignore[method-assign]
    try:
        task = asyncio.ensure_future(events(FireRedStatusTrigger(request_id, firered_conn, poll_interval=1)))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        FireRedHook._get_async_session = original  # type: ignore[method-assign]
    assert len({id(s) for s in opened}) == 1  # one session for the whole wait
    assert opened[0].closed


#: The pure-construction tests below need no gateway: a connection id is all a trigger keeps.
CONN_ID = "firered_default"


def test_serialize_round_trip_without_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    # A connection holding the key exists (no gateway behind it): the kwargs must not carry it.
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json("http://127.0.0.1:9"))
    trigger = FireRedStatusTrigger(
        "firered-image-edit-v1-1_abc", CONN_ID, 2.5, deadline=1_900_000_000.5, timeout=60
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_firered.triggers.firered.FireRedStatusTrigger"
    assert kwargs == {
        "request_id": "firered-image-edit-v1-1_abc",
        "firered_conn_id": CONN_ID,
        "poll_interval": 2.5,
        "deadline": 1_900_000_000.5,
        "timeout": 60.0,
        "max_poll_interval": None,
        "start_deadline": None,
        "start_timeout": None,
    }
    assert TEST_KEY not in json.dumps(kwargs)
    assert FireRedStatusTrigger(**kwargs).serialize() == (classpath, kwargs)


@pytest.mark.parametrize("poll_interval", [0, 0.05, 0.999, -1, float("nan"), "5", True])
def test_poll_interval_below_a_second_is_refused(poll_interval: Any) -> None:
    with pytest.raises(FireRedValidationError, match=r"^poll_interval: must be at least 1 second"):
        FireRedStatusTrigger("firered-image-edit-v1-1_abc", CONN_ID, poll_interval)


def test_a_trigger_without_deadline_waits_a_bounded_time() -> None:
    before = time.time()
    trigger = FireRedStatusTrigger("firered-image-edit-v1-1_abc", CONN_ID, 5)
    assert trigger.deadline is not None
    assert before + DEFAULT_MAX_WAIT_SECONDS <= trigger.deadline <= time.time() + DEFAULT_MAX_WAIT_SECONDS
    assert trigger.timeout == DEFAULT_MAX_WAIT_SECONDS
    # Fixed when built and serialized: a triggerer restart does not push it later.
    assert trigger.serialize()[1]["deadline"] == trigger.deadline
    assert FireRedStatusTrigger(**trigger.serialize()[1]).deadline == trigger.deadline
    with pytest.raises(FireRedValidationError, match=r"^timeout:"):
        FireRedStatusTrigger("firered-image-edit-v1-1_abc", CONN_ID, 5, timeout=0)


async def test_a_trigger_without_deadline_ends_after_its_timeout(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    firered_emulator.set_timings(processing_seconds=30)
    request_id = submit(firered_emulator, firered_conn)
    (event,) = await events(FireRedStatusTrigger(request_id, firered_conn, 1, timeout=1.5), limit=10)
    assert (event["status"], event["timeout"]) == ("timeout", 1.5)


ROTATED_KEY = "sk-firered-ROTATED-fedcba9876543210"


async def wait_for_status_reads(emulator: Emulator, count: int, limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    while len([r for r in emulator.requests if "/status/" in r.path]) < count:
        assert time.monotonic() < deadline, "the trigger did not poll"
        await asyncio.sleep(0.05)


async def test_a_rotated_key_is_picked_up_during_a_wait(
    firered_emulator: Emulator, firered_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    firered_emulator.keys = {TEST_KEY}
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=3)
    request_id = submit(firered_emulator, firered_conn)
    wait = asyncio.ensure_future(events(FireRedStatusTrigger(request_id, firered_conn, poll_interval=1)))
    await wait_for_status_reads(firered_emulator, 1)
    # The key is rotated at the gateway and in the connection while the wait is running.
    firered_emulator.keys = {ROTATED_KEY}
    monkeypatch.setenv(
        "AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(firered_emulator.gateway_url, ROTATED_KEY)
    )
    (event,) = await wait
    assert event["status"] == "success"
    reads = [r for r in firered_emulator.requests if "/status/" in r.path]
    assert reads[0].headers["Ocp-Apim-Subscription-Key"] == TEST_KEY
    assert 401 in [r.status for r in reads]
    assert reads[-1].status == 200
    assert reads[-1].headers["Ocp-Apim-Subscription-Key"] == ROTATED_KEY
    assert len(firered_emulator.submit_attempts()) == 1


async def test_a_key_refused_for_good_ends_with_a_retryable_event(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    firered_emulator.keys = {TEST_KEY}
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=30)
    request_id = submit(firered_emulator, firered_conn)
    wait = asyncio.ensure_future(events(FireRedStatusTrigger(request_id, firered_conn, poll_interval=1)))
    await wait_for_status_reads(firered_emulator, 1)
    firered_emulator.keys = {ROTATED_KEY}  # rotated at the gateway only: the connection is stale
    (event,) = await wait
    assert (event["status"], event["retryable"], event["http_status"]) == ("api_error", True, 401)
    assert "a retry of the task resumes this request" in event["message"]
    assert TEST_KEY not in json.dumps(event)
    # One fresh look-up and one more read after the first refusal, then the wait ends.
    assert [r.status for r in firered_emulator.requests if "/status/" in r.path][1:] == [401, 401]


async def test_a_connection_gone_during_a_wait_ends_with_a_retryable_event(
    firered_emulator: Emulator, firered_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    firered_emulator.keys = {TEST_KEY}
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=30)
    request_id = submit(firered_emulator, firered_conn)
    wait = asyncio.ensure_future(events(FireRedStatusTrigger(request_id, firered_conn, poll_interval=1)))
    await wait_for_status_reads(firered_emulator, 1)
    firered_emulator.keys = {ROTATED_KEY}
    monkeypatch.delenv("AIRFLOW_CONN_FIRERED_DEFAULT")  # the fresh look-up fails: no crash, no loop
    (event,) = await wait
    assert (event["status"], event["retryable"], event["http_status"]) == ("api_error", True, 401)


@pytest.mark.parametrize(
    ("field", "kwargs"), [("deadline", {"deadline": float("nan")}), ("timeout", {"timeout": float("inf")})]
)
def test_a_deadline_must_be_finite(field: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(FireRedValidationError, match=f"^{field}: must be a finite number"):
        FireRedStatusTrigger("firered-image-edit-v1-1_abc", CONN_ID, 5, **kwargs)
