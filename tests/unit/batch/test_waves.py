"""When a batch's wait ends (half a wave while items are left to submit), and when its first read comes."""

from __future__ import annotations

import time

import pytest

from airflow_provider_firered.batch.items import check_items
from airflow_provider_firered.batch.state import MAX_LEAD, BatchState
from airflow_provider_firered.batch.waves import READ_MARGIN, first_read_at, ready_at, wake_after, wave_end
from airflow_provider_firered.triggers.events import BatchEvent, EndedJob, EndedStatus

IMAGE = "https://example.com/a.png"


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


# -- the first read of a wait, timed for the wave's expected end ---------------------------------------


def _waited_wave(durations: list[float | None], sent: list[float]) -> BatchState:
    """A batch whose last event ended jobs of ``durations``, then submitted jobs at the times ``sent``."""
    items, _ = check_items(
        [
            {"key": f"SKU-{n}", "prompt": "Make it blue", "images": [IMAGE]}
            for n in range(len(durations) + len(sent))
        ],
        "firered-image-edit-v1-1",
        None,
    )
    batch = BatchState(items, {}, deadline=0.0, timeout=600.0)
    for item in items:
        batch.resume(item, None, None)
    for n, _duration in enumerate(durations):
        batch.submitted(items[n], f"old-{n}")
    batch.take_event(
        BatchEvent(
            {f"old-{n}": EndedJob(EndedStatus.FAILED, error="x", duration=d) for n, d in enumerate(durations)}
        )
    )
    batch.settle()
    for n, at in enumerate(sent):
        batch.submitted(items[len(durations) + n], f"new-{n}")
        batch.sent_at[f"new-{n}"] = at
    return batch


def test_the_first_read_comes_just_after_the_last_submit_plus_the_median_duration() -> None:
    batch = _waited_wave([19.0, 20.0, 35.0], sent=[1000.0, 1001.0])  # median 20 s, last submit at 1001
    due = 1001.0 + 20.0 + READ_MARGIN
    # Reads stay 5 s apart from the earliest moment on, their grid shifted so that one lands on `due`.
    assert first_read_at(wave_end(batch), earliest=1005.0, poll_interval=5.0) == pytest.approx(due - 15.0)
    assert first_read_at(wave_end(batch), earliest=1010.0, poll_interval=5.0) == pytest.approx(due - 10.0)
    assert first_read_at(wave_end(batch), earliest=due, poll_interval=5.0) == pytest.approx(due)


def test_an_untrue_duration_delays_the_first_read_by_less_than_an_interval() -> None:
    earliest = 1005.0
    for duration in (0.0, 7.3, 20.0, 3600.0, 86400.0 * 365, 3e11):  # 3e11: years 1 to 9999
        batch = _waited_wave([duration], sent=[1000.0])
        first = first_read_at(wave_end(batch), earliest=earliest, poll_interval=5.0)
        assert earliest <= first < earliest + 5.0


def test_without_a_duration_or_a_submit_of_its_own_the_first_read_is_the_earliest() -> None:
    # The try's first wave: no event yet, so no duration.
    no_event = _waited_wave([], sent=[1000.0])
    assert first_read_at(wave_end(no_event), earliest=1005.0, poll_interval=5.0) == 1005.0
    # Durations the gateway did not date.
    undated = _waited_wave([None, None], sent=[1000.0])
    assert first_read_at(wave_end(undated), earliest=1005.0, poll_interval=5.0) == 1005.0
    # Nothing in flight was submitted by this process (a wave that submitted nothing).
    nothing_sent = _waited_wave([20.0], sent=[])
    nothing_sent.in_flight["carried"] = ("SKU-0", None)
    assert first_read_at(wave_end(nothing_sent), earliest=1005.0, poll_interval=5.0) == 1005.0
    # Expected to end within the hold: read when the hold ends.
    soon = _waited_wave([1.0], sent=[1000.0])
    assert first_read_at(wave_end(soon), earliest=1005.0, poll_interval=5.0) == 1005.0


def test_a_submit_records_when_it_was_accepted() -> None:
    items, _ = check_items(
        [{"key": "SKU-0", "prompt": "Make it blue", "images": [IMAGE]}], "firered-image-edit-v1-1", None
    )
    batch = BatchState(items, {}, deadline=0.0, timeout=600.0)
    batch.resume(items[0], None, None)
    before = time.time()
    batch.submitted(items[0], "rid-1")
    assert before <= batch.sent_at["rid-1"] <= time.time()


# -- coming back ahead of the wave's end ----------------------------------------------------------------


def test_an_event_ahead_of_the_wave_names_its_end_and_the_way_back_is_measured() -> None:
    batch = _waited_wave([20.0], sent=[])
    batch.in_flight["carried"] = ("SKU-0", None)  # a resumed process: nothing it sent itself
    assert wave_end(batch) is None
    batch.take_event(BatchEvent({}, ("carried",), deadline=5000.0, fired_at=1000.0, ahead_of=1003.0), 1002.5)
    assert (batch.ahead_of, batch.lead, batch.deadline) == (1003.0, 2.5, 5000.0)
    # A later event (read on the worker) is not ahead of anything and leaves the measure alone.
    batch.take_event(BatchEvent({}, ("carried",), deadline=5000.0, fired_at=1004.0))
    assert (batch.ahead_of, batch.lead) == (0.0, 2.5)


@pytest.mark.parametrize(
    ("resumed_at", "lead"),
    [(1000.0 + 3600, MAX_LEAD), (999.0, 0.0)],  # a stuck scheduler, or clocks apart
)
def test_the_way_back_taken_as_true_is_bounded(resumed_at: float, lead: float) -> None:
    batch = _waited_wave([20.0], sent=[])
    batch.take_event(BatchEvent({}, deadline=5000.0, fired_at=1000.0), resumed_at)
    assert batch.lead == lead


def test_an_event_without_its_time_measures_nothing() -> None:
    batch = _waited_wave([20.0], sent=[])
    batch.take_event(BatchEvent({}, deadline=5000.0), 1002.0)  # an event from before the field
    assert batch.lead is None


def test_the_trigger_fires_the_way_back_ahead_of_the_wave_end() -> None:
    assert ready_at(due=1021.25, lead=2.5, earliest=1006.0) == pytest.approx(1018.75)
    # Nothing measured or nothing due: only when the jobs ended.
    assert ready_at(due=None, lead=2.5, earliest=1006.0) == 0.0
    assert ready_at(due=1021.25, lead=None, earliest=1006.0) == 0.0
    assert ready_at(due=1021.25, lead=0.0, earliest=1006.0) == 0.0
    # Never within the hold after deferring.
    assert ready_at(due=1008.0, lead=2.5, earliest=1006.0) == 0.0
