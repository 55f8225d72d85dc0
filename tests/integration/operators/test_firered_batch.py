"""FireRedBatchEditOperator through real Airflow (``dag.test()``) against the emulator."""

from __future__ import annotations

import importlib.util
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from airflow_provider_firered.batch.manifest import read_manifest
from airflow_provider_firered.emulator import Fault
from tests.conftest import DAGS_FOLDER, run_dag_source
from tests.integration.operators.test_firered import in_log, xcom

if TYPE_CHECKING:
    from airflow_provider_firered.emulator import Emulator

pytestmark = pytest.mark.usefixtures("airflow_db", "firered_conn")

#: Airflow 3.3+ keeps request ids in task_state_store: a retry resumes them.
RESUMES = __import__("airflow").__version__.startswith("3.3")

BATCH_TEMPLATE = """
import json
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

KWARGS = json.loads({kwargs!r})
if "retry_delay" in KWARGS:
    KWARGS["retry_delay"] = timedelta(seconds=KWARGS["retry_delay"])

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    FireRedBatchEditOperator(task_id="batch", **KWARGS)
"""


def run_batch(dag_id: str, **kwargs: Any) -> Any:
    """Write a one-task batch DAG, run it with dag.test(); return its task instance."""
    (ti,) = run_dag_source(
        dag_id, BATCH_TEMPLATE.format(kwargs=json.dumps(kwargs), dag_id=dag_id)
    ).get_task_instances()
    return ti


def edits(emulator: Emulator, count: int, prompt: str = "Make it blue") -> list[dict[str, Any]]:
    image = emulator.sample_images[0]
    return [{"key": f"SKU-{n:04d}", "prompt": f"{prompt} #{n}", "images": [image]} for n in range(count)]


def posts(emulator: Emulator) -> int:
    return len(emulator.submit_attempts())


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
def test_a_batch_in_waves_edits_every_item_once(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str], deferrable: bool
) -> None:
    firered_emulator.set_timings(queued_seconds=0.2, processing_seconds=0.5)
    root = tmp_path / "run"
    ti = run_batch(
        f"batch_waves_{deferrable}",
        edits=edits(firered_emulator, 12),
        output_root=str(root),
        max_in_flight=5,
        poll_interval=1,
        deferrable=deferrable,
    )
    out = capfd.readouterr().out
    assert ti.state == "success"
    assert posts(firered_emulator) == 12
    result = xcom(ti)
    assert result == {
        "total": 12,
        "edited": 12,
        "reused": 0,
        "failed": 0,
        "over_budget": 0,
        "paid": 12,
        "pending": 0,
        "would_edit": 0,
        "would_reuse": 0,
        "would_fail": 0,
        "invalid": 0,
        "dry_run": False,
        "manifest": str(root / "_manifest.jsonl"),
        "output_root": str(root),
    }
    entries = read_manifest(root)
    assert entries is not None
    assert [e.key for e in entries] == [f"SKU-{n:04d}" for n in range(12)]
    for entry in entries:
        assert (entry.outcome, entry.status) == ("edited", "COMPLETED")
        (output,) = entry.outputs
        assert Path(output).parent == root / entry.key
        assert Path(output).name.startswith(str(entry.request_id))
        with Image.open(output) as image:
            image.verify()
    # One line per wave: at most 5 unfinished jobs, every item submitted and collected once, and about
    # 12 / 5 + 1 waits (a wait ends once half the wave ended, so at most twice that).
    pattern = (
        r"Wave: (\d+) output\(s\) collected, (\d+) submitted; (\d+) edited, 0 reused, 0 failed so far; "
        r"(\d+) unfinished at the gateway, (\d+) still to submit"
    )
    # (Airflow 3.0's dag.test() prints each task log line twice.)
    waves = [tuple(map(int, wave)) for wave in dict.fromkeys(re.findall(pattern, out))]
    assert waves[0] == (0, 5, 0, 5, 7)
    assert waves[-1] == (waves[-1][0], 0, 12, 0, 0)
    assert sum(wave[0] for wave in waves) == 12
    assert sum(wave[1] for wave in waves) == 12
    assert all(wave[3] <= 5 for wave in waves)
    assert 4 <= len(waves) <= 7
    # The per-item lines (submitting, submitted, downloaded) are DEBUG in a batch: one line per wave.
    assert "Submitted: request_id=" not in out
    assert "Downloaded " not in out


def test_a_deferred_batch_comes_back_ahead_of_each_wave_and_pays_once(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Jobs longer than the 5 s hold after deferring, so that coming back ahead of them is allowed.
    firered_emulator.set_timings(queued_seconds=0.5, processing_seconds=6.5)
    root = tmp_path / "run"
    ti = run_batch(
        "batch_ahead",
        edits=edits(firered_emulator, 6),
        output_root=str(root),
        max_in_flight=2,
        poll_interval=1,
        deferrable=True,
    )
    out = capfd.readouterr().out
    assert ti.state == "success"
    assert posts(firered_emulator) == 6  # coming back early never sends anything twice
    assert xcom(ti)["edited"] == 6
    # The first wait measures the way back from trigger to task; every later wave's trigger fires that
    # much ahead of the wave's expected end, and the task waits for it on the worker.
    # (In dag.test() the way back takes milliseconds: the task comes back about when the wave is due.)
    back = re.findall(
        r"Back \d+\.\ds (ahead of|after) the wave's expected end: (waiting for|reading) it here", out
    )
    assert back, out[-3000:]
    entries = read_manifest(root)
    assert entries is not None
    assert sorted((e.outcome, e.status) for e in entries) == [("edited", "COMPLETED")] * 6
    for entry in entries:
        (output,) = entry.outputs
        with Image.open(output) as image:
            image.verify()


def test_invalid_items_are_reported_and_never_sent(firered_emulator: Emulator, tmp_path: Path) -> None:
    good = edits(firered_emulator, 3)
    bad = [
        {"key": "../escape", "prompt": "x", "images": good[0]["images"]},
        {"key": "SKU-0000", "prompt": "dup", "images": good[0]["images"]},
        {"key": "EMPTY", "prompt": " ", "images": good[0]["images"]},
        "not a mapping",
    ]
    ti = run_batch(
        "batch_invalid",
        edits=good + bad,
        output_root=str(tmp_path / "run"),
        poll_interval=1,
        max_failed=4,
        deferrable=True,
    )
    assert ti.state == "success"
    assert posts(firered_emulator) == 3
    entries = {e.key: e for e in read_manifest(tmp_path / "run") or []}
    assert xcom(ti)["failed"] == 4
    assert entries["#3"].error is not None
    assert "edits[3].key: must be a plain folder name" in entries["#3"].error
    assert "edits[4].key: 'SKU-0000' is used by an earlier item" in str(entries["#4"].error)
    assert entries["EMPTY"].status == "INVALID"
    assert "edits[5].prompt" in str(entries["EMPTY"].error)
    assert "edits[6]: must be a mapping" in str(entries["#6"].error)
    assert not (tmp_path / "escape").exists()


def test_a_failed_item_never_hides_the_others_and_is_paid_once(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    firered_emulator.set_next_outcome("FAILED", "NSFW content detected")
    ti = run_batch(
        "batch_failed_item",
        edits=edits(firered_emulator, 4),
        output_root=str(tmp_path / "run"),
        poll_interval=1,
        retries=2,
        retry_delay=0,
        deferrable=True,
    )
    out = capfd.readouterr().out
    assert ti.state == "failed"
    assert ti.try_number == 1  # FAILED was charged: no retry would change it
    assert posts(firered_emulator) == 4
    assert in_log("FireRedBatchFailedError: 1 item(s) of the batch failed, more than max_failed=0", out)
    entries = read_manifest(tmp_path / "run") or []
    # Submits run several at once: the emulator fails whichever reached it first.
    (failed,) = [e for e in entries if e.outcome == "failed"]
    assert (failed.status, failed.error) == ("FAILED", "NSFW content detected")
    assert in_log(f"{failed.key}: FAILED NSFW content detected", out)
    assert sorted(e.outcome for e in entries) == ["edited", "edited", "edited", "failed"]


def test_a_retry_resubmits_only_error_items(firered_emulator: Emulator, tmp_path: Path) -> None:
    firered_emulator.set_next_outcome("ERROR", "GPU lost")
    ti = run_batch(
        "batch_error_item",
        edits=edits(firered_emulator, 4),
        output_root=str(tmp_path / "run"),
        poll_interval=1,
        retries=1,
        retry_delay=0,
        deferrable=False,
    )
    assert ti.state == "success"
    assert ti.try_number == 2
    assert posts(firered_emulator) == 5  # the ERROR item again; the three finished ones untouched
    assert xcom(ti)["edited"] == 4


def test_an_unchanged_night_reuses_everything_and_pays_nothing(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    items = edits(firered_emulator, 6)
    first = run_batch("batch_night_1", edits=items, output_root=str(tmp_path / "n1"), poll_interval=1)
    assert first.state == "success"
    assert posts(firered_emulator) == 6
    second = run_batch(
        "batch_night_2",
        edits=items,
        output_root=str(tmp_path / "n2"),
        previous=str(tmp_path / "n1"),
        poll_interval=1,
    )
    assert second.state == "success"
    assert posts(firered_emulator) == 6  # nothing submitted
    assert xcom(second)["reused"] == 6
    for entry in read_manifest(tmp_path / "n2") or []:
        assert entry.outcome == "reused"
        (output,) = entry.outputs
        assert Path(output).parent == tmp_path / "n2" / entry.key
        assert Path(output).read_bytes() == (tmp_path / "n1" / entry.key / Path(output).name).read_bytes()
    # One changed prompt re-edits that item only; force re-edits all.
    changed = [dict(item) for item in items]
    changed[2]["prompt"] = "Make it red"
    third = run_batch(
        "batch_night_3",
        edits=changed,
        output_root=str(tmp_path / "n3"),
        previous=str(tmp_path / "n2"),
        poll_interval=1,
    )
    assert (xcom(third)["edited"], xcom(third)["reused"]) == (1, 5)
    assert posts(firered_emulator) == 7
    forced = run_batch(
        "batch_night_4",
        edits=items,
        output_root=str(tmp_path / "n4"),
        previous=str(tmp_path / "n3"),
        force=True,
        poll_interval=1,
    )
    assert xcom(forced)["edited"] == 6
    assert posts(firered_emulator) == 13


def test_items_still_queued_at_the_start_deadline_fail_for_good(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    firered_emulator.set_timings(queued_seconds=60)
    ti = run_batch(
        "batch_start_timeout",
        edits=edits(firered_emulator, 3),
        output_root=str(tmp_path / "run"),
        poll_interval=1,
        start_timeout=1.5,
        retries=1,
        retry_delay=0,
        deferrable=True,
    )
    assert ti.state == "failed"
    assert ti.try_number == 1
    assert posts(firered_emulator) == 3
    assert {e.status for e in read_manifest(tmp_path / "run") or []} == {"START_TIMEOUT"}


def test_a_timed_out_batch_is_resumed_by_its_retry(firered_emulator: Emulator, tmp_path: Path) -> None:
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=4)
    ti = run_batch(
        "batch_timeout_resumed",
        edits=edits(firered_emulator, 3),
        output_root=str(tmp_path / "run"),
        poll_interval=1,
        timeout=1.5,
        retries=3,
        retry_delay=0,
        deferrable=False,
    )
    assert ti.state == "success"
    assert ti.try_number >= 2
    # The retry waits again for the requests it already submitted: paid once (the manifest keeps them).
    assert posts(firered_emulator) == 3


#: A DAG file running one batch of ``{edits}`` through ``{operator}`` (its class defined in ``{classes}``)
#: with one retry, as a real deployment would after a failed try.
FAULTY_BATCH_DAG = """
import threading
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

EDITS = {edits!r}

{classes}

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    {operator}(
        task_id="batch",
        edits=EDITS,
        output_root={root!r},
        poll_interval=1,
        retry_delay=timedelta(seconds=0),
        {options}
    )
"""

CRASHING_BATCH = """
class CrashingBatch(FireRedBatchEditOperator):
    # The worker is lost right after the gateway accepted two edits, before the wave was recorded.
    def execute(self, context):
        if context["ti"].try_number == 1:
            submit, calls, lock = self.hook.submit_request, [], threading.Lock()

            def submit_then_crash(*args, **kwargs):
                with lock:  # submits run in threads: the third call is the one that crashes
                    calls.append(None)
                    crash = len(calls) == 3
                if crash:
                    raise RuntimeError("worker lost")
                return submit(*args, **kwargs)

            self.hook.submit_request = submit_then_crash
        return super().execute(context)
"""

STORE_FAILS_BATCH = """
class FailingStore:
    # Airflow's API refuses the second write (the first group of ids after the first submit's), as
    # when the scheduler failed the try meanwhile.
    def __init__(self, store):
        self.store, self.writes = store, 0

    def get(self, key):
        return self.store.get(key)

    def set(self, key, value):
        self.writes += 1
        if self.writes == 2:
            raise RuntimeError("API_SERVER_ERROR: 404 Task instance not found")
        return self.store.set(key, value)


class StoreFailsBatch(FireRedBatchEditOperator):
    def execute(self, context):
        if context["ti"].try_number == 1:
            context["task_state_store"] = FailingStore(context["task_state_store"])
        return super().execute(context)
"""


@pytest.mark.skipif(not RESUMES, reason="task_state_store needs Airflow 3.3+")
@pytest.mark.parametrize(
    ("dag_id", "classes", "operator"),
    [
        # Those accepted before the crash (two, and those already on their way in other threads) were
        # kept in task_state_store and resumed; the retry submitted only the rest.
        ("batch_crash_resumed", CRASHING_BATCH, "CrashingBatch"),
        # The gateway accepted submits but Airflow refused to store their ids: the manifest
        # written as the try failed still holds them, so the retry waits for them instead of paying again.
        ("batch_store_fails", STORE_FAILS_BATCH, "StoreFailsBatch"),
    ],
)
def test_requests_accepted_before_a_failed_try_are_resumed_not_paid_again(
    firered_emulator: Emulator, tmp_path: Path, dag_id: str, classes: str, operator: str
) -> None:
    source = FAULTY_BATCH_DAG.format(
        edits=edits(firered_emulator, 5),
        dag_id=dag_id,
        root=str(tmp_path / "run"),
        classes=classes,
        operator=operator,
        options="retries=1,",
    )
    (ti,) = run_dag_source(dag_id, source).get_task_instances()
    assert ti.state == "success"
    assert ti.try_number == 2
    assert posts(firered_emulator) == 5
    assert {e.outcome for e in read_manifest(tmp_path / "run") or []} == {"edited"}


def test_a_saturated_gateway_pauses_the_submits_until_jobs_finish(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # The gateway takes 3 unfinished jobs; the batch allows 6: the 4th submit is refused (429) and the
    # batch waits for jobs to finish instead of sleeping through Retry-After on the worker.
    firered_emulator.max_concurrent_jobs = 3
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=1)
    ti = run_batch(
        "batch_saturated",
        edits=edits(firered_emulator, 6),
        output_root=str(tmp_path / "run"),
        max_in_flight=6,
        poll_interval=1,
        deferrable=True,
    )
    out = capfd.readouterr().out
    assert ti.state == "success"
    accepted = [r for r in firered_emulator.submit_attempts() if r.status == 202]
    refused = [r for r in firered_emulator.submit_attempts() if r.status == 429]
    assert len(accepted) == 6
    assert len({r.body["prompt"] for r in accepted}) == 6  # each item accepted once
    assert refused  # the gateway did refuse, and was not asked again at once
    assert in_log("Submits paused until jobs finish", out)
    assert xcom(ti)["edited"] == 6


def test_a_folder_shared_by_two_runs_is_not_resumed(firered_emulator: Emulator, tmp_path: Path) -> None:
    # The same output_root and the same max_tries, but another task instance: its manifest is not
    # this batch's progress, so nothing of it is taken for done.
    root = str(tmp_path / "shared")
    first = run_batch("batch_shared_1", edits=edits(firered_emulator, 3), output_root=root, poll_interval=1)
    assert first.state == "success"
    second = run_batch(
        "batch_shared_2", edits=edits(firered_emulator, 3, "Make it red"), output_root=root, poll_interval=1
    )
    assert second.state == "success"
    assert posts(firered_emulator) == 6
    assert {e.prompt for e in read_manifest(tmp_path / "shared") or []} == {
        f"Make it red #{n}" for n in range(3)
    }


def test_an_unchanged_item_that_ended_failed_is_not_paid_for_again(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    items = edits(firered_emulator, 3)
    firered_emulator.set_next_outcome("FAILED", "NSFW content detected")
    first = run_batch(
        "batch_failed_night_1", edits=items, output_root=str(tmp_path / "n1"), poll_interval=1, max_failed=1
    )
    assert (first.state, posts(firered_emulator)) == ("success", 3)
    second = run_batch(
        "batch_failed_night_2",
        edits=items,
        output_root=str(tmp_path / "n2"),
        previous=str(tmp_path / "n1"),
        poll_interval=1,
        max_failed=1,
    )
    assert second.state == "success"
    assert posts(firered_emulator) == 3  # the FAILED item is not paid for again, the others are reused
    entries = {e.key: e for e in read_manifest(tmp_path / "n2") or []}
    assert entries["SKU-0000"].status == "FAILED"
    assert "unchanged since an earlier run where it ended FAILED" in str(entries["SKU-0000"].error)
    assert (xcom(second)["reused"], xcom(second)["failed"]) == (2, 1)


def test_an_uncertain_submit_stays_recorded_when_the_wave_fails(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    # The first submit's answer is lost (500: it may have been accepted), then the gateway refuses
    # everything with 429 and nothing is in flight: the batch waits on a timer until its timeout, the
    # other item fails NOT_SUBMITTED, and the manifest keeps the uncertain item so that no retry (nor
    # any wave after the waits) sends it again.
    firered_emulator.inject(Fault(target="submit", status_code=500, count=1))
    firered_emulator.inject(Fault(target="submit", status_code=429, count=None, headers={"Retry-After": "0"}))
    ti = run_batch(
        "batch_uncertain_then_429",
        edits=edits(firered_emulator, 2),
        output_root=str(tmp_path / "run"),
        poll_interval=1,
        timeout=3,
        deferrable=True,
    )
    assert ti.state == "failed"
    entries = {e.key: e for e in read_manifest(tmp_path / "run") or []}
    assert entries["SKU-0000"].status == "UNCERTAIN"
    assert entries["SKU-0000"].outcome == "failed"
    assert (entries["SKU-0001"].outcome, entries["SKU-0001"].status) == ("failed", "NOT_SUBMITTED")
    assert len([r for r in firered_emulator.submit_attempts() if r.body["prompt"] == "Make it blue #0"]) == 1


#: Try 1's items all end ERROR; on try 2 the worker is lost after two resubmits were accepted and
#: stored, before any manifest recorded them (a lost worker writes nothing more).
DIES_WHILE_RESUBMITTING = """
import airflow_provider_firered.batch.run as batch_module


class DiesWhileResubmitting(FireRedBatchEditOperator):
    def execute(self, context):
        if context["ti"].try_number != 2:
            return super().execute(context)
        submit, calls = self.hook.submit_request, []

        def submit_then_die(*args, **kwargs):
            calls.append(None)
            if len(calls) == 3:
                raise RuntimeError("worker lost")
            return submit(*args, **kwargs)

        self.hook.submit_request = submit_then_die
        write_manifest = batch_module.write_manifest
        batch_module.write_manifest = lambda root, entries: str(root)
        try:
            return super().execute(context)
        finally:
            batch_module.write_manifest = write_manifest
"""


@pytest.mark.skipif(not RESUMES, reason="task_state_store needs Airflow 3.3+")
def test_a_stored_id_newer_than_the_manifest_is_resumed_not_paid_again(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    firered_emulator.set_next_outcome("ERROR", "GPU lost", count=4)
    source = FAULTY_BATCH_DAG.format(
        edits=edits(firered_emulator, 4),
        dag_id="batch_newer_stored_id",
        root=str(tmp_path / "run"),
        classes=DIES_WHILE_RESUBMITTING,
        operator="DiesWhileResubmitting",
        options="retries=2, download_threads=1, deferrable=False,",
    )
    (ti,) = run_dag_source("batch_newer_stored_id", source).get_task_instances()
    assert ti.state == "success"
    assert ti.try_number == 3
    # 4 (all ERROR) + 2 resubmits before the loss + the 2 never resubmitted; the two stored ids were
    # waited for, not paid again although the manifest still said ERROR.
    assert posts(firered_emulator) == 8
    entries = read_manifest(tmp_path / "run") or []
    assert [(e.outcome, e.attempt) for e in entries] == [("edited", 2)] * 4


#: Try 1's worker is lost while it downloads the first outputs, right after the next wave's submits.
KILLED_WHILE_DOWNLOADING = """
from pathlib import Path


class KilledWhileDownloading(FireRedBatchEditOperator):
    lose_disk = False

    def execute(self, context):
        if not self.use_store:
            context.pop("task_state_store", None)  # the manifest alone, as before Airflow 3.3
        if context["ti"].try_number == 2 and self.lose_disk:
            # The retry runs on another worker: the local output_root it finds is empty.
            root = Path(self.output_root)
            root.rename(root.with_name(root.name + "-first-worker"))
        self.first_try = context["ti"].try_number == 1
        return super().execute(context)

    def _run(self):
        run = super()._run()
        if self.first_try:
            download = run.download

            def lost(batch, completed):
                if completed:
                    raise RuntimeError("worker lost")
                return download(batch, completed)

            run.download = lost
        return run


class ManifestAlone(KilledWhileDownloading):
    use_store = False


class AnotherDisk(KilledWhileDownloading):
    use_store, lose_disk = True, True
"""


def test_a_worker_lost_while_downloading_leaves_no_submit_to_pay_again(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=0.5)
    source = FAULTY_BATCH_DAG.format(
        edits=edits(firered_emulator, 8),
        dag_id="batch_lost_downloading",
        root=str(tmp_path / "run"),
        classes=KILLED_WHILE_DOWNLOADING,
        operator="ManifestAlone",
        options="retries=1, max_in_flight=4, deferrable=False,",
    )
    (ti,) = run_dag_source("batch_lost_downloading", source).get_task_instances()
    out = capfd.readouterr().out
    assert (ti.state, ti.try_number) == ("success", 2)
    # The second wave's ids were in the manifest before its downloads began: the retry waited for them.
    assert posts(firered_emulator) == 8
    assert {e.outcome for e in read_manifest(tmp_path / "run") or []} == {"edited"}
    assert in_log("crash recovery for batches rests on the manifest alone", out)


@pytest.mark.skipif(not RESUMES, reason="task_state_store needs Airflow 3.3+")
def test_a_retry_on_another_disk_resumes_every_stored_id(firered_emulator: Emulator, tmp_path: Path) -> None:
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=0.5)
    source = FAULTY_BATCH_DAG.format(
        edits=edits(firered_emulator, 8),
        dag_id="batch_another_disk",
        root=str(tmp_path / "run"),
        classes=KILLED_WHILE_DOWNLOADING,
        operator="AnotherDisk",
        options="retries=1, deferrable=False,",
    )
    (ti,) = run_dag_source("batch_another_disk", source).get_task_instances()
    assert (ti.state, ti.try_number) == ("success", 2)
    # No manifest nor progress file on the retry's disk: the stored ids alone, all 8 resumed.
    assert posts(firered_emulator) == 8
    assert not (tmp_path / "run-first-worker" / "SKU-0000").exists()
    assert {e.outcome for e in read_manifest(tmp_path / "run") or []} == {"edited"}


def test_a_repeated_request_id_fails_the_later_items_as_uncertain(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    from airflow_provider_firered.emulator.protocol import STATUS_PREFIX
    from airflow_provider_firered.gateway.options import DEFAULT_MODEL
    from airflow_provider_firered.hooks.firered import FireRedHook

    # A real job, then a gateway that answers every submit with that job's id.
    taken = FireRedHook().submit_edit(DEFAULT_MODEL, "another client", [firered_emulator.sample_images[0]])
    rid = taken.request_id
    answer = {
        "request_id": rid,
        "status": "QUEUED",
        "polling_url": firered_emulator.gateway_url + STATUS_PREFIX + rid,
    }
    firered_emulator.inject(Fault(target="submit", status_code=202, body=answer, count=None))
    ti = run_batch(
        "batch_repeated_id",
        edits=edits(firered_emulator, 3),
        output_root=str(tmp_path / "run"),
        poll_interval=1,
        retries=1,
        retry_delay=0,
        deferrable=False,
    )
    assert ti.state == "failed"
    assert ti.try_number == 1  # UNCERTAIN is final: no retry sends them again
    assert posts(firered_emulator) == 1 + 3
    entries = read_manifest(tmp_path / "run") or []
    assert sorted(e.status or "" for e in entries) == ["COMPLETED", "UNCERTAIN", "UNCERTAIN"]
    assert "pending" not in {e.outcome for e in entries}
    for entry in entries:
        if entry.status == "UNCERTAIN":
            assert f"request id {rid}, which it had already given to item" in str(entry.error)


def test_an_item_whose_outputs_cannot_be_saved_fails_alone(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    root = tmp_path / "run"
    root.mkdir()
    (root / "SKU-0001").write_text("a file where the item's folder goes")
    ti = run_batch(
        "batch_unsavable_item",
        edits=edits(firered_emulator, 3),
        output_root=str(root),
        poll_interval=1,
        max_failed=1,
        deferrable=False,
    )
    assert ti.state == "success"
    assert (xcom(ti)["edited"], xcom(ti)["failed"]) == (2, 1)
    assert posts(firered_emulator) == 3
    entries = {e.key: e for e in read_manifest(root) or []}
    assert (entries["SKU-0001"].outcome, entries["SKU-0001"].status) == ("failed", "DOWNLOAD")
    assert "its outputs could not be saved" in str(entries["SKU-0001"].error)


def test_fingerprints_are_read_after_the_submits_never_before(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    import threading
    import time

    import requests

    from tests.hostile import Answer, Seen, serving

    image = requests.get(firered_emulator.sample_images[0], timeout=10).content
    heads: list[float] = []
    release = threading.Event()

    def slow_head(seen: Seen) -> Answer:
        if seen.method == "HEAD":
            heads.append(time.time())
            release.wait(3)  # a slow, silent image host: only HEAD requests are held
        return Answer(200, {"Content-Type": "image/png", "ETag": '"v1"'}, image)

    with serving() as host:
        host.route("/", slow_head)
        items = [
            {"key": f"SKU-{n}", "prompt": f"Make it blue #{n}", "images": [f"{host.url}/{n}.png"]}
            for n in range(2)
        ]
        ti = run_batch(
            "batch_heads_after_submits",
            edits=items,
            output_root=str(tmp_path / "run"),
            poll_interval=1,
            force=True,
            deferrable=False,
        )
        release.set()
    assert ti.state == "success"
    first_submit = min(r.time for r in firered_emulator.submit_attempts())
    assert heads
    assert first_submit < min(heads)  # the HEADs went out after the submits, not before
    # ... and their fingerprints are kept for the next night.
    assert all(e.fingerprint for e in read_manifest(tmp_path / "run") or [])


#: Another client takes every slot of the gateway just before the batch starts.
SATURATED_BY_ANOTHER = """
class SaturatedByAnother(FireRedBatchEditOperator):
    def execute(self, context):
        for n in range(2):
            self.hook.submit_edit("firered-image-edit", f"other client #{n}", EDITS[0]["images"])
        return super().execute(context)
"""


def test_a_saturated_gateway_with_nothing_in_flight_defers_on_a_timer(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    firered_emulator.max_concurrent_jobs = 2
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=3)
    source = FAULTY_BATCH_DAG.format(
        edits=edits(firered_emulator, 2),
        dag_id="batch_saturated_nothing_in_flight",
        root=str(tmp_path / "run"),
        classes=SATURATED_BY_ANOTHER,
        operator="SaturatedByAnother",
        options="timeout=120, deferrable=True,",
    )
    (ti,) = run_dag_source("batch_saturated_nothing_in_flight", source).get_task_instances()
    out = capfd.readouterr().out
    assert (ti.state, ti.try_number) == ("success", 1)
    ours = [r for r in firered_emulator.submit_attempts() if r.body["prompt"].startswith("Make it blue")]
    accepted = [r for r in ours if r.status == 202]
    assert len(accepted) == 2
    assert len({r.body["prompt"] for r in accepted}) == 2  # each item accepted once
    assert any(r.status == 429 for r in ours)
    assert in_log("no job of this batch is running: deferring for", out)
    assert xcom(ti)["edited"] == 2


#: Try 1 is stopped by a user while deferred (mark failed): the jobs it submitted and stored run on
#: at the gateway, which cannot cancel them; the task fails without a retry.
STOPPED_WHILE_DEFERRED = """
class StoppedWhileDeferred(FireRedBatchEditOperator):
    def defer(self, **kwargs):
        raise RuntimeError("marked failed by a user while deferred")
"""

#: The logical date of both runs of a cleared task instance.
CLEARED_DATE = datetime(2026, 3, 1, tzinfo=timezone.utc)


def run_dag_on(dag_id: str, source: str, *, keep_the_run: bool) -> Any:
    """
    Write ``source`` as the DAG file and run ``dag.test()`` on :data:`CLEARED_DATE`: return its task
    instance.

    ``dag.test()`` starts by clearing the task instances of its logical date with Airflow's own
    ``clear_task_instances`` (a new ``max_tries``, as a user's clear), then deletes their DAG run and
    creates a new one. ``keep_the_run`` keeps the DAG run instead, set running again, as a clear
    from the UI does: its task instance then keeps its ``task_state_store`` rows (they belong to the
    DAG run) and its manifest, and runs its next try.
    """
    from unittest import mock

    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    path = Path(DAGS_FOLDER) / f"{dag_id}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"firered_test_dag_{dag_id}_{keep_the_run}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def kept(*, dag: Any, logical_date: Any, session: Any, **_: Any) -> Any:
        run = session.scalar(
            select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.logical_date == logical_date)
        )
        assert run is not None
        run.dag, run.state = dag, DagRunState.RUNNING
        session.commit()
        return run

    if not keep_the_run:
        return module.dag.test(logical_date=CLEARED_DATE).get_task_instances()[0]
    with mock.patch("airflow.models.dagrun.get_or_create_dagrun", kept):
        return module.dag.test(logical_date=CLEARED_DATE).get_task_instances()[0]


def cleared_batch_dag(root: Path, items: list[dict[str, Any]], stopped: bool) -> str:
    return FAULTY_BATCH_DAG.format(
        edits=items,
        dag_id="batch_cleared",
        root=str(root),
        classes=STOPPED_WHILE_DEFERRED if stopped else "",
        operator="StoppedWhileDeferred" if stopped else "FireRedBatchEditOperator",
        options="retries=0, deferrable=True,",
    )


@pytest.mark.skipif(not RESUMES, reason="task_state_store needs Airflow 3.3+")
def test_a_cleared_batch_collects_its_still_running_jobs_instead_of_paying_again(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Long enough that the jobs still run when the cleared task reads them, even on a loaded machine
    # (8 s was not: the clear then rightly pays again for jobs that had ended).
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=20)
    root = tmp_path / "run"
    items = edits(firered_emulator, 3)
    stopped = run_dag_on("batch_cleared", cleared_batch_dag(root, items, True), keep_the_run=False)
    assert (stopped.state, stopped.try_number, stopped.max_tries) == ("failed", 1, 0)
    first = {e.key: e.request_id for e in read_manifest(root) or []}
    assert posts(firered_emulator) == 3
    assert {firered_emulator.job(str(rid))["status"] for rid in first.values()} == {"PROCESSING"}

    # The user edits one item's prompt, then clears the task.
    items[2] = {**items[2], "prompt": "Make it green #2"}
    firered_emulator.set_timings(processing_seconds=0.5)
    capfd.readouterr()
    cleared = run_dag_on("batch_cleared", cleared_batch_dag(root, items, False), keep_the_run=True)
    out = capfd.readouterr().out
    assert (cleared.state, cleared.try_number, cleared.max_tries) == ("success", 2, 1)
    # The two unchanged items' running jobs were collected; only the changed item was paid again.
    assert posts(firered_emulator) == 4
    assert firered_emulator.submit_attempts()[-1].body["prompt"] == "Make it green #2"
    entries = {e.key: e for e in read_manifest(root) or []}
    assert {key: e.outcome for key, e in entries.items()} == dict.fromkeys(first, "edited")
    assert entries["SKU-0000"].request_id == first["SKU-0000"]
    assert entries["SKU-0001"].request_id == first["SKU-0001"]
    assert entries["SKU-0002"].request_id != first["SKU-0002"]
    assert entries["SKU-0000"].fingerprint  # fingerprinted for the next night like a fresh submit
    assert in_log("The task was cleared after 2 unchanged item(s) were submitted: 2 still running", out)


@pytest.mark.skipif(not RESUMES, reason="task_state_store needs Airflow 3.3+")
def test_a_cleared_batch_submits_afresh_what_the_gateway_forgot(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=60)
    root = tmp_path / "run"
    items = edits(firered_emulator, 3)
    stopped = run_dag_on("batch_cleared", cleared_batch_dag(root, items, True), keep_the_run=False)
    assert (stopped.state, posts(firered_emulator)) == ("failed", 3)
    firered_emulator.reset()  # the gateway forgets the jobs: their status reads answer 404
    firered_emulator.set_timings(processing_seconds=0.5)
    cleared = run_dag_on("batch_cleared", cleared_batch_dag(root, items, False), keep_the_run=True)
    assert (cleared.state, cleared.try_number) == ("success", 2)
    assert posts(firered_emulator) == 3  # since the reset: each item submitted afresh
    assert {e.outcome for e in read_manifest(root) or []} == {"edited"}
