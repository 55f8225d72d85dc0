"""The trigger's wake-up grid: polls of many triggers land together, the interval is kept."""

from __future__ import annotations

import asyncio
import random

import pytest

from airflow_provider_firered.triggers import firered
from airflow_provider_firered.triggers.firered import grid_point


@pytest.mark.parametrize("interval", [0.05, 1.0, 5.0, 60.0])
def test_a_time_moves_to_the_nearest_grid_point(interval: float) -> None:
    grid = min(interval * firered.GRID_FRACTION, firered.MAX_GRID_SECONDS)
    rng = random.Random(7)
    for _ in range(200):
        when = rng.uniform(0, 10_000)
        point = grid_point(when, interval)
        assert abs(point - when) <= grid / 2 + 1e-6
        assert point / grid == pytest.approx(round(point / grid), abs=1e-6)


def test_no_grid_for_a_zero_interval() -> None:
    assert grid_point(123.456, 0.0) == 123.456


async def test_triggers_started_apart_wake_together() -> None:
    loop = asyncio.get_running_loop()
    wakes: list[float] = []

    async def poll_once(start: float) -> None:
        await asyncio.sleep(start)
        await asyncio.sleep(grid_point(loop.time() + 1.0, 1.0) - loop.time())
        wakes.append(loop.time())

    await asyncio.wait_for(asyncio.gather(*(poll_once(i / 100) for i in range(100))), 10)
    # 100 triggers started 10 ms apart wake at 11 grid points (0.1 s apart), not at 100 moments.
    assert len({round(w / 0.1) for w in wakes}) <= 12
