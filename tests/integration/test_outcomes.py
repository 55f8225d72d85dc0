"""
Every way an edit can end in failure is told apart, by the exception's type and its message, the same on
both ways of waiting: through real Airflow (``dag.test()``) against the emulator, on every supported
Airflow version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.emulator import Emulator, Fault
from tests.integration.operators.test_firered import in_log, run_dag, xcom
from tests.integration.sensors.test_firered import run_sense_dag

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.usefixtures("airflow_db", "firered_conn")

#: Without task_state_store (before Airflow 3.3) a retry submits the edit afresh instead of resuming it.
RESUMES = __import__("airflow").__version__.startswith("3.3")


@dataclass(frozen=True)
class Outcome:
    """
    One outcome: how to bring it about, and what the task must show for it.

    :param kind: the exception's type name, as the task log prints it.
    :param message: a part of its message.
    :param final: whether it fails the task without Airflow's retries.
    :param posts: submits sent over the task's two tries (one retry allowed).
    :param setup: prepares the emulator.
    :param kwargs: the operator's arguments beyond the defaults.
    """

    kind: str
    message: str
    final: bool
    posts: int
    setup: Callable[[Emulator], None] = lambda _emulator: None
    kwargs: dict[str, Any] = field(default_factory=dict)


OUTCOMES = {
    "bad-input": Outcome(
        "FireRedValidationError", "Invalid input: prompt:", final=True, posts=0, kwargs={"prompt": " "}
    ),
    "refused": Outcome(
        "FireRedApiError",
        "FireRed gateway answered HTTP 402",
        final=True,
        posts=1,
        setup=lambda e: e.inject(Fault(target="submit", status_code=402)),
    ),
    "failed": Outcome(
        "FireRedJobFailedError",
        "ended FAILED: NSFW content detected",
        final=True,
        posts=1,
        setup=lambda e: e.set_next_outcome("FAILED", "NSFW content detected"),
    ),
    "error": Outcome(
        "FireRedJobErroredError",
        "ended ERROR: GPU lost",
        final=False,
        posts=2,  # ERROR is not charged: the retry submits the edit again
        setup=lambda e: e.set_next_outcome("ERROR", "GPU lost", count=2),
    ),
    "start-timeout": Outcome(
        "FireRedStartTimeoutError",
        "did not start request",
        final=True,
        posts=1,
        setup=lambda e: e.set_timings(queued_seconds=60),
        kwargs={"start_timeout": 1.5},
    ),
    "timeout": Outcome(
        "FireRedTimeoutError",
        "did not finish within 1.5s",
        final=False,
        posts=1 if RESUMES else 2,  # the retry resumes the same request where Airflow can keep it
        setup=lambda e: e.set_timings(queued_seconds=0, processing_seconds=60),
        kwargs={"timeout": 1.5},
    ),
    "uncertain-submit": Outcome(
        "FireRedSubmitUncertainError",
        "no usable answer came back",
        final=True,
        posts=1,
        setup=lambda e: e.inject(Fault(target="submit", status_code=500)),
    ),
}


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
@pytest.mark.parametrize("name", list(OUTCOMES))
def test_each_outcome_has_its_own_type_and_message(
    firered_emulator: Emulator, capfd: pytest.CaptureFixture[str], name: str, deferrable: bool
) -> None:
    outcome = OUTCOMES[name]
    outcome.setup(firered_emulator)
    arguments = {
        "prompt": "x",
        "images": firered_emulator.sample_images[:1],
        "deferrable": deferrable,
        "poll_interval": 1,
        "retries": 1,
        "retry_delay": 0,
        **outcome.kwargs,
    }
    _, ti = run_dag(f"outcome_{name}_{deferrable}".replace("-", "_"), **arguments)
    out = capfd.readouterr().out
    assert ti.state == "failed"
    assert in_log(f"{outcome.kind}: ", out), f"{outcome.kind} not in the task log"
    assert in_log(outcome.message, out)
    # Final outcomes skip Airflow's retries; the others get theirs.
    assert ti.try_number == (1 if outcome.final else 2)
    posts = outcome.posts
    if deferrable and not outcome.final and not RESUMES:
        # Airflow 3.0's dag.test() runs a deferred task's retry from execute_complete, with the event
        # of the failed try again: that retry submits nothing.
        posts = 1
    assert len(firered_emulator.submit_attempts()) == posts
    others = {o.kind for o in OUTCOMES.values()} - {outcome.kind}
    assert not [kind for kind in others if in_log(f"{kind}: ", out)]


@pytest.mark.parametrize(
    "mode",
    [
        {"deferrable": True},
        {"deferrable": False, "mode": "poke"},
        {"deferrable": False, "mode": "reschedule"},
    ],
    ids=["deferred", "poke", "reschedule"],
)
def test_the_sensor_tells_a_start_timeout_apart(
    firered_emulator: Emulator, capfd: pytest.CaptureFixture[str], mode: dict[str, Any]
) -> None:
    firered_emulator.set_timings(queued_seconds=60)
    tis = run_sense_dag(
        f"outcome_sense_start_{mode.get('mode', 'deferred')}",
        firered_emulator.sample_images[:1],
        poke_interval=1,
        timeout=60,
        # Past at the second poke: Airflow 3.0's own reschedule bookkeeping fails on a third one in
        # dag.test() (it hands the first reschedule date over as text).
        start_timeout=1,
        retries=1,
        retry_delay=0,
        **mode,
    )
    out = capfd.readouterr().out
    assert tis["sense"].state == "failed"
    request_id = xcom(tis["submit"], "request_id")
    assert in_log(f"FireRedStartTimeoutError: The gateway did not start request {request_id} within 1s", out)
    assert tis["sense"].try_number == 1  # final: a retry could only wait again for the same queued job
    assert len(firered_emulator.submit_attempts()) == 1
