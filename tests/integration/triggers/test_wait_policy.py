"""
The waiting policy against the emulator: a start deadline for jobs that stay ``QUEUED``, and an interval
that grows while a job is ``PROCESSING`` (``max_poll_interval``), in the trigger and on the worker.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING

import pytest

from airflow_provider_firered.gateway.wait_policy import BACKOFF_FACTOR
from airflow_provider_firered.triggers.firered import FireRedStatusTrigger
from airflow_provider_firered.triggers.firered_batch import FireRedBatchStatusTrigger
from tests.integration.operators.test_firered import run_dag, xcom
from tests.integration.triggers.test_firered import events, submit

if TYPE_CHECKING:
    from airflow_provider_firered.emulator import Emulator


def read_times(emulator: Emulator, request_id: str) -> list[float]:
    """When the emulator answered a status read of ``request_id``."""
    return [r.time for r in emulator.requests if r.method == "GET" and r.path.endswith("/" + request_id)]


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_a_job_still_queued_at_the_start_deadline_ends_the_wait(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    firered_emulator.set_timings(queued_seconds=60)
    request_id = submit(firered_emulator, firered_conn)
    began = time.time()
    trigger = FireRedStatusTrigger(request_id, firered_conn, poll_interval=1, start_timeout=1.5, timeout=60)
    (event,) = await events(trigger)
    assert event == {
        "status": "start_timeout",
        "request_id": request_id,
        "last_status": "QUEUED",
        "timeout": 1.5,
        "deadline": trigger.start_deadline,
    }
    # The last read is made right at the start deadline (not one interval later), and it decides.
    assert 1.5 <= time.time() - began < 2.5
    assert trigger.start_deadline is not None
    assert read_times(firered_emulator, request_id)[-1] >= trigger.start_deadline


async def test_the_start_deadline_is_absolute_and_survives_a_restart(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    firered_emulator.set_timings(queued_seconds=60)
    request_id = submit(firered_emulator, firered_conn)
    first = FireRedStatusTrigger(request_id, firered_conn, poll_interval=1, start_timeout=30, timeout=60)
    _, kwargs = first.serialize()
    assert kwargs["start_deadline"] == first.start_deadline
    assert kwargs["max_poll_interval"] is None
    # A triggerer that restarts rebuilds the trigger from its kwargs: the deadline does not move...
    await asyncio.sleep(0.2)
    assert FireRedStatusTrigger(**kwargs).start_deadline == first.start_deadline
    # ...and one that already passed (a long triggerer outage) ends the wait at its first read.
    (event,) = await events(FireRedStatusTrigger(**{**kwargs, "start_deadline": time.time() - 1}))
    assert event["status"] == "start_timeout"
    assert len(read_times(firered_emulator, request_id)) == 1


async def test_a_job_that_started_is_not_held_to_the_start_deadline(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    firered_emulator.set_timings(queued_seconds=0.5, processing_seconds=3)
    request_id = submit(firered_emulator, firered_conn)
    trigger = FireRedStatusTrigger(request_id, firered_conn, poll_interval=1, start_timeout=1, timeout=60)
    (event,) = await events(trigger)
    assert event["status"] == "success"


async def test_the_interval_grows_while_processing_and_not_while_queued(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    firered_emulator.set_timings(queued_seconds=2.5, processing_seconds=10)
    steady, backing_off = submit(firered_emulator, firered_conn), submit(firered_emulator, firered_conn)
    await asyncio.gather(
        events(FireRedStatusTrigger(steady, firered_conn, poll_interval=1, timeout=60), limit=30),
        events(
            FireRedStatusTrigger(backing_off, firered_conn, poll_interval=1, max_poll_interval=3, timeout=60),
            limit=30,
        ),
    )
    fixed, grown = gaps(read_times(firered_emulator, steady)), gaps(read_times(firered_emulator, backing_off))
    assert all(0.7 < gap < 1.3 for gap in fixed)
    # QUEUED for 2.5 s: the first gaps stay at the poll interval; then x1.5 per PROCESSING read, capped.
    assert all(0.7 < gap < 1.3 for gap in grown[:2])
    assert 1.5 * 0.8 < grown[3] < 1.5 * 1.2
    assert max(grown) <= 3 + 0.3
    assert max(grown) > 3 - 0.3  # the cap is reached, not exceeded
    assert len(grown) < len(fixed) - 3  # fewer reads for the same job
    assert BACKOFF_FACTOR == 1.5


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_the_worker_path_follows_the_same_policy(firered_emulator: Emulator) -> None:
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=7)
    _, ti = run_dag(
        "policy_worker_backoff",
        prompt="x",
        images=firered_emulator.sample_images[:1],
        deferrable=False,
        poll_interval=1,
        max_poll_interval=2.5,
    )
    assert ti.state == "success"
    grown = gaps(read_times(firered_emulator, xcom(ti, "request_id")))
    # 1, 1.5, 2.25, 2.5, 2.5...: the worker sleeps as the trigger does.
    assert 1.5 * 0.8 < grown[0] < 1.5 * 1.2
    assert max(grown) <= 2.5 + 0.3
    assert len(grown) <= 4


def one_job_trigger(
    emulator: Emulator, conn_id: str, job_seconds: float, **moments: float
) -> tuple[str, float, FireRedBatchStatusTrigger]:
    """
    Submit one job of ``job_seconds``; return its id, when it was sent, and a batch trigger for it.

    :param moments: the trigger's moments, in seconds from the submit (``deadline`` defaults to 60).
    """
    emulator.set_timings(queued_seconds=0, processing_seconds=job_seconds)
    request_id = submit(emulator, conn_id)
    began = time.time()
    at = {name: began + seconds for name, seconds in {"deadline": 60.0, **moments}.items()}
    trigger = FireRedBatchStatusTrigger(
        [[request_id, None]],
        conn_id,
        poll_interval=1,
        deadline=at["deadline"],
        not_before=at.get("not_before", 0.0),
        ready_at=at.get("ready_at", 0.0),
        due=at.get("due", 0.0),
    )
    return request_id, began, trigger


async def test_a_batch_trigger_makes_no_read_before_not_before(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    # Its jobs already ended, but a task that deferred a moment ago must not resume at once (Airflow 3.3
    # can fail a task resumed before the scheduler heard its deferring process exit).
    request_id, began, trigger = one_job_trigger(firered_emulator, firered_conn, 0, not_before=1.5)
    # Rebuilt from its kwargs, as a triggerer restart does: the moment is absolute.
    (event,) = await events(FireRedBatchStatusTrigger(**trigger.serialize()[1]))
    assert event["ended"][request_id]["status"] == "COMPLETED"
    assert read_times(firered_emulator, request_id)[0] >= began + 1.5


async def test_not_before_gives_way_to_the_deadline(firered_emulator: Emulator, firered_conn: str) -> None:
    request_id, began, trigger = one_job_trigger(
        firered_emulator, firered_conn, 0, deadline=0.5, not_before=30
    )
    (event,) = await asyncio.wait_for(events(trigger), timeout=10)
    assert event["ended"][request_id]["status"] == "COMPLETED"
    assert time.time() - began < 5


async def test_ready_at_fires_ahead_of_the_wave_without_reading(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    request_id, began, trigger = one_job_trigger(
        firered_emulator, firered_conn, 30, not_before=10, ready_at=1.5, due=30
    )
    # Rebuilt from its kwargs, as a triggerer restart does: the moments are absolute.
    (event,) = await asyncio.wait_for(events(FireRedBatchStatusTrigger(**trigger.serialize()[1])), timeout=10)
    fired = time.time()
    assert event["ended"] == {}
    assert event["pending"] == [request_id]
    assert event["ahead_of"] == began + 30
    assert began + 1.5 <= event["fired_at"] <= fired
    assert fired - began < 2.5
    assert read_times(firered_emulator, request_id) == []  # the task reads the wave itself


async def test_jobs_that_end_before_ready_at_fire_as_usual(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    request_id, began, trigger = one_job_trigger(firered_emulator, firered_conn, 0.5, ready_at=20, due=25)
    (event,) = await asyncio.wait_for(events(trigger), timeout=10)
    assert event["ended"][request_id]["status"] == "COMPLETED"
    assert "ahead_of" not in event
    assert began < event["fired_at"] < began + 5
