"""
The nightly catalogue example, in batches, on a real Airflow deployment: api-server, scheduler
(LocalExecutor), dag-processor and triggerer as separate processes, SQLite, the FireRed emulator on
loopback.

The run is watched from outside, the way an operator would: task states from the metadata DB (read
only), requests from the emulator's record. The sample catalogue's five SKUs are three batches, one
more than the ``firered_gateway`` pool's slots: the pool must hold the third back. Every batch waits
deferred in the triggerer; each SKU is submitted exactly once; the summary, the contact sheet and the
images are where the DAG says. A second run with nothing changed submits nothing and reuses every SKU.
Each run names its ``output_root`` in its params, accepted because the admin's
``firered_catalogue_allowed_prefixes`` Variable (set with ``airflow variables set``) allows it.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import airflow
import pytest
from firered_devtools.deployment import AirflowDeployment, start_emulator
from PIL import Image

from tests.e2e.conftest import EXAMPLE_DAGS

if TYPE_CHECKING:
    from airflow_provider_firered.emulator.process import EmulatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(540)]

#: Airflow 3.1+ has human-in-the-loop operators: the catalogue example then has its `review` task.
HAS_REVIEW = tuple(int(part) for part in airflow.__version__.split(".")[:2]) >= (3, 1)
DAG_ID = "firered_catalogue_reedit"
EDIT = "edit_batch"
RUNS = ("e2e_catalogue", "e2e_catalogue_again")
BATCH_SIZE = 2
POOL_SLOTS = 2
TRIGGER_CLASSPATH = "airflow_provider_firered.triggers.firered_batch.FireRedBatchStatusTrigger"
QUEUED_SECONDS = 1.0
#: Long enough that a batch task has left its worker before its trigger fires (a loaded machine is slow).
PROCESSING_SECONDS = 6.0
#: The whole scenario must finish within this (the pytest timeout above is the hard stop): generous,
#: since `make test` runs other streams beside it on 2 cores and this checks what happens, not how fast.
BUDGET_SECONDS = 480
OUTPUT_FORMAT = "webp"
#: A recognisable key: after the run, logs, metadata tables and CDN requests are scanned for it.
API_KEY = "sk-firered-E2E-7f3a9c0d5e1b44c2"
#: The Variable where an admin lists the prefixes a run's path params may name.
ALLOWED_PREFIXES = "firered_catalogue_allowed_prefixes"


def _sample_prompts() -> dict[str, str]:
    with (EXAMPLE_DAGS / "firered_catalogue_manifest.csv").open(encoding="utf-8") as handle:
        return {row["sku"]: row["prompt"] for row in csv.DictReader(handle)}


@dataclass
class Observation:
    """What was seen of a run's batch tasks while it went."""

    states: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    classpaths: set[str] = field(default_factory=set)
    #: The stored kwargs of every trigger seen (a trigger's row is deleted once it fires).
    trigger_kwargs: set[str] = field(default_factory=set)
    max_in_pool: int = 0

    def record(self, index: int, state: str) -> None:
        seen = self.states[index]
        if not seen or seen[-1] != state:
            seen.append(state)


def watch(deployment: AirflowDeployment, run_id: str, deadline: float) -> Observation:
    """Sample the run's batch tasks (and their triggers) until the run ends."""
    seen = Observation()
    while True:
        assert time.monotonic() < deadline, (
            f"{run_id} not finished: {dict(seen.states)}\n{deployment.tail_logs()}"
        )
        deployment.check_running()
        rows = deployment.query(
            "SELECT ti.map_index, ti.state, t.classpath, t.kwargs"
            " FROM task_instance ti LEFT JOIN trigger t ON t.id = ti.trigger_id"
            " WHERE ti.dag_id = ? AND ti.run_id = ? AND ti.task_id = ? AND ti.map_index >= 0",
            (DAG_ID, run_id, EDIT),
        )
        for index, state, classpath, kwargs in rows:
            seen.record(index, str(state))
            if classpath:
                seen.classpaths.add(str(classpath))
                seen.trigger_kwargs.add(str(kwargs))
        held = sum(str(r[1]) in ("queued", "running", "deferred") for r in rows)
        seen.max_in_pool = max(seen.max_in_pool, held)
        if deployment.run_state(run_id) in ("success", "failed"):
            return seen
        time.sleep(0.3)


def task_states(deployment: AirflowDeployment, run_id: str) -> dict[tuple[str, int], str]:
    rows = deployment.query(
        "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
        (DAG_ID, run_id),
    )
    return {(str(task), int(index)): str(state) for task, index, state in rows}


def posts(emulator: EmulatorProcess) -> list[dict[str, Any]]:
    """Every submit POST the gateway saw, whatever its answer."""
    return [
        r
        for r in emulator.control("GET", "requests")
        if r["origin"] == "gateway" and r["method"] == "POST" and not r["path"].startswith("/_emulator")
    ]


def summary_of(output_root: Path, run_id: str, deployment: AirflowDeployment) -> tuple[Path, dict[str, Any]]:
    """The run folder (named by the run's date and time) and its summary.json."""
    found = [
        (path.parent, json.loads(path.read_text()))
        for path in output_root.glob("*/summary.json")
        if json.loads(path.read_text()).get("run_id") == run_id
    ]
    assert len(found) == 1, (found, deployment.tail_logs())
    return found[0]


def test_catalogue_in_batches_on_a_real_deployment(deployment: AirflowDeployment, tmp_path: Path) -> None:
    started = time.monotonic()
    deadline = started + BUDGET_SECONDS
    prompts = _sample_prompts()
    batches = -(-len(prompts) // BATCH_SIZE)
    assert batches > POOL_SLOTS, "the sample must make more batches than the pool has slots"

    emulator = start_emulator(
        deployment, "--queued-seconds", str(QUEUED_SECONDS), "--processing-seconds", str(PROCESSING_SECONDS)
    )
    output_root = tmp_path / "catalogue"
    deployment.env.update(
        {
            "AIRFLOW_CONN_FIRERED_DEFAULT": json.dumps(
                {"conn_type": "firered", "host": emulator.gateway_url, "password": API_KEY}
            ),
            "AIRFLOW_VAR_FIRERED_IMAGE_BASE_URL": emulator.sample_images[0].rsplit("/", 1)[0] + "/",
            "AIRFLOW_VAR_FIRERED_BATCH_SIZE": str(BATCH_SIZE),
        }
    )
    deployment.cli("db", "migrate")
    deployment.cli(
        "pools", "set", "firered_gateway", str(POOL_SLOTS), "FireRed batches", "--include-deferred"
    )
    # As an admin would: the runs' output_root param is accepted only under these prefixes.
    deployment.cli("variables", "set", ALLOWED_PREFIXES, json.dumps([str(output_root)]))
    deployment.start_all()
    deployment.wait_healthy(timeout=deadline - time.monotonic())
    deployment.wait_parsed(DAG_ID, deadline)
    errors = deployment.query("SELECT filename, stacktrace FROM import_error")
    assert not errors, errors

    conf = {
        "poll_interval": 1,
        "parameters": {"output_format": OUTPUT_FORMAT},
        "output_root": str(output_root),
    }
    ready = time.monotonic()
    deployment.trigger(DAG_ID, RUNS[0], conf)
    seen = watch(deployment, RUNS[0], deadline)

    states = task_states(deployment, RUNS[0])
    context = f"states seen: {dict(seen.states)}\nfinal: {states}\n{deployment.tail_logs()}"
    assert deployment.run_state(RUNS[0]) == "success", context
    assert states == {
        ("load_manifest", -1): "success",
        **{(EDIT, index): "success" for index in range(batches)},
        ("summarise", -1): "success",
        # Airflow 3.1+: the review is off by default, so it approves by itself; 3.0 has no review.
        **({("review", -1): "success"} if HAS_REVIEW else {}),
        ("publish", -1): "success",
    }, context
    # Every batch waited deferred, in the batch trigger, and the pool held the batches back.
    assert all("deferred" in seen.states[index] for index in range(batches)), context
    assert seen.classpaths == {TRIGGER_CLASSPATH}, seen.classpaths
    assert seen.max_in_pool <= POOL_SLOTS, seen.max_in_pool
    # One POST per SKU.
    sent = posts(emulator)
    assert len(sent) == len(prompts), [(r["path"], r["status"]) for r in sent]
    per_prompt = Counter(_body(record)["prompt"] for record in sent)
    assert per_prompt == Counter(prompts.values()), per_prompt

    # The outputs, the summary and the contact sheet, in the run folder.
    run_folder, summary = summary_of(output_root, RUNS[0], deployment)
    assert (summary["total"], summary["edited"], summary["failed"]) == (len(prompts), len(prompts), 0), (
        summary
    )
    assert [b["batch"] for b in summary["batches"]] == [f"batch-{i:04d}" for i in range(batches)]
    for number, item in enumerate(summary["items"]):
        (output,) = item["outputs"]
        assert Path(output).parent == run_folder / f"batch-{number // BATCH_SIZE:04d}" / item["key"], output
        with Image.open(output) as image:
            assert image.format == OUTPUT_FORMAT.upper(), (output, image.format)
    sheet = (run_folder / "index.html").read_text(encoding="utf-8")
    links = [
        unquote(link) for link in re.findall(r'<img src="([^"]+)"', sheet) if not link.startswith("http")
    ]
    assert len(links) == len(prompts)
    assert all((run_folder / link).is_file() for link in links), links

    # A second run, nothing changed: nothing is submitted, every SKU is copied from the first run.
    first_done = time.monotonic()
    deployment.trigger(DAG_ID, RUNS[1], conf)
    watch(deployment, RUNS[1], deadline)
    assert deployment.run_state(RUNS[1]) == "success", deployment.tail_logs()
    assert len(posts(emulator)) == len(prompts)
    again_folder, again = summary_of(output_root, RUNS[1], deployment)
    assert again_folder != run_folder
    assert (again["edited"], again["reused"], again["failed"]) == (0, len(prompts), 0), again

    assert_key_nowhere(deployment, emulator)
    assert any("firered_conn_id" in kwargs for kwargs in seen.trigger_kwargs), seen.trigger_kwargs
    assert not [kwargs for kwargs in seen.trigger_kwargs if API_KEY in kwargs], "key in trigger kwargs"
    print(
        f"e2e finished in {time.monotonic() - started:.0f}s (deployment ready {ready - started:.0f}s, "
        f"first run {first_done - ready:.0f}s, second run and checks {time.monotonic() - first_done:.0f}s); "
        f"states seen: {dict(seen.states)}"
    )


def assert_key_nowhere(deployment: AirflowDeployment, emulator: EmulatorProcess) -> None:
    """The key is in no Airflow log, no metadata row a user can read, and no request off the gateway."""
    logs = [*deployment.home.joinpath("logs").rglob("*.log"), *deployment.logs.glob("*.log")]
    logs = [path for path in logs if path.name != "emulator.log"]  # the gateway's own side
    assert len(logs) > 5, logs
    leaked = [str(path) for path in logs if API_KEY in path.read_text(errors="replace")]
    assert not leaked, f"key found in {leaked}"
    for table, column in (
        ("xcom", "value"),
        ("rendered_task_instance_fields", "rendered_fields"),
        ("task_instance", "next_kwargs"),
    ):
        rows = deployment.query(f"SELECT {column} FROM {table}")
        assert not [row for row in rows if API_KEY in str(row[0])], f"key found in {table}.{column}"
    off_gateway = [r for r in emulator.control("GET", "requests") if r["origin"] != "gateway"]
    assert off_gateway, "the CDN served nothing?"
    # The admin API shows secret header values as ***: look for the key's header itself.
    key_header = "ocp-apim-subscription-key"
    assert not [r for r in off_gateway if key_header in {h.lower() for h in r["headers"]}], "key sent to CDN"


def _body(record: dict[str, Any]) -> dict[str, Any]:
    """A recorded request's JSON body, whether the record holds it decoded or as text."""
    body = record["body"]
    return dict(json.loads(body) if isinstance(body, (str, bytes)) else body)
