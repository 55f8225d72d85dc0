"""A batch's spending limit (``max_paid_edits``) and its dry run, through real Airflow and the emulator."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.batch.manifest import read_manifest
from tests.conftest import run_dag_source
from tests.integration.operators.test_firered import in_log, xcom
from tests.integration.operators.test_firered_batch import (
    FAULTY_BATCH_DAG,
    KILLED_WHILE_DOWNLOADING,
    RESUMES,
    edits,
    posts,
    run_batch,
    run_dag_on,
)

if TYPE_CHECKING:
    from airflow_provider_firered.emulator import Emulator

pytestmark = pytest.mark.usefixtures("airflow_db", "firered_conn")


def outcomes(root: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for entry in read_manifest(root) or []:
        found[entry.outcome] = found.get(entry.outcome, 0) + 1
    return found


def test_a_budget_of_five_sends_five_and_records_the_rest_over_budget(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=0.3)
    root = tmp_path / "run"
    ti = run_batch(
        "batch_budget_five",
        edits=edits(firered_emulator, 30),
        output_root=str(root),
        max_paid_edits=5,
        max_failed=25,
        poll_interval=1,
        deferrable=True,
    )
    out = capfd.readouterr().out
    assert ti.state == "success"
    assert posts(firered_emulator) == 5
    assert outcomes(root) == {"edited": 5, "over_budget": 25}
    result = xcom(ti)
    assert {name: result[name] for name in ("total", "edited", "over_budget", "failed", "paid")} == {
        "total": 30,
        "edited": 5,
        "over_budget": 25,
        "failed": 0,
        "paid": 5,
    }
    assert result["dry_run"] is False
    assert in_log("25 item(s) not sent: max_paid_edits=5 is spent (5 paid submits", out)
    assert in_log("Raise max_paid_edits to send them", out)
    over = [e for e in read_manifest(root) or [] if e.outcome == "over_budget"]
    assert {e.status for e in over} == {"OVER_BUDGET"}
    assert not any((root / e.key).exists() for e in over)


def test_a_bad_budget_is_refused_before_anything_is_sent(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ti = run_batch(
        "batch_budget_zero",
        edits=edits(firered_emulator, 2),
        output_root=str(tmp_path / "run"),
        max_paid_edits=0,
        retries=2,
        retry_delay=0,
    )
    out = capfd.readouterr().out
    assert (ti.state, ti.try_number) == ("failed", 1)
    assert in_log("max_paid_edits: must be a whole number of at least 1, or None for no limit, got 0", out)
    assert posts(firered_emulator) == 0


def budget_dag(root: Path, items: list[dict[str, Any]]) -> str:
    return FAULTY_BATCH_DAG.format(
        edits=items,
        dag_id="batch_budget_cleared",
        root=str(root),
        classes="",
        operator="FireRedBatchEditOperator",
        options="retries=2, max_paid_edits=5, deferrable=True,",
    )


@pytest.mark.skipif(not RESUMES, reason="a clear keeping its DAG run is run the 3.3 way here")
def test_the_budget_spans_every_try_and_a_clear_sends_nothing_more(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=0.3)
    root = tmp_path / "run"
    source = budget_dag(root, edits(firered_emulator, 30))
    first = run_dag_on("batch_budget_cleared", source, keep_the_run=False)
    out = capfd.readouterr().out
    # Over budget is final: Airflow's retries would have no more budget than this try had.
    assert (first.state, first.try_number) == ("failed", 1)
    assert posts(firered_emulator) == 5
    assert outcomes(root) == {"edited": 5, "over_budget": 25}
    assert in_log("FireRedBatchFailedError: 25 item(s) of the batch failed, more than max_failed=0", out)
    assert in_log("not sent: this task's max_paid_edits=5 paid submits are spent (25 item(s) over it)", out)

    cleared = run_dag_on("batch_budget_cleared", source, keep_the_run=True)
    out = capfd.readouterr().out
    assert (cleared.state, cleared.try_number) == ("failed", 2)
    assert posts(firered_emulator) == 5  # what the first try paid counts: nothing more is sent
    assert outcomes(root) == {"over_budget": 30}
    assert in_log("5 paid submits by earlier tries (max_paid_edits=5)", out)


#: Try 1's worker is lost once the budget is spent: the gateway accepted five edits, their ids were
#: stored, and the manifest recording them (and the items held back) was never written.
DIES_ONCE_THE_BUDGET_IS_SPENT = """
import airflow_provider_firered.batch.run as batch_module


class DiesOnceTheBudgetIsSpent(FireRedBatchEditOperator):
    def execute(self, context):
        if context["ti"].try_number != 1:
            return super().execute(context)
        write_manifest = batch_module.write_manifest

        def lost(root, entries):
            raise RuntimeError("worker lost")

        batch_module.write_manifest = lost
        try:
            return super().execute(context)
        finally:
            batch_module.write_manifest = write_manifest
"""


@pytest.mark.skipif(not RESUMES, reason="task_state_store needs Airflow 3.3+")
def test_a_retry_after_the_worker_died_once_the_budget_was_spent_sends_nothing(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=0.3)
    root = tmp_path / "run"
    source = FAULTY_BATCH_DAG.format(
        edits=edits(firered_emulator, 12),
        dag_id="batch_budget_died_stored",
        root=str(root),
        classes=DIES_ONCE_THE_BUDGET_IS_SPENT,
        operator="DiesOnceTheBudgetIsSpent",
        options="retries=1, max_paid_edits=5, max_failed=7, deferrable=False,",
    )
    (ti,) = run_dag_source("batch_budget_died_stored", source).get_task_instances()
    assert (ti.state, ti.try_number) == ("success", 2)
    # The stored ids alone told the retry what was paid: it waited for them and sent nothing.
    assert posts(firered_emulator) == 5
    assert outcomes(root) == {"edited": 5, "over_budget": 7}
    assert xcom(ti)["paid"] == 5


def test_a_retry_after_the_worker_died_while_downloading_sends_nothing_past_the_budget(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=0.3)
    root = tmp_path / "run"
    source = FAULTY_BATCH_DAG.format(
        edits=edits(firered_emulator, 12),
        dag_id="batch_budget_died_manifest",
        root=str(root),
        classes=KILLED_WHILE_DOWNLOADING,
        operator="ManifestAlone",
        options="retries=1, max_paid_edits=5, max_failed=7, deferrable=False,",
    )
    (ti,) = run_dag_source("batch_budget_died_manifest", source).get_task_instances()
    assert (ti.state, ti.try_number) == ("success", 2)
    # The manifest alone (no task_state_store): it recorded the five paid submits before the loss.
    assert posts(firered_emulator) == 5
    assert outcomes(root) == {"edited": 5, "over_budget": 7}


def test_a_dry_run_plans_the_night_and_sends_nothing(firered_emulator: Emulator, tmp_path: Path) -> None:
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=0.3)
    items = edits(firered_emulator, 6)
    first = run_batch("batch_plan_night_1", edits=items, output_root=str(tmp_path / "n1"), poll_interval=1)
    assert first.state == "success"
    assert posts(firered_emulator) == 6

    changed = [dict(item) for item in items]
    changed[2]["prompt"] = "Make it red"
    plan_root = tmp_path / "plan"
    plan = run_batch(
        "batch_plan_dry_run",
        edits=[*changed, {"key": "EMPTY", "prompt": " ", "images": items[0]["images"]}],
        output_root=str(plan_root),
        previous=str(tmp_path / "n1"),
        dry_run=True,
    )
    assert plan.state == "success"
    assert posts(firered_emulator) == 6  # no POST during the dry run
    result = xcom(plan)
    assert result["dry_run"] is True
    wanted = {"total": 7, "would_edit": 1, "would_reuse": 5, "invalid": 1, "paid": 0, "edited": 0}
    assert {name: result[name] for name in wanted} == wanted
    entries = {e.key: e for e in read_manifest(plan_root) or []}
    assert all(e.dry_run for e in entries.values())
    assert (entries["SKU-0002"].outcome, entries["SKU-0002"].status) == ("would_edit", "CHANGED")
    assert (entries["SKU-0000"].outcome, entries["SKU-0000"].status) == ("would_reuse", "UNCHANGED")
    assert (entries["EMPTY"].outcome, entries["EMPTY"].status) == ("invalid", "INVALID")
    assert sorted(p.name for p in plan_root.iterdir()) == ["_manifest.jsonl"]  # nothing else written

    # A later real night given the plan as an earlier run takes nothing from it: the plan holds a
    # would_reuse line for every unchanged item, and later roots win, yet the items are copied from n1.
    third = run_batch(
        "batch_plan_night_3",
        edits=changed,
        output_root=str(tmp_path / "n3"),
        previous=[str(tmp_path / "n1"), str(plan_root)],
        poll_interval=1,
    )
    assert third.state == "success"
    assert (xcom(third)["edited"], xcom(third)["reused"]) == (1, 5)
    assert posts(firered_emulator) == 7
    # The plan alone as the earlier run: nothing to reuse, so every item is edited (and the night goes on).
    alone = run_batch(
        "batch_plan_night_4",
        edits=items[:2],
        output_root=str(tmp_path / "n4"),
        previous=str(plan_root),
        poll_interval=1,
    )
    assert (alone.state, xcom(alone)["edited"], xcom(alone)["reused"]) == ("success", 2, 0)
    assert posts(firered_emulator) == 9


def test_a_dry_run_plans_the_budget_too(firered_emulator: Emulator, tmp_path: Path) -> None:
    plan = run_batch(
        "batch_plan_budget",
        edits=edits(firered_emulator, 4),
        output_root=str(tmp_path / "plan"),
        max_paid_edits=3,
        force=True,
        dry_run=True,
    )
    assert plan.state == "success"
    assert posts(firered_emulator) == 0
    assert (xcom(plan)["would_edit"], xcom(plan)["over_budget"]) == (3, 1)
    entries = read_manifest(tmp_path / "plan") or []
    assert [e.status for e in entries] == ["FORCED", "FORCED", "FORCED", "OVER_BUDGET"]
    assert "would not be sent: over max_paid_edits=3 (1 item(s) over it)" in str(entries[-1].error)


def test_a_dry_run_never_writes_over_a_real_runs_manifest(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "n1"
    first = run_batch(
        "batch_plan_over_1", edits=edits(firered_emulator, 2), output_root=str(root), poll_interval=1
    )
    assert first.state == "success"
    before = (root / "_manifest.jsonl").read_bytes()
    plan = run_batch(
        "batch_plan_over_2",
        edits=edits(firered_emulator, 2),
        output_root=str(root),
        dry_run=True,
        retries=2,
        retry_delay=0,
    )
    out = capfd.readouterr().out
    assert (plan.state, plan.try_number) == ("failed", 1)
    assert in_log("holds the manifest of a batch that sent edits; a dry run writes its plan to another", out)
    assert (root / "_manifest.jsonl").read_bytes() == before
    assert posts(firered_emulator) == 2


# -- the catalogue example -------------------------------------------------------------------------------


def test_the_catalogue_plans_a_night_then_spends_within_its_budget(
    firered_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.test_example_dags import (
        CATALOGUE,
        FIRST_RUN,
        _catalogue_env,
        _run,
        _states,
        install,
    )

    module = install(CATALOGUE)
    _catalogue_env(firered_emulator, monkeypatch, tmp_path)
    manifest = tmp_path / "manifest.csv"
    output_root = tmp_path / "out"
    images = {"SHOE-1": "shoe.png", "MUG-1": "mug.png", "TEE-1": "tshirt.png"}

    def write_manifest(prompts: dict[str, str]) -> None:
        lines = ["sku,image_url,prompt", *(f"{sku},{images[sku]},{p}" for sku, p in prompts.items())]
        manifest.write_text("\n".join(lines) + "\n")

    def night(when: datetime, **conf: Any) -> tuple[dict[str, str], Path]:
        run = _run(module, when, manifest=str(manifest), output_root=str(output_root), batch_size=2, **conf)
        folder = output_root / (
            when.strftime("%Y-%m-%dT%H%M%SZ") + ("-dry-run" if conf.get("dry_run") else "")
        )
        return {f"{task}/{index}": state for (task, index), state in _states(run).items()}, folder

    rows = {"SHOE-1": "Make the shoe red", "MUG-1": "Make the mug blue", "TEE-1": "Make the shirt grey"}
    write_manifest(rows)
    states, _ = night(FIRST_RUN + timedelta(days=10))
    assert set(states.values()) == {"success"}
    assert len(firered_emulator.submit_attempts()) == 3

    # One changed SKU, as a plan: nothing sent, the plan in the summary and on the contact sheet.
    write_manifest({**rows, "MUG-1": "Make the mug yellow"})
    states, plan = night(FIRST_RUN + timedelta(days=11), dry_run=True)
    assert set(states.values()) == {"success"}
    assert len(firered_emulator.submit_attempts()) == 3
    summary = json.loads((plan / "summary.json").read_text())
    assert (summary["dry_run"], summary["would_edit"], summary["would_reuse"], summary["paid"]) == (
        True,
        1,
        2,
        0,
    )
    page = (plan / "index.html").read_text()
    assert "Dry run: this is a plan" in page
    assert "would_edit: <b>1</b>" in page

    # The real night reuses from the first night, not from the plan; a budget of 1 a batch is enough.
    # (dag.test() keeps a run's params on the DAG object: each night names every param it relies on.)
    states, folder = night(FIRST_RUN + timedelta(days=12), max_paid_edits=1, dry_run=False)
    assert set(states.values()) == {"success"}
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["edited"], summary["reused"], summary["over_budget"], summary["paid"]) == (1, 2, 0, 1)
    assert len(firered_emulator.submit_attempts()) == 4

    # Everything changed, a budget of 1 a batch (the Variable this time): batch-0000 edits one of its two.
    write_manifest({sku: prompt + " again" for sku, prompt in rows.items()})
    monkeypatch.setenv("AIRFLOW_VAR_FIRERED_MAX_PAID_EDITS", "1")
    states, folder = night(FIRST_RUN + timedelta(days=13), max_paid_edits=None, dry_run=False)
    assert states["summarise/-1"] == "failed"
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["edited"], summary["over_budget"], summary["paid"]) == (2, 1, 2)
    assert len(firered_emulator.submit_attempts()) == 6
    (over,) = [item for item in summary["failures"]]
    assert over["status"] == "OVER_BUDGET"
    assert "raise max_paid_edits" in str(over["error"])
    assert "over_budget: <b>1</b>" in (folder / "index.html").read_text()


def test_the_catalogue_refuses_a_bad_budget_variable(
    firered_emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from tests.integration.test_example_dags import (
        CATALOGUE,
        FIRST_RUN,
        _catalogue_env,
        _run,
        _states,
        install,
    )

    module = install(CATALOGUE)
    _catalogue_env(firered_emulator, monkeypatch, tmp_path)
    monkeypatch.setenv("AIRFLOW_VAR_FIRERED_MAX_PAID_EDITS", "-3")
    run = _run(module, FIRST_RUN + timedelta(days=20), output_root=str(tmp_path / "out"))
    out = capfd.readouterr().out
    assert _states(run)[("load_manifest", -1)] == "failed"
    assert in_log(
        "max_paid_edits: must be a whole number of at least 1, or empty for no limit, got '-3'", out
    )
    assert len(firered_emulator.submit_attempts()) == 0


def test_the_catalogue_date_helpers_still_name_real_nights_only() -> None:
    from tests.integration.test_example_dags import load_module

    module = load_module(Path(__file__).resolve().parents[3] / "example_dags" / "firered_catalogue_reedit.py")
    when = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc)
    name = module.run_folder_name("manual", when, when)
    assert module.RUN_FOLDER.fullmatch(name)
    assert not module.RUN_FOLDER.fullmatch(name + "-dry-run")  # a plan's folder is never an earlier night
