"""
The nightly catalogue example on a real Airflow deployment: api-server, scheduler (LocalExecutor),
dag-processor and triggerer as separate processes, SQLite, the FireRed emulator on loopback.

The run is watched from outside, the way an operator would: task states from the metadata DB (read
only), requests from the emulator's record. Half-way through the waits the triggerer is killed
(SIGKILL, a crash) and a new one is started: every edit must still finish, and each SKU must have been
submitted exactly once.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from airflow_provider_firered.testing.deployment import AirflowDeployment, start_emulator, trigger_logs
from tests.e2e.conftest import EXAMPLE_DAGS

if TYPE_CHECKING:
    from airflow_provider_firered.emulator.process import EmulatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

DAG_ID = "firered_catalogue_reedit"
EDIT = "edit"
RUN_ID = "e2e_catalogue"
POOL_SLOTS = 4
TRIGGER_CLASSPATH = "airflow_provider_firered.triggers.firered.FireRedStatusTrigger"
QUEUED_SECONDS = 1.0
PROCESSING_SECONDS = 6.0
#: The whole scenario must finish within this (the pytest timeout above is the hard stop).
BUDGET_SECONDS = 360
#: How long the triggerer stays dead: long enough for the waiting jobs to complete meanwhile.
TRIGGERER_DOWN_SECONDS = 8.0
OUTPUT_FORMAT = "webp"
#: A recognisable key: after the run, logs, metadata tables and CDN requests are scanned for it.
API_KEY = "sk-firered-E2E-7f3a9c0d5e1b44c2"


def _sample_skus() -> list[str]:
    with (EXAMPLE_DAGS / "firered_catalogue_manifest.csv").open(encoding="utf-8") as handle:
        return [row["sku"] for row in csv.DictReader(handle)]


@dataclass
class Observation:
    """What was seen of the run while it went."""

    states: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    classpaths: set[str] = field(default_factory=set)
    #: The stored kwargs of every trigger seen (a trigger's row is deleted once it fires).
    trigger_kwargs: set[str] = field(default_factory=set)
    #: (seconds since epoch, map indexes of edit TIs in ``running``) at every sample.
    running: list[tuple[float, set[int]]] = field(default_factory=list)
    max_deferred: int = 0
    max_in_pool: int = 0
    killed_at: float | None = None
    #: The triggerer job killed, and the edits whose triggers it was running then.
    killed_job: int | None = None
    running_at_kill: set[int] = field(default_factory=set)
    restarted_at: float | None = None
    run_state: str | None = None

    def record(self, index: int, state: str) -> None:
        seen = self.states[index]
        if not seen or seen[-1] != state:
            seen.append(state)


def sample(deployment: AirflowDeployment, seen: Observation) -> list[tuple[Any, ...]]:
    """One look at the edit TIs (and their triggers) of the run; returns the rows."""
    rows = deployment.query(
        "SELECT ti.map_index, ti.state, ti.try_number, t.classpath, t.triggerer_id, t.kwargs"
        " FROM task_instance ti LEFT JOIN trigger t ON t.id = ti.trigger_id"
        " WHERE ti.dag_id = ? AND ti.run_id = ? AND ti.task_id = ? AND ti.map_index >= 0",
        (DAG_ID, RUN_ID, EDIT),
    )
    now = time.time()
    for index, state, _try, classpath, _triggerer, kwargs in rows:
        seen.record(index, str(state))
        if classpath:
            seen.classpaths.add(str(classpath))
            seen.trigger_kwargs.add(str(kwargs))
    states = [str(r[1]) for r in rows]
    seen.running.append((now, {r[0] for r in rows if r[1] == "running"}))
    seen.max_deferred = max(seen.max_deferred, states.count("deferred"))
    seen.max_in_pool = max(seen.max_in_pool, sum(s in ("queued", "running", "deferred") for s in states))
    return rows


def processing_windows(emulator: EmulatorProcess) -> dict[str, tuple[float, float]]:
    """Each submitted job's PROCESSING window (epoch seconds), keyed by its prompt."""
    windows = {}
    for record in emulator.control("GET", "submissions"):
        created = float(record["time"])
        prompt = str(_body(record)["prompt"])
        windows[prompt] = (created + QUEUED_SECONDS, created + QUEUED_SECONDS + PROCESSING_SECONDS)
    return windows


def test_catalogue_on_a_real_deployment(deployment: AirflowDeployment, tmp_path: Path) -> None:
    started = time.monotonic()
    deadline = started + BUDGET_SECONDS
    skus = _sample_skus()
    assert len(skus) > POOL_SLOTS > deployment.parallelism, "the sample must outnumber pool and workers"

    emulator = start_emulator(
        deployment,
        "--queued-seconds",
        str(QUEUED_SECONDS),
        "--processing-seconds",
        str(PROCESSING_SECONDS),
    )
    base_url = emulator.sample_images[0].rsplit("/", 1)[0] + "/"
    output_root = tmp_path / "catalogue"
    deployment.env.update(
        {
            "AIRFLOW_CONN_FIRERED_DEFAULT": json.dumps(
                {"conn_type": "firered", "host": emulator.gateway_url, "password": API_KEY}
            ),
            "AIRFLOW_VAR_FIRERED_IMAGE_BASE_URL": base_url,
            "AIRFLOW_VAR_FIRERED_OUTPUT_ROOT": str(output_root),
        }
    )

    deployment.cli("db", "migrate")
    deployment.cli("pools", "set", "firered_gateway", str(POOL_SLOTS), "FireRed jobs", "--include-deferred")
    deployment.start_all()
    deployment.wait_healthy(timeout=deadline - time.monotonic())
    deployment.wait_parsed(DAG_ID, deadline)
    errors = deployment.query("SELECT filename, stacktrace FROM import_error")
    assert not errors, errors

    conf = {"poll_interval": 1, "parameters": {"output_format": OUTPUT_FORMAT}}
    deployment.trigger(DAG_ID, RUN_ID, conf)

    seen = Observation()
    while True:
        assert time.monotonic() < deadline, (
            f"run not finished in {BUDGET_SECONDS}s: {dict(seen.states)}\n{deployment.tail_logs()}"
        )
        deployment.check_running()
        rows = sample(deployment, seen)
        # Kill the triggerer once it is running the triggers of two waiting edits: a crash mid-wait.
        if seen.killed_at is None:
            jobs = {r[4] for r in rows if r[1] == "deferred" and r[4] is not None}
            started_by_job = trigger_logs(deployment, DAG_ID, RUN_ID, EDIT)
            for job in jobs:
                waiting = {
                    r[0]
                    for r in rows
                    if r[1] == "deferred" and r[4] == job and job in started_by_job.get(r[0], ())
                }
                if len(waiting) >= 2:
                    triggerer = deployment.current_triggerer()
                    assert triggerer is not None
                    deployment.kill(triggerer)
                    seen.killed_at, seen.killed_job, seen.running_at_kill = time.time(), job, waiting
                    break
        if seen.killed_at and not seen.restarted_at and time.time() - seen.killed_at > TRIGGERER_DOWN_SECONDS:
            deployment.start_triggerer()
            seen.restarted_at = time.time()
        state = deployment.run_state(RUN_ID)
        if state in ("success", "failed"):
            seen.run_state = state
            break
        time.sleep(0.5)

    final = {
        r[0]: (r[1], r[2])
        for r in deployment.query(
            "SELECT map_index, state, try_number FROM task_instance"
            " WHERE dag_id = ? AND run_id = ? AND task_id = ? AND map_index >= 0",
            (DAG_ID, RUN_ID, EDIT),
        )
    }
    others = deployment.query(
        "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id != ?",
        (DAG_ID, RUN_ID, EDIT),
    )
    context = f"states seen: {dict(seen.states)}\nfinal: {final} {others}\n{deployment.tail_logs()}"

    # Every SKU was edited, and every edit ended in success.
    assert seen.run_state == "success", context
    assert sorted(final) == list(range(len(skus))), context
    assert all(state == "success" for state, _ in final.values()), context
    assert dict(others) == {"load_manifest": "success", "summarise": "success"}, context

    # Every mapped edit waited deferred, in FireRedStatusTrigger, run by the triggerer.
    assert all("deferred" in seen.states[i] for i in final), context
    assert seen.classpaths == {TRIGGER_CLASSPATH}, seen.classpaths
    started_by = trigger_logs(deployment, DAG_ID, RUN_ID, EDIT)
    assert sorted(started_by) == sorted(final), f"triggers started per edit: {started_by}"

    # Waiting held no worker slot: more edits waited at once than there are workers...
    assert seen.max_deferred > deployment.parallelism, seen.max_deferred
    # ... the pool (deferred tasks included) capped the jobs in flight ...
    assert seen.max_in_pool <= POOL_SLOTS, seen.max_in_pool
    # ... and no edit was `running` while its job was processing at the gateway.
    windows = processing_windows(emulator)
    prompts = _sample_prompts()
    for index, sku in enumerate(skus):
        begin, end = windows[prompts[sku]]
        busy = [t for t, running in seen.running if index in running and begin + 0.5 < t < end - 0.5]
        assert not busy, f"{sku}: edit[{index}] was running while its job was processing, at {busy}"

    # The crash: the triggerer died running waits, a new one finished them, nothing was re-posted.
    assert seen.killed_at, "the triggerer was never killed mid-wait"
    assert seen.restarted_at, "no new triggerer was started"
    for index in seen.running_at_kill:
        took_over = started_by[index] - {seen.killed_job}
        assert took_over, f"edit[{index}]: no triggerer took over after job {seen.killed_job} was killed"
    assert all(try_number == 1 for _, try_number in final.values()), final
    posts = [
        r
        for r in emulator.control("GET", "requests")
        if r["origin"] == "gateway" and r["method"] == "POST" and not r["path"].startswith("/_emulator")
    ]
    assert len(posts) == len(skus), [(r["path"], r["status"]) for r in posts]
    per_prompt = Counter(_body(record)["prompt"] for record in emulator.control("GET", "submissions"))
    assert per_prompt == Counter(_sample_prompts().values()), per_prompt

    # The outputs: one folder per SKU under the run date, each file an image of the asked format.
    summary_files = list(output_root.glob("*/summary.json"))
    assert len(summary_files) == 1, summary_files
    summary = json.loads(summary_files[0].read_text())
    assert summary["failed"] == [], summary
    assert summary["succeeded"] == len(skus), summary
    for row in summary["skus"]:
        assert row["output_paths"], row
        for output in row["output_paths"]:
            path = Path(output)
            assert path.parent == summary_files[0].parent / row["sku"], path
            with Image.open(path) as image:
                assert image.format == OUTPUT_FORMAT.upper(), (path, image.format)

    # A user clears the edits: that is a request for new edits, so each SKU is submitted again.
    # Airflow 3.3 matches --task-regex as a substring, 3.0 as a regex: a plain name works on both.
    deployment.cli("tasks", "clear", DAG_ID, "--task-regex", EDIT, "--yes")
    while True:
        assert time.monotonic() < deadline, f"cleared edits not done:\n{deployment.tail_logs()}"
        deployment.check_running()
        cleared = deployment.query(
            "SELECT state FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = ?",
            (DAG_ID, RUN_ID, EDIT),
        )
        if cleared and all(state == "success" for (state,) in cleared):
            break
        time.sleep(0.5)
    again = Counter(_body(record)["prompt"] for record in emulator.control("GET", "submissions"))
    assert again == Counter({prompt: 2 for prompt in _sample_prompts().values()}), again

    assert_key_nowhere(deployment, emulator)
    # Stored in clear (no Fernet key here), so the scan reads what a trigger really carries.
    assert any("firered_conn_id" in kwargs for kwargs in seen.trigger_kwargs), seen.trigger_kwargs
    assert not [kwargs for kwargs in seen.trigger_kwargs if API_KEY in kwargs], "key in trigger kwargs"

    print(
        f"e2e finished in {time.monotonic() - started:.0f}s; triggerer job {seen.killed_job} killed while "
        f"running edits {sorted(seen.running_at_kill)}; at most {seen.max_deferred} edits deferred at once; "
        f"states seen: {dict(seen.states)}"
    )


def assert_key_nowhere(deployment: AirflowDeployment, emulator: EmulatorProcess) -> None:
    """The key is in no Airflow log, no metadata row a user can read, and no request off the gateway."""
    logs = [*deployment.home.joinpath("logs").rglob("*.log"), *deployment.logs.glob("*.log")]
    logs = [path for path in logs if path.name != "emulator.log"]  # the gateway's own side
    assert len(logs) > 10, logs
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


def _sample_prompts() -> dict[str, str]:
    with (EXAMPLE_DAGS / "firered_catalogue_manifest.csv").open(encoding="utf-8") as handle:
        return {row["sku"]: row["prompt"] for row in csv.DictReader(handle)}


def _body(record: dict[str, Any]) -> dict[str, Any]:
    """A recorded request's JSON body, whether the record holds it decoded or as text."""
    body = record["body"]
    return dict(json.loads(body) if isinstance(body, (str, bytes)) else body)
