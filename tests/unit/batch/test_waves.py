"""When a batch's wait ends: half a wave while items are left to submit, everything at the end."""

from __future__ import annotations

import pytest

from airflow_provider_firered.batch.waves import wake_after


@pytest.mark.parametrize(
    ("in_flight", "queued", "expected"),
    [
        (125, 0, 125),  # nothing left to submit: wait for all of them
        (125, 375, 62),  # half the wave ended: the next half-wave goes in while the rest run
        (125, 10, 10),  # as many as are left to submit
        (1, 5, 1),  # never zero
        (3, 1, 1),
    ],
)
def test_the_wait_ends_once_half_a_wave_or_the_rest_of_the_queue_ended(
    in_flight: int, queued: int, expected: int
) -> None:
    assert wake_after(in_flight, queued) == expected
