"""
How long FireRedStatusTrigger holds the event loop: 200 triggers wait together in one loop, with
asyncio's debug mode reporting every step that runs longer than 50 ms. The emulator runs in its own
process, so only the triggers' own work is on this loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.emulator.process import start_emulator_process
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.triggers.firered import FireRedStatusTrigger
from tests.conftest import conn_uri_json

if TYPE_CHECKING:
    from collections.abc import Iterator

TRIGGERS = 200
SLOW_STEP_SECONDS = 0.05
#: Slow steps tolerated as machine noise (the OS descheduling this process while `make test` runs
#: other streams beside it), not a trigger's doing: under 1% of the steps, where a blocking trigger
#: is reported at nearly every one of them.
NOISE_STEPS = 20
#: No single step may take this long, noise or not.
LONGEST_STEP_SECONDS = 1.0


@pytest.fixture
def emulator_process() -> Iterator[dict[str, Any]]:
    with start_emulator_process("--queued-seconds", "0.5", "--processing-seconds", "17") as emulator:
        yield emulator.info


@pytest.mark.timeout(120)
def test_200_waiting_triggers_never_hold_the_loop(
    emulator_process: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(emulator_process["gateway_url"]))
    hook = FireRedHook()
    image = emulator_process["sample_images"][0]
    request_ids = [
        hook.submit_edit("firered-image-edit-v1-1", f"wait {i}", [image]).request_id for i in range(TRIGGERS)
    ]

    async def wait_all() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = SLOW_STEP_SECONDS

        async def one(request_id: str) -> dict[str, Any]:
            trigger = FireRedStatusTrigger(request_id, "firered_default", 1.0, deadline=time.time() + 90)
            payloads: list[dict[str, Any]] = [event.payload async for event in trigger.run()]
            (payload,) = payloads
            return payload

        return await asyncio.wait_for(asyncio.gather(*(one(r) for r in request_ids)), 90)

    caplog.set_level(logging.WARNING, logger="asyncio")
    gc.disable()  # the collector's pauses are the process's, not a trigger's
    try:
        events = asyncio.run(wait_all(), debug=True)
    finally:
        gc.enable()
    assert [e["status"] for e in events] == ["success"] * TRIGGERS
    slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
    # About 3,600 status reads ran. A trigger that blocks does so at every step (a 60 ms sleep per
    # read gives hundreds of reports); a busy machine can pause the process during a few steps.
    assert len(slow) <= NOISE_STEPS, slow
    assert [m for m in slow if float(m.rsplit(" took ", 1)[1].split()[0]) > LONGEST_STEP_SECONDS] == []
