"""
The catalogue on the parts a catalogue team runs: the CeleryExecutor with a Redis broker and two
Celery workers (each its own process, working folder and name), PostgreSQL as the metadata database
and Celery's result backend, two triggerers, and outputs on S3 (SeaweedFS, a real S3-compatible
store, reached through an ``aws`` connection whose extra sets ``endpoint_url``). One deployment serves
the module's three tests; it is started and stopped here and leaves no process behind.

1. The nightly catalogue example DAG over three nights, ``output_root`` on S3: night 1 pays once per
   SKU, night 2 (nothing changed) pays nothing and copies every SKU from night 1's folder, night 3
   pays only for the changed SKUs; the summary and the contact sheet on S3 link to what is there.
2. A Celery worker SIGKILLed mid-wave, once a later wave's submits are accepted and recorded and
   before the outputs are downloaded: the retry runs on the other worker, resumes from the manifest on
   S3 and the stored request ids, and the gateway sees one POST per item; no temporary object is left.
3. The same for one ``FireRedEditOperator`` whose ``output_dir`` is on S3: one POST, one output.

Where a part cannot be had (PostgreSQL, Redis, SeaweedFS, the Celery or Amazon provider) the tests
skip naming it; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from tests.e2e.conftest import EXAMPLE_DAGS, TEST_DAGS, deployment_skip_reason, needs_task_state_store

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from firered_devtools.celery import CeleryDeployment
    from firered_devtools.postgres import PostgresCluster
    from firered_devtools.seaweedfs import SeaweedS3

    from airflow_provider_firered.emulator.process import EmulatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900), needs_task_state_store]

CATALOGUE = "firered_catalogue_reedit"
BATCH_DAG = "firered_celery_s3_batch"
SINGLE_DAG = "firered_celery_s3_single"
DAG_IDS = (CATALOGUE, BATCH_DAG, SINGLE_DAG)
S3_CONN = "firered_s3"
BUCKET = "firered"
#: Where the DAGs write, as Airflow names it (the connection id in the URL's user part).
S3_ROOT = f"s3://{S3_CONN}@{BUCKET}"
#: The Variable where an admin lists the prefixes a catalogue run's path params may name.
ALLOWED_PREFIXES = "firered_catalogue_allowed_prefixes"
BATCH_SIZE = 3
POOL_SLOTS = 2
#: The crash test's batch: items, and jobs at the gateway at once (so it takes more than one wave).
CRASH_EDITS = 6
CRASH_IN_FLIGHT = 3
#: A CDN request hangs this long while the worker is killed (the retry's are not delayed).
HANG_SECONDS = 40
#: How long the crash tests' jobs run (the catalogue's take 3 s).
CRASH_PROCESSING_SECONDS = 8
#: The catalogue SKUs whose prompt changes on night 3.
CHANGED = ("SHOE-1002", "TEE-3001")
#: Setting up the whole deployment; each test, and each night of the catalogue, then has its own.
SETUP_SECONDS = 360
TEST_SECONDS = 300
NIGHT_SECONDS = 180


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(part: str, reason: object) -> NoReturn:
    """Skip, naming the missing part; in CI (``CI=true``) fail instead."""
    message = f"{part} is not available here: {reason}"
    if _ci():
        pytest.fail(f"in CI the Celery and S3 deployment must run: {message}")
    pytest.skip(message)


@dataclass
class Stack:
    """The running deployment and what the tests observe it through."""

    deployment: CeleryDeployment
    emulator: EmulatorProcess
    store: SeaweedS3


def _dags_folder(folder: Path) -> Path:
    """The catalogue example (unchanged: linked, with its sample manifest) beside this test's DAGs."""
    folder.mkdir()
    for source in (
        EXAMPLE_DAGS / "firered_catalogue_reedit.py",
        EXAMPLE_DAGS / "firered_catalogue_manifest.csv",
        TEST_DAGS / "firered_celery_s3.py",
    ):
        (folder / source.name).symlink_to(source)
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL, Redis, SeaweedFS, the emulator and the Celery deployment, stopped in the end."""
    reason = deployment_skip_reason()
    if reason:
        pytest.skip(reason)
    for module, part in (
        ("airflow.providers.celery", "apache-airflow-providers-celery"),
        ("airflow.providers.amazon", "apache-airflow-providers-amazon"),
        ("s3fs", "s3fs (apache-airflow-providers-amazon[s3fs])"),
        ("redis", "the redis client (apache-airflow-providers-celery)"),
    ):
        if importlib.util.find_spec(module) is None:
            unavailable(part, "not installed: pip install -e ./devtools")
    from firered_devtools.celery import CeleryDeployment
    from firered_devtools.deployment import start_emulator
    from firered_devtools.postgres import PostgresCluster, PostgresUnavailable
    from firered_devtools.processes import non_loopback_listeners
    from firered_devtools.redis_server import RedisServer, RedisUnavailable
    from firered_devtools.seaweedfs import SeaweedS3, SeaweedUnavailable

    deadline = time.monotonic() + SETUP_SECONDS
    tmp = tmp_path_factory.mktemp("celery-s3")
    with contextlib.ExitStack() as parts:
        try:
            postgres = PostgresCluster().start()
        except PostgresUnavailable as err:
            unavailable("PostgreSQL", err)
        parts.callback(postgres.stop)
        try:
            redis = RedisServer().start()
        except RedisUnavailable as err:
            unavailable("Redis", err)
        parts.callback(redis.stop)
        try:
            store = SeaweedS3(buckets=(BUCKET,)).start()
        except SeaweedUnavailable as err:
            unavailable("SeaweedFS", err)
        parts.callback(store.stop)

        deployment = CeleryDeployment(
            home=tmp / "airflow-home",
            dags_folder=_dags_folder(tmp / "dags"),
            broker_url=redis.url,
            workers=2,
            worker_concurrency=2,
            triggerers=2,
        )

        def stop_deployment() -> None:
            left = deployment.stop_all()
            assert not left, f"processes still running after the tests: {left}"

        parts.callback(stop_deployment)
        deployment.use_database(postgres.url)
        # --no-render: the emulator fetches no input itself, so every CDN request is the batch's own.
        emulator = start_emulator(
            deployment, "--queued-seconds", "1", "--processing-seconds", "3", "--no-render"
        )
        image = emulator.sample_images[0]
        deployment.env.update(
            {
                "AIRFLOW_CONN_FIRERED_DEFAULT": json.dumps(
                    {"conn_type": "firered", "host": emulator.gateway_url, "password": "celery-s3-key"}
                ),
                f"AIRFLOW_CONN_{S3_CONN.upper()}": store.connection(),
                "AIRFLOW_VAR_FIRERED_IMAGE": image,
                "AIRFLOW_VAR_FIRERED_IMAGE_BASE_URL": image.rsplit("/", 1)[0] + "/",
                "AIRFLOW_VAR_FIRERED_BATCH_SIZE": str(BATCH_SIZE),
                "AIRFLOW_VAR_FIRERED_S3_ROOT": S3_ROOT,
                # As an admin would: the catalogue's output_root and manifest params may name these.
                f"AIRFLOW_VAR_{ALLOWED_PREFIXES.upper()}": json.dumps(
                    [f"{S3_ROOT}/catalogue", f"{S3_ROOT}/manifests"]
                ),
                # Runs start only when triggered here (no cron run: the scheduler skips schedules).
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "FIRERED_CELERY_S3_EDITS": str(CRASH_EDITS),
                "FIRERED_CELERY_S3_IN_FLIGHT": str(CRASH_IN_FLIGHT),
                "AIRFLOW__CORE__PARALLELISM": "4",
                # A dead task is noticed after 10 s without a heartbeat, instead of 5 minutes.
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "10",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            }
        )
        deployment.cli("db", "migrate", timeout=deadline - time.monotonic())
        deployment.cli("pools", "set", "firered_gateway", str(POOL_SLOTS), "FireRed", "--include-deferred")
        deployment.start_all(triggerers=2)
        deployment.wait_healthy(timeout=deadline - time.monotonic())
        for dag_id in DAG_IDS:
            deployment.wait_parsed(dag_id, deadline)
        errors = deployment.query("SELECT filename, stacktrace FROM import_error")
        assert not errors, errors
        servers = [*deployment.titles(), redis.pid, store.pid, postgres_pid(postgres)]
        assert not non_loopback_listeners(servers), non_loopback_listeners(servers)
        yield Stack(deployment, emulator, store)


def postgres_pid(cluster: PostgresCluster) -> int | None:
    """The PostgreSQL server's pid, from its data directory."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    return None


# -- observing ----------------------------------------------------------------------------------------


def posts(emulator: EmulatorProcess) -> list[dict[str, Any]]:
    """Every submit POST the gateway saw, whatever its answer."""
    return [
        r
        for r in emulator.control("GET", "requests")
        if r["origin"] == "gateway" and r["method"] == "POST" and not r["path"].startswith("/_emulator")
    ]


def _body(record: dict[str, Any]) -> dict[str, Any]:
    body = record["body"]
    return dict(json.loads(body) if isinstance(body, (str, bytes)) else body)


def prompts_sent(emulator: EmulatorProcess) -> list[str]:
    return [str(_body(r).get("prompt")) for r in posts(emulator)]


def s3_key(url: str) -> str:
    """The object key of an ``s3://[conn@]bucket/key`` URL (of this module's bucket)."""
    parts = urlsplit(url)
    assert parts.scheme == "s3", url
    assert parts.hostname == BUCKET, url
    return parts.path.lstrip("/")


def s3_bytes(store: SeaweedS3, key: str) -> bytes:
    return bytes(store.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())


def assert_image(store: SeaweedS3, key: str) -> None:
    with Image.open(io.BytesIO(s3_bytes(store, key))) as image:
        image.verify()


def assert_no_temporary_object(store: SeaweedS3, prefix: str) -> None:
    names = [key.rsplit("/", 1)[-1] for key in store.keys(BUCKET, prefix)]
    assert names, f"nothing under {prefix}"
    temporary = [n for n in names if n.startswith(".") or n.endswith((".part", ".tmp"))]
    assert not temporary, temporary


def _json(value: Any) -> Any:
    """An XCom value read from the metadata DB (decoded already, or JSON text)."""
    if isinstance(value, (bytes, memoryview)):
        value = bytes(value).decode()
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def xcom(deployment: CeleryDeployment, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
    ((value,),) = deployment.query(
        "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = ?",
        (dag_id, run_id, task_id, key),
    )
    return _json(value)


def task_states(deployment: CeleryDeployment, dag_id: str, run_id: str) -> dict[tuple[str, int], str]:
    rows = deployment.query(
        "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
        (dag_id, run_id),
    )
    return {(str(task), int(index)): str(state) for task, index, state in rows}


def edit_ti(deployment: CeleryDeployment, dag_id: str, run_id: str) -> tuple[str | None, int, str | None]:
    """The ``edit`` task instance's state, try number and host (the worker's name)."""
    rows = deployment.query(
        "SELECT state, try_number, hostname FROM task_instance"
        " WHERE dag_id = ? AND run_id = ? AND task_id = 'edit'",
        (dag_id, run_id),
    )
    if not rows:
        return None, 0, None
    state, try_number, host = rows[0]
    return (str(state) if state else None), int(try_number or 0), (str(host) if host else None)


def wait_until(what: str, check: Any, stack: Stack, deadline: float, pause: float = 0.3) -> Any:
    """Wait until ``check()`` returns something true; return it."""
    while not (result := check()):
        assert time.monotonic() < deadline, f"never {what}:\n{stack.deployment.tail_logs()}"
        stack.deployment.check_running()
        time.sleep(pause)
    return result


def trigger(
    deployment: CeleryDeployment, dag_id: str, run_id: str, conf: dict[str, Any] | None = None
) -> None:
    """Trigger a run of ``dag_id`` (unpaused from its creation) named ``run_id``."""
    deployment.cli(
        "dags", "trigger", dag_id, "--run-id", run_id, *(("--conf", json.dumps(conf)) if conf else ())
    )


def task_log(deployment: CeleryDeployment, dag_id: str, run_id: str, task_id: str, attempt: int) -> str:
    folder = deployment.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob(f"attempt={attempt}.log*")))


def two_workers(stack: Stack) -> dict[str, Any]:
    """Make sure two workers run and are ready (one replacing a worker killed by an earlier test)."""
    deployment = stack.deployment
    running = deployment.running_workers()
    if len(running) < 2:
        deployment.start_workers(2 - len(running))
    deployment.wait_workers_ready(list(deployment.running_workers().values()))
    return deployment.running_workers()


def kill_worker_of(stack: Stack, dag_id: str, run_id: str) -> str:
    """SIGKILL the worker running the ``edit`` task (with the task): a worker machine lost."""
    _, _, host = edit_ti(stack.deployment, dag_id, run_id)
    workers = stack.deployment.running_workers()
    assert host in workers, f"the task runs on {host!r}, not on a worker of {sorted(workers)}"
    stack.deployment.kill(workers[host])
    return str(host)


def assert_retried_elsewhere(stack: Stack, dag_id: str, run_id: str, killed: str) -> None:
    """The run succeeded on a later try, on another worker than the one killed."""
    state = stack.deployment.wait_run(run_id, time.monotonic() + TEST_SECONDS)
    ti_state, try_number, host = edit_ti(stack.deployment, dag_id, run_id)
    context = f"{state=} {ti_state=} {try_number=} {host=}\n{stack.deployment.tail_logs()}"
    assert (state, ti_state) == ("success", "success"), context
    assert try_number >= 2, context
    assert host != killed, context
    assert host in stack.deployment.running_workers(), context
    earlier = stack.deployment.query(
        "SELECT try_number, hostname FROM task_instance_history"
        " WHERE dag_id = ? AND run_id = ? AND task_id = 'edit'",
        (dag_id, run_id),
    )
    assert (1, killed) in {(int(t), str(h)) for t, h in earlier}, earlier


# -- the tests ------------------------------------------------------------------------------------------


def _sample_rows() -> list[dict[str, str]]:
    with (EXAMPLE_DAGS / "firered_catalogue_manifest.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["sku", "image_url", "prompt"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def check_night(stack: Stack, run_id: str) -> tuple[str, dict[str, Any]]:
    """The night's run folder and summary, after checking every output and the contact sheet on S3."""
    deployment, store = stack.deployment, stack.store
    run_folder = str(xcom(deployment, CATALOGUE, run_id, "load_manifest", "run_folder"))
    assert run_folder.startswith(f"{S3_ROOT}/catalogue/"), run_folder
    prefix = s3_key(run_folder)
    summary = json.loads(s3_bytes(store, f"{prefix}/summary.json"))
    assert summary["run_id"] == run_id, summary
    keys = set(store.keys(BUCKET, prefix + "/"))
    for number, item in enumerate(summary["items"]):
        (output,) = item["outputs"]
        key = s3_key(output)
        assert key.startswith(f"{prefix}/batch-{number // BATCH_SIZE:04d}/{item['key']}/"), (output, prefix)
        assert key in keys, (key, sorted(keys))
        assert_image(store, key)
    sheet = s3_bytes(store, f"{prefix}/index.html").decode()
    links = [unquote(link) for link in re.findall(r'<img src="([^"]+)"', sheet) if "://" not in link]
    assert len(links) == len(summary["items"]), links
    assert all(f"{prefix}/{link}" in keys for link in links), (links, sorted(keys))
    assert_no_temporary_object(store, prefix + "/")
    return run_folder, summary


def test_catalogue_three_nights_on_s3(stack: Stack) -> None:
    started = time.monotonic()
    deadline = started + 3 * NIGHT_SECONDS
    deployment, emulator, store = stack.deployment, stack.emulator, stack.store
    rows = _sample_rows()
    night3 = [
        {**row, "prompt": row["prompt"] + ", in winter light"} if row["sku"] in CHANGED else row
        for row in rows
    ]
    client = store.client()
    client.put_object(Bucket=BUCKET, Key="manifests/night-1.csv", Body=_csv(rows))
    client.put_object(Bucket=BUCKET, Key="manifests/night-3.csv", Body=_csv(night3))
    conf = {
        "poll_interval": 1,
        "output_root": f"{S3_ROOT}/catalogue/",
        "parameters": {"output_format": "png"},
    }

    nights: list[tuple[str, dict[str, Any], list[str]]] = []
    for night, manifest in ((1, "night-1.csv"), (2, "night-1.csv"), (3, "night-3.csv")):
        run_id = f"celery_s3_night_{night}"
        before = len(posts(emulator))
        trigger(deployment, CATALOGUE, run_id, {**conf, "manifest": f"{S3_ROOT}/manifests/{manifest}"})
        state = deployment.wait_run(run_id, min(deadline, time.monotonic() + NIGHT_SECONDS))
        states = task_states(deployment, CATALOGUE, run_id)
        assert state == "success", f"night {night}: {states}\n{deployment.tail_logs()}"
        sent = [str(_body(r)["prompt"]) for r in posts(emulator)[before:]]
        run_folder, summary = check_night(stack, run_id)
        nights.append((run_folder, summary, sent))
        print(f"night {night}: {time.monotonic() - started:.0f}s, {len(sent)} POST(s), {run_folder}")

    (folder1, first, sent1), (folder2, second, sent2), (folder3, third, sent3) = nights
    total = len(rows)
    # Night 1 pays once per SKU.
    assert Counter(sent1) == Counter(row["prompt"] for row in rows), sent1
    assert (first["total"], first["edited"], first["reused"], first["failed"]) == (total, total, 0, 0), first
    paid = {item["key"]: item["request_id"] for item in first["items"]}
    # Night 2, nothing changed: nothing sent, every SKU copied from night 1's folder.
    assert sent2 == [], sent2
    assert (second["edited"], second["reused"], second["failed"]) == (0, total, 0), second
    assert {item["key"]: item["request_id"] for item in second["items"]} == paid
    assert len({folder1, folder2, folder3}) == 3
    assert f"reusing results from {folder1}" in task_log(
        deployment, CATALOGUE, "celery_s3_night_2", "load_manifest", 1
    )
    # Night 3 pays only for the changed SKUs, and copies the rest.
    assert Counter(sent3) == Counter(row["prompt"] for row in night3 if row["sku"] in CHANGED), sent3
    assert (third["edited"], third["reused"], third["failed"]) == (len(CHANGED), total - len(CHANGED), 0), (
        third
    )
    for item in third["items"]:
        if item["key"] in CHANGED:
            assert item["outcome"] == "edited", item
            assert item["request_id"] != paid[item["key"]], item
        else:
            assert item["outcome"] == "reused", item
            assert item["request_id"] == paid[item["key"]], item
    print(f"three nights in {time.monotonic() - started:.0f}s")


def test_batch_worker_killed_mid_wave_resumes_on_the_other_worker(stack: Stack) -> None:
    started = time.monotonic()
    deadline = started + TEST_SECONDS
    deployment, emulator, store = stack.deployment, stack.emulator, stack.store
    two_workers(stack)
    run_id = "celery_s3_batch_crash"
    ours = [f"Celery S3 batch edit {n}" for n in range(CRASH_EDITS)]
    manifest_key = "crash-batch/_manifest.jsonl"

    def sent() -> list[str]:
        return [p for p in prompts_sent(emulator) if p in ours]

    # Jobs long enough that the CDN is made to hang while the first wave waits.
    emulator.control("POST", "timings", {"processing_seconds": CRASH_PROCESSING_SECONDS})
    trigger(deployment, BATCH_DAG, run_id)
    # The first wave is submitted and waits in a triggerer: from now on the CDN hangs, so the task
    # resumed for the next wave submits it, records it and then hangs before any download.
    wait_until("deferred", lambda: edit_ti(deployment, BATCH_DAG, run_id)[0] == "deferred", stack, deadline)
    assert len(sent()) == CRASH_IN_FLIGHT, sent()
    emulator.control(
        "POST", "faults", {"target": "cdn", "kind": "delay", "delay_seconds": HANG_SECONDS, "count": 100}
    )

    def recorded() -> bool:
        """A later wave was accepted, and every accepted request id is in the manifest on S3."""
        if edit_ti(deployment, BATCH_DAG, run_id)[0] != "running" or len(sent()) <= CRASH_IN_FLIGHT:
            return False
        with contextlib.suppress(Exception):
            lines = s3_bytes(store, manifest_key).decode().splitlines()
            ids = [json.loads(line).get("request_id") for line in lines if line.strip()]
            return sum(1 for i in ids if i) == len(sent())
        return False

    wait_until("a second wave recorded", recorded, stack, deadline)
    submitted_before_kill = len(sent())
    downloaded = [k for k in store.keys(BUCKET, "crash-batch/") if not k.rsplit("/", 1)[-1].startswith("_")]
    killed = kill_worker_of(stack, BATCH_DAG, run_id)
    emulator.control("DELETE", "faults")

    def retried() -> bool:
        _, try_number, host = edit_ti(deployment, BATCH_DAG, run_id)
        return try_number >= 2 and host not in (None, killed)

    wait_until("retried", retried, stack, deadline)
    # The retry has its worker: a replacement for the one lost starts meanwhile, for the next test.
    deployment.start_worker()
    assert_retried_elsewhere(stack, BATCH_DAG, run_id, killed)

    # One POST per item: the retry resumed every recorded request and submitted only the rest.
    assert Counter(sent()) == Counter(ours), Counter(sent())
    retry_log = task_log(deployment, BATCH_DAG, run_id, "edit", 2)
    resumed = re.search(r"(\d+) to wait for, (\d+) to submit", retry_log)
    assert resumed, retry_log[-4000:]
    assert int(resumed.group(2)) == CRASH_EDITS - submitted_before_kill, resumed.group(0)
    # Every output on S3 is a valid image, one per item, and no temporary object is left.
    keys = store.keys(BUCKET, "crash-batch/")
    outputs = sorted(k for k in keys if not k.rsplit("/", 1)[-1].startswith("_"))
    assert sorted({k.split("/")[1] for k in outputs}) == [f"SKU-{n:02d}" for n in range(CRASH_EDITS)], outputs
    assert len(outputs) == CRASH_EDITS, outputs
    for key in outputs:
        assert_image(store, key)
    assert_no_temporary_object(store, "crash-batch/")
    lines = [json.loads(line) for line in s3_bytes(store, manifest_key).decode().splitlines() if line.strip()]
    assert Counter(entry["outcome"] for entry in lines) == Counter({"edited": CRASH_EDITS}), lines
    print(
        f"batch crash: {submitted_before_kill} submitted before the kill of {killed}, "
        f"{len(downloaded)} downloaded by then; done in {time.monotonic() - started:.0f}s"
    )


def test_single_edit_worker_killed_resumes_on_the_other_worker(stack: Stack) -> None:
    started = time.monotonic()
    deadline = started + TEST_SECONDS
    deployment, emulator, store = stack.deployment, stack.emulator, stack.store
    two_workers(stack)
    run_id = "celery_s3_single_crash"
    prompt = "Celery S3 single edit"

    emulator.control("POST", "timings", {"processing_seconds": CRASH_PROCESSING_SECONDS})
    trigger(deployment, SINGLE_DAG, run_id)
    wait_until("deferred", lambda: edit_ti(deployment, SINGLE_DAG, run_id)[0] == "deferred", stack, deadline)
    emulator.control(
        "POST", "faults", {"target": "cdn", "kind": "delay", "delay_seconds": HANG_SECONDS, "count": 1}
    )
    # Resumed after the wait: the download of its output hangs, and its worker dies.
    wait_until("resumed", lambda: edit_ti(deployment, SINGLE_DAG, run_id)[0] == "running", stack, deadline)
    time.sleep(2)
    killed = kill_worker_of(stack, SINGLE_DAG, run_id)
    emulator.control("DELETE", "faults")
    assert_retried_elsewhere(stack, SINGLE_DAG, run_id, killed)

    assert prompts_sent(emulator).count(prompt) == 1
    request_id = str(xcom(deployment, SINGLE_DAG, run_id, "edit", "request_id"))
    retry_log = task_log(deployment, SINGLE_DAG, run_id, "edit", 2)
    assert f"Request {request_id} already COMPLETED" in retry_log, retry_log[-4000:]
    keys = store.keys(BUCKET, "crash-single/")
    assert keys == [f"crash-single/{request_id}_0.png"], keys
    assert_image(store, keys[0])
    print(f"single crash: killed {killed}; done in {time.monotonic() - started:.0f}s")
