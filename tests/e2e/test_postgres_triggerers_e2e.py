"""
Several triggerers on PostgreSQL, one of them lost: a real deployment with two triggerers runs
batches of deferrable edits (each batch waits in one trigger); once their triggers are spread over
both, one triggerer is killed with
SIGKILL. Airflow hands the dead triggerer's triggers to the other once its heartbeat is older than
``triggerer_health_check_threshold``; they must finish there, every edit must succeed with its output,
and the gateway must see exactly one POST per edit (a trigger resumes its stored request id, it never
submits).

The DAG (``dags/firered_postgres_triggerers.py``) is the only thing tied to one operator: this test
reads task instances, triggers, POSTs and output files whatever the tasks are.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from firered_devtools.deployment import start_emulator, trigger_logs
from firered_devtools.postgres import PostgresCluster, PostgresUnavailable
from PIL import Image

from tests.e2e.conftest import TEST_DAGS, running_deployment

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from firered_devtools.deployment import AirflowDeployment

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

DAG_ID = "firered_postgres_triggerers"
RUN_ID = "e2e_postgres_triggerers"
EDITS = 40
#: The edits come in this many batch tasks, one trigger each.
BATCHES = 8
#: Triggers one triggerer runs at once: the survivor takes the rest once its own have fired.
TRIGGERER_CAPACITY = 6
BUDGET_SECONDS = 360
#: How long each emulated job runs. Starting all the edits takes about 25 s on two cores: every job
#: must outlast that, with room to spare, so that all of them wait at once when the kill comes.
PROCESSING_SECONDS = 40
#: Airflow declares a triggerer dead after this many seconds without a heartbeat.
HEALTH_THRESHOLD_SECONDS = 6

#: Every deferred task instance of the run with the trigger it waits on and that trigger's triggerer.
DEFERRED = (
    "SELECT ti.task_id, ti.map_index, t.id, t.triggerer_id FROM task_instance ti "
    "JOIN trigger t ON t.id = ti.trigger_id WHERE ti.run_id = ? AND ti.state = 'deferred'"
)


@pytest.fixture
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster (installed first when missing and running as root)."""
    try:
        cluster = PostgresCluster().start()
    except PostgresUnavailable as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"in CI the PostgreSQL test must run: {err}")
        pytest.skip(str(err))
    try:
        yield cluster
    finally:
        cluster.stop()


def deferred(deployment: AirflowDeployment) -> list[tuple[Any, ...]]:
    return deployment.query(DEFERRED, (RUN_ID,))


def started_by(
    deployment: AirflowDeployment, task_ids: set[str], event: str = " starting"
) -> dict[tuple[str, int], set[int]]:
    """For each task instance of these tasks, the triggerer jobs whose trigger log for it has ``event``."""
    return {
        (task_id, index): jobs
        for task_id in task_ids
        for index, jobs in trigger_logs(deployment, DAG_ID, RUN_ID, task_id, event).items()
    }


def wait_spread(deployment: AirflowDeployment, deadline: float) -> list[tuple[Any, ...]]:
    """
    Wait until every batch waits in a trigger, each trigger running (started) on the triggerer it
    is assigned to, and both triggerers run some; return those rows.
    """
    rows: list[tuple[Any, ...]] = []
    while True:
        deployment.check_running()
        rows = deferred(deployment)
        owners = Counter(row[3] for row in rows)
        if len(rows) == BATCHES and None not in owners and len(owners) == 2:
            started = started_by(deployment, {row[0] for row in rows})
            if all(row[3] in started.get((row[0], row[1]), ()) for row in rows):
                return rows
        assert time.monotonic() < deadline, (
            f"never all {BATCHES} batches deferred over two triggerers: {len(rows)} deferred, by "
            f"triggerer {dict(owners)}\n{deployment.tail_logs()}"
        )
        time.sleep(0.5)


def wait_taken_over(
    deployment: AirflowDeployment, orphans: set[int], survivor: int, deadline: float
) -> set[int]:
    """Wait until the survivor holds every orphaned trigger still waiting; return those seen there."""
    seen: set[int] = set()
    while True:
        deployment.check_running()
        waiting = {row[2]: row[3] for row in deferred(deployment) if row[2] in orphans}
        seen |= {trigger for trigger, owner in waiting.items() if owner == survivor}
        if all(owner == survivor for owner in waiting.values()):
            return seen
        assert time.monotonic() < deadline, f"triggers not taken over: {waiting}\n{deployment.tail_logs()}"
        time.sleep(0.5)


def test_a_killed_triggerer_hands_its_triggers_over(postgres: PostgresCluster, tmp_path: Path) -> None:
    deadline = time.monotonic() + BUDGET_SECONDS
    begun = time.monotonic()
    output_root = tmp_path / "out"
    with running_deployment(tmp_path / "airflow-home", TEST_DAGS) as deployment:
        deployment.use_database(postgres.url)
        emulator = start_emulator(
            deployment,
            "--queued-seconds",
            "1",
            "--processing-seconds",
            str(PROCESSING_SECONDS),
            "--no-render",
        )
        deployment.env.update(
            {
                "AIRFLOW_CONN_FIRERED_DEFAULT": json.dumps(
                    {"conn_type": "firered", "host": emulator.gateway_url, "password": "triggerers-key"}
                ),
                "AIRFLOW_VAR_FIRERED_IMAGE": emulator.sample_images[0],
                "AIRFLOW_VAR_FIRERED_OUTPUT_ROOT": str(output_root),
                "FIRERED_TRIGGERERS_EDITS": str(EDITS),
                "FIRERED_TRIGGERERS_BATCHES": str(BATCHES),
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(BATCHES),
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(HEALTH_THRESHOLD_SECONDS),
                # Fewer than BATCHES per triggerer: the batches' triggers cannot all land on one.
                "AIRFLOW__TRIGGERER__CAPACITY": str(TRIGGERER_CAPACITY),
            }
        )
        deployment.cli("db", "migrate")
        migrated = time.monotonic()
        deployment.start_all(background_niceness=10, triggerers=2)
        deployment.wait_healthy(timeout=deadline - time.monotonic())
        deployment.wait_parsed(DAG_ID, deadline)
        deployment.trigger(DAG_ID, RUN_ID)

        rows = wait_spread(deployment, deadline)
        spread_at = time.monotonic()
        by_job = {proc.job_id: proc for proc in deployment.running_triggerers()}
        assert set(by_job) == {row[3] for row in rows}, f"triggers on unknown triggerers: {rows} {by_job}"
        # The one with more triggers dies: the survivor has the most to take over.
        owners = Counter(row[3] for row in rows)
        (victim_id, _), (survivor_id, _) = owners.most_common()
        victim, survivor = by_job[victim_id], by_job[survivor_id]
        orphans = {row[2]: (row[0], row[1]) for row in deferred(deployment) if row[3] == victim_id}
        deployment.kill(victim)
        killed_at = time.monotonic()

        seen = wait_taken_over(deployment, set(orphans), survivor_id, deadline)
        taken_over_at = time.monotonic()
        state = deployment.wait_run(RUN_ID, deadline)
        finished = time.monotonic()

        assert not victim.running()
        assert survivor.running(), survivor.log_text()[-4000:]
        states = Counter(
            row[0] for row in deployment.query("SELECT state FROM task_instance WHERE run_id = ?", (RUN_ID,))
        )
        assert (state, states) == ("success", Counter({"success": BATCHES})), deployment.tail_logs()

        # Every trigger orphaned by the kill was started again by the survivor and its task ended
        # well (the run succeeded); it was still waiting when the victim died.
        assert orphans, "the killed triggerer ran no trigger"
        assert seen, f"the survivor was never seen holding an orphaned trigger: {orphans}"
        orphaned_tasks = {task for task, _ in orphans.values()}
        started = started_by(deployment, orphaned_tasks)
        moved = {key: started.get(key, set()) for key in orphans.values()}
        assert all(jobs == {victim_id, survivor_id} for jobs in moved.values()), moved
        fired = started_by(deployment, orphaned_tasks, "Trigger fired event")
        finished_on = {key: fired.get(key, set()) for key in orphans.values()}
        assert all(jobs == {survivor_id} for jobs in finished_on.values()), finished_on

        # Nothing paid twice: one POST per edit, each prompt once, every one a created job.
        posts = [
            r
            for r in emulator.control("GET", "requests")
            if r["origin"] == "gateway" and r["method"] == "POST"
        ]
        assert len(posts) == EDITS, Counter(r["status"] for r in posts)
        assert Counter(r["status"] for r in posts) == Counter({202: EDITS})
        prompts = Counter(r["body"]["prompt"] for r in posts)
        assert len(prompts) == EDITS, [p for p, n in prompts.items() if n > 1]

        # Each batch's images, beside its manifest (_manifest.jsonl) and progress file (_batch.json).
        outputs = sorted(p for p in output_root.rglob("*") if p.is_file() and not p.name.startswith("_"))
        assert len(outputs) == EDITS, outputs
        for output in outputs:
            with Image.open(output) as image:
                image.verify()
        print(
            f"postgres triggerers: {EDITS} edits, spread {dict(owners)} over triggerer jobs, "
            f"{len(orphans)} orphaned by the kill, taken over {taken_over_at - killed_at:.1f}s after it; "
            f"migrate {migrated - begun:.0f}s, spread at {spread_at - begun:.0f}s, "
            f"run done at {finished - begun:.0f}s"
        )
