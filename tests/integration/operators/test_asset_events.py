"""Outlet assets' events of both operators in real DAG runs: the extra's figures, the consumer queued."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.batch.manifest import read_manifest
from airflow_provider_firered.plugins.links import sheet_path
from tests.conftest import DAGS_FOLDER, TEST_KEY
from tests.integration.operators.test_firered import xcom

if TYPE_CHECKING:
    from types import ModuleType

    from airflow_provider_firered.emulator import Emulator

pytestmark = pytest.mark.usefixtures("airflow_db", "firered_conn")

EXAMPLE_DAGS = Path(__file__).resolve().parents[3] / "example_dags"

PRODUCER = """
import json
from datetime import datetime

from airflow.sdk import DAG, Asset, AssetAlias

from airflow_provider_firered.operators.firered import FireRedEditOperator
from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

KWARGS = json.loads({kwargs!r})
OPERATOR = {{"edit": FireRedEditOperator, "batch": FireRedBatchEditOperator}}[{kind!r}]

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    # An alias among the outlets is left to Airflow: only assets get the figures.
    OPERATOR(task_id="task", outlets=[Asset(name={asset!r}), AssetAlias({asset!r} + "_alias")], **KWARGS)
"""

CONSUMER = """
from datetime import datetime

from airflow.sdk import DAG, Asset
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG({dag_id!r}, schedule=[Asset(name={asset!r})], start_date=datetime(2026, 1, 1), catchup=False) as dag:
    EmptyOperator(task_id="publish")
"""


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"firered_asset_test_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync_to_db(*paths: Path) -> None:
    """Serialize the DAG files into the metadata database, as the DAG processor does; unpause them."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()  # type: ignore[no-untyped-call,unused-ignore]
    dag_ids = []
    for path in paths:
        try:  # Airflow 3.1+
            from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
        except ImportError:
            from airflow.models.dagbag import DagBag  # type: ignore[attr-defined,unused-ignore]

            bag: Any = DagBag(dag_folder=str(path), include_examples=False)
            bag.sync_to_db("dags-folder", None)
        else:
            bag = BundleDagBag(dag_folder=str(path), bundle_path=Path(DAGS_FOLDER), bundle_name="dags-folder")
            sync_bag_to_db(bag, "dags-folder", None)
        assert not bag.import_errors, bag.import_errors
        dag_ids.extend(bag.dag_ids)
    with create_session() as session:
        for model in session.query(DagModel).filter(DagModel.dag_id.in_(dag_ids)):
            model.is_paused = False


def run_with_consumer(name: str, kind: str, **kwargs: Any) -> tuple[Any, Any]:
    """Write a producer DAG (one task, its outlets an asset and an alias) and a DAG scheduled on the asset."""
    producer, consumer = Path(DAGS_FOLDER) / f"{name}.py", Path(DAGS_FOLDER) / f"{name}_consumer.py"
    producer.write_text(
        PRODUCER.format(kwargs=json.dumps(kwargs), kind=kind, dag_id=name, asset=f"{name}_asset")
    )
    consumer.write_text(CONSUMER.format(dag_id=f"{name}_consumer", asset=f"{name}_asset"))
    sync_to_db(consumer, producer)
    run = _load(producer).dag.test()
    (ti,) = run.get_task_instances()
    return run, ti


def asset_events(run: Any) -> list[Any]:
    """The asset events the run's tasks recorded, from the metadata database."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        return [
            SimpleNamespace(
                asset_name=event.asset.name,
                extra=event.extra,
                source_dag_id=event.source_dag_id,
                source_run_id=event.source_run_id,
            )
            for event in session.query(AssetEvent)
            .filter_by(source_dag_id=run.dag_id, source_run_id=run.run_id)
            .order_by(AssetEvent.id)
        ]


def queued_runs(dag_id: str) -> int:
    """How many asset-triggered runs of ``dag_id`` the scheduler has queued (``AssetDagRunQueue`` rows)."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    with create_session() as session:
        return int(session.query(AssetDagRunQueue).filter_by(target_dag_id=dag_id).count())


def no_key_in(event: Any) -> None:
    assert TEST_KEY not in json.dumps(event.extra)


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
def test_a_single_edit_records_its_request_and_outputs(
    firered_emulator: Emulator, tmp_path: Path, deferrable: bool
) -> None:
    firered_emulator.set_timings(queued_seconds=0.1, processing_seconds=0.2)
    name = f"asset_edit_{deferrable}"
    run, ti = run_with_consumer(
        name,
        "edit",
        prompt="Make it blue",
        images=[f"{firered_emulator.sample_images[0]}?X-Amz-Signature=secret"],
        output_dir=str(tmp_path),
        deferrable=deferrable,
        poll_interval=1,
    )

    assert ti.state == "success"
    result = xcom(ti)
    (event,) = asset_events(run)
    assert event.asset_name == f"{name}_asset"
    assert event.extra == {
        "total": 1,
        "edited": 1,
        "reused": 0,
        "failed": 0,
        "paid": 1,
        "request_id": result["request_id"],
        "output_paths": result["output_paths"],
        "status": "COMPLETED",
        "model": "firered-image-edit-v1-1",
    }
    assert all(Path(path).is_file() for path in event.extra["output_paths"])
    assert "secret" not in json.dumps(event.extra)  # no image URL: a signed URL's query is a secret
    no_key_in(event)
    assert queued_runs(f"{name}_consumer") == 1


def test_a_resubmitted_edit_counts_both_submits(firered_emulator: Emulator) -> None:
    firered_emulator.set_timings(queued_seconds=0.1, processing_seconds=0.2)
    firered_emulator.set_next_outcome("ERROR", "worker lost")
    run, ti = run_with_consumer(
        "asset_edit_resubmitted",
        "edit",
        prompt="Make it red",
        images=firered_emulator.sample_images[:1],
        resubmit_on_error=1,
        poll_interval=1,
    )

    assert ti.state == "success"
    (event,) = asset_events(run)
    assert (event.extra["paid"], event.extra["edited"], event.extra["output_paths"]) == (2, 1, [])
    assert len(firered_emulator.submit_attempts()) == 2
    assert event.extra["request_id"] == xcom(ti)["request_id"]


def test_an_edit_that_is_not_waited_for_claims_no_edit(firered_emulator: Emulator) -> None:
    run, ti = run_with_consumer(
        "asset_edit_no_wait",
        "edit",
        prompt="Make it red",
        images=firered_emulator.sample_images[:1],
        wait_for_completion=False,
    )

    assert ti.state == "success"
    (event,) = asset_events(run)
    assert (event.extra["edited"], event.extra["paid"], event.extra["status"]) == (0, 1, "QUEUED")


def test_a_failed_edit_records_no_event(firered_emulator: Emulator) -> None:
    firered_emulator.set_next_outcome("FAILED", "bad input")
    run, ti = run_with_consumer(
        "asset_edit_failed", "edit", prompt="x", images=firered_emulator.sample_images[:1], poll_interval=1
    )

    assert ti.state == "failed"
    assert asset_events(run) == []
    assert queued_runs("asset_edit_failed_consumer") == 0


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
def test_a_batch_records_its_figures_manifest_and_contact_sheet(
    firered_emulator: Emulator, tmp_path: Path, deferrable: bool
) -> None:
    """Five items, one invalid: the event's figures are the XCom's, from the manifest."""
    firered_emulator.set_timings(queued_seconds=0.1, processing_seconds=0.3)
    image = firered_emulator.sample_images[0]
    edits = [{"key": f"SKU-{n}", "prompt": f"Make it blue #{n}", "images": [image]} for n in range(4)]
    edits.append({"key": "BAD", "prompt": "x", "images": ["file:///etc/passwd"]})
    name = f"asset_batch_{deferrable}"
    root = tmp_path / "night"
    run, ti = run_with_consumer(
        name,
        "batch",
        edits=edits,
        output_root=str(root),
        max_in_flight=2,
        poll_interval=1,
        max_failed=1,
        deferrable=deferrable,
    )

    assert ti.state == "success"
    result = xcom(ti)
    (event,) = asset_events(run)
    assert event.extra == {
        "total": 5,
        "edited": 4,
        "reused": 0,
        "failed": 1,
        "over_budget": 0,
        "paid": 4,
        "dry_run": False,
        "manifest": result["manifest"],
        "output_root": str(root),
        "contact_sheet": sheet_path(run.dag_id, run.run_id, "task", -1),
    }
    assert {key: result[key] for key in ("total", "edited", "reused", "failed", "paid")} == {
        key: event.extra[key] for key in ("total", "edited", "reused", "failed", "paid")
    }
    assert len(read_manifest(root) or []) == 5
    no_key_in(event)
    assert queued_runs(f"{name}_consumer") == 1


def test_a_dry_run_event_says_so_and_counts_no_edit(firered_emulator: Emulator, tmp_path: Path) -> None:
    """Airflow records an event for the plan too: it says ``dry_run`` and counts no edit nor payment."""
    image = firered_emulator.sample_images[0]
    edits = [{"key": f"SKU-{n}", "prompt": f"Make it blue #{n}", "images": [image]} for n in range(3)]
    run, ti = run_with_consumer(
        "asset_batch_plan",
        "batch",
        edits=edits,
        output_root=str(tmp_path / "plan"),
        max_paid_edits=2,
        dry_run=True,
    )

    assert ti.state == "success"
    assert firered_emulator.submit_attempts() == []
    (event,) = asset_events(run)
    figures = {key: value for key, value in event.extra.items() if isinstance(value, (int, bool))}
    assert figures == {
        "total": 3,
        "edited": 0,
        "reused": 0,
        "failed": 0,
        "over_budget": 1,
        "paid": 0,
        "would_edit": 2,
        "would_reuse": 0,
        "would_fail": 0,
        "invalid": 0,
        "dry_run": True,
    }
    lines = _publish_module().describe(asset_events(run))
    assert lines == [f"skipped: a dry run's plan from {run.dag_id}/{run.run_id}, nothing was edited"]


def test_a_batch_over_its_failure_limit_records_no_event(tmp_path: Path) -> None:
    edits = [{"key": "BAD", "prompt": "x", "images": ["file:///etc/passwd"]}]
    run, ti = run_with_consumer(
        "asset_batch_failed", "batch", edits=edits, output_root=str(tmp_path / "night"), max_failed=0
    )

    assert ti.state == "failed"
    assert asset_events(run) == []
    assert queued_runs("asset_batch_failed_consumer") == 0


def _publish_module() -> ModuleType:
    return _load(EXAMPLE_DAGS / "firered_catalogue_publish.py")


def test_the_publish_example_reads_the_events_of_a_night(firered_emulator: Emulator, tmp_path: Path) -> None:
    """Two batch events of one night: a line per batch, then the night's totals; a plan is skipped."""
    firered_emulator.set_timings(queued_seconds=0.1, processing_seconds=0.2)
    image = firered_emulator.sample_images[0]
    edits = [{"key": f"SKU-{n}", "prompt": f"Make it green #{n}", "images": [image]} for n in range(2)]
    run, ti = run_with_consumer(
        "asset_batch_publish", "batch", edits=edits, output_root=str(tmp_path / "b0"), poll_interval=1
    )
    assert ti.state == "success"
    (event,) = asset_events(run)
    module = _publish_module()
    assert module.dag.dag_id == "firered_catalogue_publish"
    assert module.CATALOGUE.name == "firered_catalogue"

    lines = module.describe([event, event])

    source = f"{run.dag_id}/{run.run_id}"
    sheet = sheet_path(run.dag_id, run.run_id, "task", -1)
    assert lines == [
        f"would publish 2 image(s) from {tmp_path / 'b0'}: 2 total, 2 edited, 0 reused, 0 failed, "
        f"0 over_budget, 2 paid; manifest {event.extra['manifest']}; contact sheet {sheet}",
    ] * 2 + [f"{source}: 4 total, 4 edited, 0 reused, 0 failed, 0 over_budget, 4 paid"]


def test_the_publish_example_skips_an_event_without_figures() -> None:
    class Event:
        extra: dict[str, Any] = {"note": "set by hand"}  # a stand-in for an AssetEvent
        source_dag_id = "elsewhere"
        source_run_id = "manual"

    assert _publish_module().describe([Event()]) == [
        "skipped: an event from elsewhere/manual without figures"
    ]


def test_the_publish_example_runs_without_events(capfd: pytest.CaptureFixture[str]) -> None:
    """Triggered by hand (no asset event), it says there is nothing to publish and succeeds."""
    source = (EXAMPLE_DAGS / "firered_catalogue_publish.py").read_text()
    path = Path(DAGS_FOLDER) / "firered_catalogue_publish.py"
    path.write_text(source)
    run = _load(path).dag.test()

    assert {ti.task_id: str(ti.state) for ti in run.get_task_instances()} == {"publish": "success"}
    assert "no asset event triggered this run: nothing to publish" in capfd.readouterr().out
