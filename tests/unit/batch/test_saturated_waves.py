"""
Batches that share a saturated gateway: a submit refused with ``429`` leaves its item queued for the
next wave, unpaid and never failed, whether some of the wave was taken or none of it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import pytest

from airflow_provider_firered.batch.items import BatchItem, check_items
from airflow_provider_firered.batch.state import BatchState
from airflow_provider_firered.batch.waves import SaturatedError, WaveAnswers, submit_wave
from airflow_provider_firered.exceptions import FireRedApiError
from airflow_provider_firered.gateway.results import JobStatus, SubmitResult
from tests.unit.batch.test_state_and_waves import settings as unit_settings

if TYPE_CHECKING:
    from airflow_provider_firered.batch.settings import BatchSettings
    from airflow_provider_firered.gateway.options import EditRequest

LOG = logging.getLogger(__name__)


class SharedGateway:
    """Takes ``room`` more jobs, then answers ``429`` (another batch holds the rest of the gateway)."""

    settings = None

    def __init__(self, room: int) -> None:
        self.room = room
        self.accepted = 0
        self.refused = 0
        self.lock = threading.Lock()

    def submit_request(self, request: EditRequest, *, retry: bool = True) -> SubmitResult:  # noqa: ARG002
        with self.lock:
            if self.accepted >= self.room:
                self.refused += 1
                raise FireRedApiError(429, "Too Many Requests", "Too many concurrent jobs.", retry_after=1)
            self.accepted += 1
            return SubmitResult(f"rid-{self.accepted}", JobStatus.QUEUED)


def batch_of(count: int) -> tuple[list[BatchItem], BatchState]:
    edits = [
        {"key": f"SKU-{n}", "prompt": f"Make it blue #{n}", "images": ["https://example.com/a.png"]}
        for n in range(count)
    ]
    items, _ = check_items(edits, "firered-image-edit-v1-1", None)
    batch = BatchState(items, {}, deadline=0.0, timeout=60.0)
    for item in items:
        batch.resume(item, None, None)
    return items, batch


def settings() -> BatchSettings:
    return unit_settings(max_in_flight=8, deferrable=True)


def test_a_partly_refused_wave_keeps_the_refused_items_queued_and_unpaid() -> None:
    items, batch = batch_of(8)
    gateway = SharedGateway(room=3)
    answers = WaveAnswers()
    submit_wave(batch, answers, settings=settings(), hook=gateway, ledger=None, log=LOG)  # type: ignore[arg-type]
    assert gateway.refused >= 1
    assert len(answers.accepted) == len(batch.in_flight) == 3
    # Refused or never sent: queued for the next wave, not failed, not paid.
    assert len(batch.queue) == 5
    assert batch.paid() == 3
    assert batch.count("failed") == 0
    # The next wave, with room again, sends exactly the queued items: each item is accepted once.
    gateway.room = 8
    submit_wave(batch, WaveAnswers(), settings=settings(), hook=gateway, ledger=None, log=LOG)  # type: ignore[arg-type]
    assert batch.queue == []
    assert sorted(key for key, _start in batch.in_flight.values()) == sorted(item.key for item in items)
    assert batch.paid() == gateway.accepted == 8


def test_a_wholly_refused_wave_with_nothing_in_flight_waits_on_a_timer_unpaid() -> None:
    _items, batch = batch_of(4)
    gateway = SharedGateway(room=0)
    with pytest.raises(SaturatedError):
        submit_wave(batch, WaveAnswers(), settings=settings(), hook=gateway, ledger=None, log=LOG)  # type: ignore[arg-type]
    assert (len(batch.queue), batch.paid(), batch.count("failed"), len(batch.in_flight)) == (4, 0, 0, 0)
