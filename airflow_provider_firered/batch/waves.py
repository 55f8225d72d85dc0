"""
Submit a wave of a batch's items into the free slots, and decide how long the next wait lasts.

Submits run ``download_threads`` at a time; every answer is recorded (in the batch's state, and the
accepted request ids in ``task_state_store``, those answered at one moment in one write) before a
failure that ends the try is raised.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from airflow_provider_firered.batch.store import StoredRequest
from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedConnectionError,
    FireRedError,
    FireRedSubmitUncertainError,
)
from airflow_provider_firered.gateway.results import SubmitResult

if TYPE_CHECKING:
    from airflow_provider_firered.batch.items import BatchItem
    from airflow_provider_firered.batch.settings import BatchLog, BatchSettings
    from airflow_provider_firered.batch.state import BatchState
    from airflow_provider_firered.batch.store import RequestLedger
    from airflow_provider_firered.hooks.firered import FireRedHook

#: Answers that refuse every submit of the batch alike (the key, the subscription).
BATCH_REFUSALS = frozenset({401, 402, 403})


@dataclass
class WaveAnswers:
    """What one wave of submits brought back."""

    #: The items the gateway accepted, in the order their answers came.
    accepted: list[BatchItem] = field(default_factory=list)
    #: How many submits got an answer (accepted or not).
    answered: int = 0
    paused: FireRedError | None = None
    refused: FireRedApiError | None = None
    fatal: Exception | None = None
    #: Set when a failure means the rest of the wave is not sent.
    stop: threading.Event = field(default_factory=threading.Event)


class SaturatedError(Exception):
    """A ``429`` with nothing of the batch in flight: the deferrable batch waits on a timer."""

    def __init__(self, error: FireRedApiError) -> None:
        super().__init__(str(error))
        self.error = error


def saturated(err: Any) -> TypeGuard[FireRedApiError]:
    """
    Tell whether a submit's failure is the gateway's ``429`` (saturated: surely not taken).

    :param err: the failure.
    """
    return isinstance(err, FireRedApiError) and err.status_code == 429


def wake_after(in_flight: int, queued: int) -> int:
    """
    Return how many ended jobs the trigger waits for before the task resumes.

    All of them once nothing is left to submit; otherwise half of those in flight (or the rest of the
    queue, if smaller), so the next wave goes in while the other half still keeps the gateway busy.
    A batch of N then costs about N / max_in_flight + 1 task starts where jobs end together, at most
    twice that where they end spread out.

    :param in_flight: the jobs of the batch unfinished at the gateway.
    :param queued: the items still to submit.
    """
    if not queued:
        return in_flight
    return max(1, min(queued, in_flight // 2))


#: Seconds after a wave's expected end that the read timed for it comes: the gateway dates a job's
#: creation before its answer reaches the worker, so its end is due a little before this.
READ_MARGIN = 0.25


def wave_end(batch: BatchState) -> float | None:
    """
    Return when the latest wave is expected to end (epoch seconds); None when it cannot be told.

    The jobs of one wave tend to end together, about as long after their submits as the jobs of the
    wave before took (the median of their durations by the gateway's clock), plus
    :data:`READ_MARGIN`. Without a duration (the try's first wave) or a submit of this process in
    flight: None.

    :param batch: the batch's state, its latest wave submitted.
    """
    sent = [batch.sent_at[rid] for rid in batch.in_flight if rid in batch.sent_at]
    if batch.job_seconds is not None and sent:
        due = max(sent) + batch.job_seconds + READ_MARGIN
        return due if due < math.inf else None
    return None


def first_read_at(due: float | None, earliest: float, poll_interval: float) -> float:
    """
    Return when the trigger reads first: so that one read comes just when the wave is ``due`` to end.

    Reads stay ``poll_interval`` apart from ``earliest`` on, their grid only shifted: the first read
    comes less than one interval after ``earliest`` whatever ``due`` says, so a late or untrue
    duration delays nothing beyond the plain grid, and a job ending early is still seen within an
    interval. Without a ``due`` after ``earliest``: ``earliest``.

    :param due: when the wave is expected to end (:func:`wave_end`), or None.
    :param earliest: the first moment a read may come (epoch seconds).
    :param poll_interval: seconds between reads.
    """
    if due is None or not earliest < due < math.inf:
        return earliest
    return earliest + (due - earliest) % poll_interval  # a remainder: within one interval, exactly


def ready_at(due: float | None, lead: float | None, earliest: float) -> float:
    """
    Return when a deferred batch's trigger fires however few jobs ended; 0 for only when they did.

    The way back from trigger to task (:attr:`BatchState.lead`, measured at the last resume: the
    scheduler, the worker, the task's start) then passes while the wave's jobs still run, and the task
    reads them itself as they end: the next wave goes in that much sooner. Not before ``earliest``.

    :param due: when the wave is expected to end (:func:`wave_end`), or None.
    :param lead: the last way back from trigger to task, in seconds, or None (not measured yet).
    :param earliest: the first moment the trigger may fire (epoch seconds).
    """
    if due is None or not lead:
        return 0.0
    return due - lead if earliest < due - lead else 0.0


def hold_back_if_spent(batch: BatchState, budget: int, log: BatchLog) -> bool:
    """
    Hold back every item still to submit once ``max_paid_edits`` is spent; return whether it is.

    :param batch: the batch's state.
    :param budget: the task's ``max_paid_edits``.
    :param log: where to say how many items were held back, and how to send them.
    """
    if batch.paid() < budget:
        return False
    if batch.queue:
        log.warning(
            "%d item(s) not sent: max_paid_edits=%d is spent (%d paid submits over this task's tries); "
            "they are recorded over_budget. Raise max_paid_edits to send them",
            batch.hold_back(budget),
            budget,
            batch.paid(),
        )
    return True


def _stops_wave(err: Exception) -> bool:
    """Tell whether a submit's failure stops the rest of its wave from being sent."""
    if isinstance(err, FireRedSubmitUncertainError):
        return False
    if isinstance(err, FireRedApiError) and not err.retryable:
        return err.status_code in BATCH_REFUSALS
    return True  # saturated or unreachable (paused), or a failure that ends the try


def submit_wave(
    batch: BatchState,
    answers: WaveAnswers,
    *,
    settings: BatchSettings,
    hook: FireRedHook,
    ledger: RequestLedger | None,
    log: BatchLog,
) -> None:
    """
    Submit queued items into the free slots (fewer than ``max_in_flight`` jobs unfinished).

    Submits run ``download_threads`` at a time; their answers are collected into ``answers``. Each
    accepted request id is recorded as its answer comes in, and stored (``task_state_store``) with
    every other answered while the last write was under way, in one write; an id
    the gateway already gave to another item fails the later item as ``UNCERTAIN``. A saturated or
    unreachable gateway pauses the wave (the rest stay queued for the next one); a refused key or
    subscription fails every queued item; an uncertain submit fails its item for good. A failure
    that ends the try is raised only after every answer is recorded; a ``429`` with nothing in
    flight raises :class:`SaturatedError` in a deferrable batch. With ``max_paid_edits`` set, a wave
    sends no more submits than the budget has left (over every try of the task); once it is spent
    every item still to submit is held back as ``over_budget``, never sent.

    :param batch: the batch's state.
    :param answers: where the wave's answers go.
    :param settings: the batch's settings.
    :param hook: the FireRed hook.
    :param ledger: where accepted request ids are stored, if this Airflow has ``task_state_store``.
    :param log: where to say what failed or paused.
    """
    wave = batch.queue[: max(0, settings.max_in_flight - len(batch.in_flight))]
    if not wave:
        return
    budget = settings.max_paid_edits
    if budget is not None:
        if hold_back_if_spent(batch, budget, log):
            return
        wave = wave[: budget - batch.paid()]
    hook.settings  # noqa: B018  resolved once here, not in every thread

    def send(item: BatchItem, retry: bool) -> SubmitResult | Exception | None:
        if answers.stop.is_set():
            return None  # stays queued for the next wave
        try:
            return hook.submit_request(item.request, retry=retry)  # checked once, when items were read
        except Exception as err:  # recorded by the caller, after every other answer
            if _stops_wave(err):
                answers.stop.set()
            return err

    def record(item: BatchItem, answer: SubmitResult | Exception | None) -> StoredRequest | None:
        """Record an answer in the batch; return the request to store, if accepted."""
        if answer is not None:
            answers.answered += 1
        if isinstance(answer, SubmitResult):
            # Recorded in the batch (and so in the manifest, even if this try fails) before
            # anything else can fail.
            attempt = batch.submitted(item, answer.request_id)
            if not attempt:
                log.warning("Item %s failed: %s", item.key, batch.entries[item.key].error)
                return None
            answers.accepted.append(item)
            return StoredRequest(answer.request_id, attempt, batch.entries[item.key].paid)
        if isinstance(answer, FireRedSubmitUncertainError):
            batch.uncertain(item, str(answer))  # may have been accepted: never sent again, counted paid
        elif isinstance(answer, FireRedApiError) and not answer.retryable:
            if answer.status_code in BATCH_REFUSALS:
                answers.refused = answers.refused or answer
            else:
                batch.fail(item, "REFUSED", str(answer))
        elif isinstance(answer, FireRedError) and answer.retryable:
            answers.paused = answers.paused or answer  # saturated or unreachable: the next wave tries
        elif isinstance(answer, Exception):
            answers.fatal = answers.fatal or answer
        return None

    def keep(accepted: list[tuple[BatchItem, StoredRequest]]) -> None:
        if ledger is None or not accepted:
            return
        try:
            ledger.keep(accepted)
        except Exception as err:  # Airflow's API refused (e.g. the try was failed meanwhile)
            answers.stop.set()
            answers.fatal = answers.fatal or err

    if not batch.in_flight:
        # Nothing to wait for: the first submit waits out a 429's Retry-After here, as the hook
        # does, unless the batch is deferrable (it then waits on a timer, holding no slot). With
        # jobs in flight a 429 pauses the submits at once instead: waiting in the slot would
        # hold it for nothing.
        first = send(wave[0], not settings.deferrable)
        if settings.deferrable and isinstance(first, FireRedConnectionError):
            # Never opened, so surely not taken: sent again with the hook's own retries, as before.
            answers.stop.clear()
            first = send(wave[0], True)
        request = record(wave[0], first)
        keep([(wave[0], request)] if request else [])
        wave = wave[1:]
    if wave and not answers.stop.is_set():
        with ThreadPoolExecutor(max_workers=min(settings.download_threads, len(wave))) as pool:
            sent = {pool.submit(send, item, False): item for item in wave}
            order = {item.key: position for position, item in enumerate(wave)}
            while sent:
                # Every answer that came in during the last write goes in the next one (the
                # threads go on sending meanwhile): a wave costs a few writes, not one per item.
                done, _ = wait(sent, return_when=FIRST_COMPLETED)
                accepted = []
                for future in sorted(done, key=lambda future: order[sent[future].key]):
                    item = sent.pop(future)
                    if request := record(item, future.result()):
                        accepted.append((item, request))
                keep(accepted)
    if answers.refused is not None:
        batch.fail_queue("REFUSED", str(answers.refused))  # the same answer awaits every item
    if budget is not None:
        hold_back_if_spent(batch, budget, log)  # now, so the wait that follows is the last one
    if answers.fatal is not None:
        raise answers.fatal
    if answers.paused is not None:
        if not batch.in_flight:
            if settings.deferrable and saturated(answers.paused):
                raise SaturatedError(answers.paused)
            raise answers.paused  # nothing to wait for: the try fails, and Airflow's retry tries again
        log.warning("Submits paused until jobs finish: %s", answers.paused)
