"""
The path of one deferred edit and of one batch item through the package, counted from a real run.

A profiler follows a ``dag.test()`` run against the emulator and records, in call order, each first
call from one of the provider's files into another (a call edge seen again, as in the next poll, is the
same step and is not counted twice). An unprofiled run of the same DAG goes first, so that what happens
once per process (imports, class bodies, caches filled) is not taken for the edit's path: the figures
are the same whichever tests ran before. ``docs/architecture.md`` states the figures; this test measures
them and checks the document says what the code does.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.version_compat import AIRFLOW_V_3_3_PLUS
from tests.conftest import DAGS_FOLDER, run_dag_source

if TYPE_CHECKING:
    from airflow_provider_firered.emulator.server import Emulator

# Profiling every call of a dag.test() run takes minutes on a 2-core machine.
pytestmark = [pytest.mark.usefixtures("airflow_db"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "airflow_provider_firered"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

SINGLE = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    FireRedEditOperator(
        task_id="edit",
        prompt="a red shoe",
        images=[{image!r}],
        output_dir={out!r},
        deferrable=True,
        poll_interval=1,
    )
"""

BATCH = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    FireRedBatchEditOperator(
        task_id="edit",
        edits=[{{"key": "sku-1", "prompt": "a red shoe", "images": [{image!r}]}}],
        output_root={out!r},
        poll_interval=1,
    )
"""


class PathRecorder:
    """Record the provider's files in call order: each new (caller file, callee file, function) once."""

    def __init__(self, dag_file: Path) -> None:
        self.dag_file = str(dag_file)
        self.steps: list[str] = []
        self._edges: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def profile(self, frame: Any, event: str, _arg: Any) -> None:
        # Module and class bodies run on import: not the edit's path.
        if event != "call" or not frame.f_code.co_flags & inspect.CO_NEWLOCALS:
            return
        callee = _package_file(frame.f_code.co_filename)
        if callee is None or self._in_another_dag_file(frame):
            return
        caller = frame.f_back
        while caller is not None and _package_file(caller.f_code.co_filename) is None:
            caller = caller.f_back
        source = "" if caller is None else _package_file(caller.f_code.co_filename) or ""
        if source == callee:
            return
        edge = (source, callee, frame.f_code.co_name)
        with self._lock:
            if edge not in self._edges:
                self._edges.add(edge)
                self.steps.append(callee)

    def _in_another_dag_file(self, frame: Any) -> bool:
        """Tell whether ``dag.test()`` is parsing another test's DAG file from the dags folder here."""
        while frame is not None:
            code = frame.f_code
            if code.co_name == "<module>" and code.co_filename.startswith(DAGS_FOLDER):
                return bool(code.co_filename != self.dag_file)
            frame = frame.f_back
        return False

    def figures(self) -> dict[str, Any]:
        """The files crossed and the returns to a file already visited, in call order."""
        visited: list[str] = []
        returns = 0
        last = ""
        for step in self.steps:
            if step == last:
                continue
            if step in visited:
                returns += 1
            else:
                visited.append(step)
            last = step
        return {"files": len(visited), "returns": returns, "order": visited}


def _package_file(filename: str) -> str | None:
    path = Path(filename)
    if PACKAGE not in path.parents or "emulator" in path.parts:
        return None
    return str(path.relative_to(PACKAGE))


def _recorded(template: str, dag_id: str, image: str, out: Path) -> PathRecorder:
    warm_id = f"{dag_id}_warm"
    warm = run_dag_source(warm_id, template.format(dag_id=warm_id, image=image, out=str(out / "warm")))
    assert warm.get_task_instances()[0].state == "success"
    recorder = PathRecorder(Path(DAGS_FOLDER) / f"{dag_id}.py")
    threading.setprofile(recorder.profile)
    sys.setprofile(recorder.profile)
    try:
        run = run_dag_source(dag_id, template.format(dag_id=dag_id, image=image, out=str(out / "run")))
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert run.get_task_instances()[0].state == "success"
    return recorder


#: Long enough that the first status read, however slow the profiled run, finds the job unfinished:
#: with the emulator's default 0.25 s, whether it had ended by then depended on the machine's load.
JOB_SECONDS = 3.0


@pytest.fixture
def emulator_image(firered_emulator: Emulator) -> str:
    firered_emulator.set_timings(queued_seconds=0.5, processing_seconds=JOB_SECONDS - 0.5)
    return firered_emulator.sample_images[0]


def _documented(kind: str) -> tuple[int, int]:
    text = ARCHITECTURE.read_text()
    match = re.search(rf"<!-- path:{kind} files=(\d+) returns=(\d+) -->", text)
    assert match, f"docs/architecture.md states no figures for the {kind} path"
    return int(match.group(1)), int(match.group(2))


@pytest.mark.usefixtures("firered_conn")
@pytest.mark.parametrize("kind", ["single", "batch"])
def test_the_documented_path_is_the_one_the_code_takes(
    emulator_image: str, tmp_path: Path, kind: str
) -> None:
    if not AIRFLOW_V_3_3_PLUS:
        pytest.skip("docs/architecture.md states the path on the newest Airflow")
    template = SINGLE if kind == "single" else BATCH
    dag_id = f"call_path_{kind}"
    figures = _recorded(template, dag_id, emulator_image, tmp_path).figures()
    print(json.dumps(figures, indent=1))
    files, returns = _documented(kind)
    assert figures["files"] == files, figures
    # A poll that finds the job QUEUED or PROCESSING may take one branch more or less.
    assert abs(figures["returns"] - returns) <= 2, figures
