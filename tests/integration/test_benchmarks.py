"""The benchmark scripts run (at tiny sizes) and report what docs/benchmarks.md says they report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

if TYPE_CHECKING:
    from airflow.sdk.definitions.mappedoperator import MappedOperator

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.timeout(200)
def test_trigger_cost_compares_three_waiters(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
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
        timeout=190,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert [r["contender"] for r in results] == ["floor", "firered", "generic"]
    for r in results:
        assert r["succeeded"] == r["n"] == 20
        assert r["rounds"] == 2  # the median of two runs
        # Jobs run 3 poll intervals: each waiter reads each job's status about 3-4 times.
        assert 2 <= r["polls_per_job"] <= 5, r
        assert r["cpu_per_poll_us"] > 0
        assert 0 <= r["latency_p50"] <= r["latency_p95"] < 3, r
    assert "FireRedStatusTrigger" in done.stdout
    assert "| 20 | generic |" in done.stdout


def test_trigger_cost_refuses_a_profile_without_pyinstrument(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("pyinstrument") is not None:
        pytest.skip("pyinstrument is installed here")
    done = run("trigger_cost.py", "--profile", str(tmp_path), timeout=60)
    assert done.returncode == 2
    assert "--profile needs pyinstrument" in done.stderr


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
