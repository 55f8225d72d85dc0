"""OpenLineage events of both operators in real DAG runs, written by the provider's file transport."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.batch.manifest import ManifestEntry, write_manifest
from airflow_provider_firered.operators.firered import FireRedEditOperator
from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator
from airflow_provider_firered.operators.reporting import OUTCOME_ATTRIBUTE
from airflow_provider_firered.utils import lineage
from airflow_provider_firered.utils.lineage import RUN_FACET_KEY
from tests.conftest import TEST_KEY, run_dag_source
from tests.integration.operators.test_firered import xcom

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from airflow_provider_firered.emulator import Emulator

pytestmark = pytest.mark.skipif(
    not lineage.openlineage_available(),
    reason="the OpenLineage provider is not installed (pip install 'airflow-provider-firered[openlineage]')",
)

DAG_TEMPLATE = """
import json
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator
from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

KWARGS = json.loads({kwargs!r})
OPERATOR = {{"edit": FireRedEditOperator, "batch": FireRedBatchEditOperator}}[{kind!r}]

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    OPERATOR(task_id="task", **KWARGS)
"""


def _clear_openlineage_config() -> None:
    """Forget the OpenLineage provider's cached configuration (each option is read once, then cached)."""
    from airflow.providers.openlineage import conf

    for value in vars(conf).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


def _listener_manager() -> Any:
    try:  # the task runner's own manager (Airflow 3.1+)
        from airflow.sdk.listener import get_listener_manager
    except ImportError:
        from airflow.listeners import listener

        return listener.get_listener_manager()
    return get_listener_manager()


@pytest.fixture
def lineage_file(tmp_path: Path) -> Iterator[Path]:
    """
    Turn OpenLineage on with the file transport, as a deployment configures it; yield the events' file.

    Airflow loads the provider's listener once per process, when its plugins are first integrated, and
    only if OpenLineage was configured then: here the tests' process registers a listener built with
    this configuration, the way the provider's plugin does, and removes it afterwards.
    """
    from airflow.providers.openlineage.plugins.listener import OpenLineageListener

    manager = _listener_manager()  # plugins integrated before OpenLineage is configured: no listener
    events = tmp_path / "openlineage.jsonl"
    settings = {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "firered-tests",
        # Emitted in a thread of the task's process rather than a fork of it (the tests' process).
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
    }
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    _clear_openlineage_config()
    listener = OpenLineageListener()  # type: ignore[no-untyped-call,unused-ignore]
    manager.add_listener(listener)
    try:
        yield events
    finally:
        manager.pm.unregister(listener)
        if listener._executor is not None:  # DAG run events go through a process pool (Airflow 3.0)
            listener._executor.shutdown(wait=True)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _clear_openlineage_config()


def run_task(dag_id: str, kind: str, **kwargs: Any) -> Any:
    """Write a one-task DAG, run it with dag.test(); return its task instance."""
    source = DAG_TEMPLATE.format(kwargs=json.dumps(kwargs), kind=kind, dag_id=dag_id)
    (ti,) = run_dag_source(dag_id, source).get_task_instances()
    return ti


def complete_event(events: Path, dag_id: str) -> dict[str, Any]:
    """The task's one COMPLETE event in the file; the whole file has no key."""
    text = events.read_text()
    assert TEST_KEY not in text
    found = [json.loads(line) for line in text.splitlines() if line.strip()]
    (complete,) = [
        e for e in found if e.get("eventType") == "COMPLETE" and e["job"]["name"] == f"{dag_id}.task"
    ]
    return dict(complete)


def names(datasets: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in datasets]


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_a_deferred_edit_lists_its_image_its_files_and_what_it_paid(
    firered_emulator: Emulator, lineage_file: Path, tmp_path: Path
) -> None:
    """The COMPLETE event of an edit that finished in execute_complete (a new operator object)."""
    firered_emulator.set_timings(queued_seconds=0.1, processing_seconds=0.2)
    image = firered_emulator.sample_images[0]
    outputs = tmp_path / "out"
    ti = run_task(
        "ol_edit",
        "edit",
        prompt="Make it blue",
        images=[f"{image}?X-Amz-Signature=signature-of-the-url"],
        parameters={"num_images": 2},
        output_dir=str(outputs),
        deferrable=True,
        poll_interval=1,
    )

    assert ti.state == "success"
    event = complete_event(lineage_file, "ol_edit")
    assert names(event["inputs"]) == [lineage.dataset_name(image)]
    written = xcom(ti)["output_paths"]
    assert len(written) == 2
    assert names(event["outputs"]) == [("file", path) for path in written]
    facet = event["run"]["facets"][RUN_FACET_KEY]
    assert {key: facet[key] for key in ("requestIdsCount", "paid", "reused", "failed", "model")} == {
        "requestIdsCount": 1,
        "paid": 1,
        "reused": 0,
        "failed": 0,
        "model": "firered-image-edit-v1-1",
    }
    assert "signature-of-the-url" not in json.dumps(event["inputs"])


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_a_batch_lists_its_distinct_images_and_one_output_root(
    firered_emulator: Emulator, lineage_file: Path, tmp_path: Path
) -> None:
    """Four items over two images, one invalid: two inputs, the output root as the one output."""
    firered_emulator.set_timings(queued_seconds=0.1, processing_seconds=0.2)
    first, second = firered_emulator.sample_images[:2]
    edits = [
        {"key": f"SKU-{n}", "prompt": f"Make it blue #{n}", "images": [image]}
        for n, image in enumerate([first, second, first])
    ]
    edits.append({"key": "BAD", "prompt": "x", "images": ["file:///etc/passwd"]})
    root = tmp_path / "night"
    ti = run_task(
        "ol_batch",
        "batch",
        edits=edits,
        output_root=str(root),
        max_failed=1,
        poll_interval=1,
        deferrable=True,
    )

    assert ti.state == "success"
    event = complete_event(lineage_file, "ol_batch")
    assert names(event["inputs"]) == [lineage.dataset_name(first), lineage.dataset_name(second)]
    assert names(event["outputs"]) == [("file", str(root))]
    facet = event["run"]["facets"][RUN_FACET_KEY]
    result = xcom(ti)
    assert (facet["requestIdsCount"], facet["paid"], facet["reused"], facet["failed"]) == (
        3,
        result["paid"],
        result["reused"],
        result["failed"],
    )
    assert (result["paid"], result["failed"]) == (3, 1)
    assert facet["model"] == "firered-image-edit-v1-1"


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_a_dry_run_lists_its_images_and_writes_no_dataset(
    firered_emulator: Emulator, lineage_file: Path, tmp_path: Path
) -> None:
    image = firered_emulator.sample_images[0]
    edits = [{"key": "SKU-1", "prompt": "Make it blue", "images": [image]}]
    ti = run_task("ol_plan", "batch", edits=edits, output_root=str(tmp_path / "plan"), dry_run=True)

    assert ti.state == "success"
    event = complete_event(lineage_file, "ol_plan")
    assert names(event["inputs"]) == [lineage.dataset_name(image)]
    assert event["outputs"] == []
    facet = event["run"]["facets"][RUN_FACET_KEY]
    assert (facet["requestIdsCount"], facet["paid"]) == (0, 0)


# -- without a kept outcome: rebuilt from what the task left ------------------------------------------


class _TaskInstance:
    task_id = "edit"
    map_index = -1

    def __init__(self, result: Any) -> None:
        self.result = result

    def xcom_pull(self, **_kwargs: Any) -> Any:
        return self.result


def test_an_edit_without_a_kept_outcome_is_rebuilt_from_its_xcom_result() -> None:
    operator = FireRedEditOperator(task_id="edit", prompt="p", images=["https://cdn.test/a.png?sig=s"])
    assert not hasattr(operator, OUTCOME_ATTRIBUTE)
    result = {
        "request_id": "r-1",
        "status": "COMPLETED",
        "model_id": "firered-image-edit",
        "output_paths": [],
    }
    result["output_paths"] = ["/data/out/r-1_0.png"]

    found = operator.get_openlineage_facets_on_complete(_TaskInstance(result))

    assert names([{"namespace": d.namespace, "name": d.name} for d in found.inputs]) == [
        ("https://cdn.test", "/a.png")
    ]
    assert [(d.namespace, d.name) for d in found.outputs] == [("file", "/data/out/r-1_0.png")]
    facet = found.run_facets[RUN_FACET_KEY]
    assert (facet.requestIdsCount, facet.paid, facet.model) == (1, 1, "firered-image-edit")


def test_an_edit_without_a_result_lists_its_images_only() -> None:
    operator = FireRedEditOperator(task_id="edit", prompt="p", images=["https://cdn.test/a.png"])

    found = operator.get_openlineage_facets_on_complete(_TaskInstance(None))

    assert [(d.namespace, d.name) for d in found.inputs] == [("https://cdn.test", "/a.png")]
    assert found.outputs == []
    assert found.run_facets[RUN_FACET_KEY].paid == 0


def test_a_batch_without_a_kept_outcome_is_rebuilt_from_its_manifest(tmp_path: Path) -> None:
    root = tmp_path / "night"
    write_manifest(
        str(root),
        [
            ManifestEntry("A", "edited", "COMPLETED", "r-1", images=["https://cdn.test/a.png"], paid=1),
            ManifestEntry("B", "reused", "COMPLETED", "r-0", images=["https://cdn.test/b.png"]),
            ManifestEntry("C", "failed", "FAILED", "r-2", images=["https://cdn.test/a.png"], paid=1),
        ],
    )
    operator = FireRedBatchEditOperator(task_id="batch", edits=[], output_root=str(root))

    found = operator.get_openlineage_facets_on_complete(None)

    assert [(d.namespace, d.name) for d in found.inputs] == [
        ("https://cdn.test", "/a.png"),
        ("https://cdn.test", "/b.png"),
    ]
    assert [(d.namespace, d.name) for d in found.outputs] == [("file", str(root))]
    facet = found.run_facets[RUN_FACET_KEY]
    assert (facet.requestIdsCount, facet.paid, facet.reused, facet.failed) == (2, 2, 1, 1)
    assert facet.model == "firered-image-edit-v1-1"


def test_a_batch_without_a_manifest_has_no_input_and_its_root_as_output(tmp_path: Path) -> None:
    operator = FireRedBatchEditOperator(task_id="batch", edits=[], output_root=str(tmp_path / "none"))

    found = operator.get_openlineage_facets_on_complete(None)

    assert found.inputs == []
    assert [(d.namespace, d.name) for d in found.outputs] == [("file", str(tmp_path / "none"))]
