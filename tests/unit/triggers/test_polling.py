"""The trigger's wake-up grid: polls of many triggers land together, the interval is kept."""

from __future__ import annotations

import asyncio
import random

import pytest

from airflow_provider_firered.triggers.polling import grid_point


@pytest.mark.parametrize(
    ("interval", "most_moved", "points_per_second"),
    # The documented grid: a tenth of the interval, at most 0.25 s; a poll moves by half a step at most.
    [(1.0, 0.05, 10), (5.0, 0.125, 4), (60.0, 0.125, 4)],
)
def test_polls_move_a_little_and_land_together(
    interval: float, most_moved: float, points_per_second: int
) -> None:
    rng = random.Random(7)
    times = [rng.uniform(1000, 1001) for _ in range(500)]
    points = [grid_point(when, interval) for when in times]
    assert max(abs(p - w) for p, w in zip(points, times, strict=True)) <= most_moved + 1e-9
    # 500 polls planned within one second wake at a handful of moments, not 500.
    assert len({round(p, 6) for p in points}) <= points_per_second + 1


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
