"""The example DAGs: they import cleanly, and the catalogue one runs through real Airflow (``dag.test()``)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from tests.conftest import DAGS_FOLDER

if TYPE_CHECKING:
    from types import ModuleType

    from airflow_provider_firered.emulator import Emulator

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"
CATALOGUE = "firered_catalogue_reedit"


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"firered_example_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def catalogue() -> ModuleType:
    return load_module(EXAMPLE_DAGS / f"{CATALOGUE}.py")


def test_every_example_imports_without_errors() -> None:
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.1+
    except ImportError:
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef,attr-defined,unused-ignore]

    bag = DagBag(dag_folder=str(EXAMPLE_DAGS))  # examples are off: AIRFLOW__CORE__LOAD_EXAMPLES
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {CATALOGUE, "firered_edit_single", "firered_submit_then_sense"}
    for dag_id, dag in bag.dags.items():
        assert dag.doc_md, f"{dag_id} has no docs"


def test_catalogue_shape(catalogue: ModuleType) -> None:
    dag = catalogue.dag
    assert dag.schedule == "0 2 * * *"
    edit = dag.get_task("edit")
    assert edit.pool == "firered_gateway"
    assert edit.partial_kwargs["deferrable"] is True
    assert dag.get_task("summarise").trigger_rule == "all_done"


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("sku,image_url\nA,a.png\n", "m.csv", "row 1: missing prompt"),
        ("sku,image_url,prompt\nA,a.png,x\nA,b.png,y\n", "m.csv", "row 2: duplicate SKU 'A'"),
        ("sku,image_url,prompt\n../etc,a.png,x\n", "m.csv", "SKU '../etc' is not a folder name"),
        ("sku,image_url,prompt\n..,a.png,x\n", "m.csv", "SKU '..' is not a folder name"),
        ('{"sku": "A"}', "m.json", "expected a JSON list of objects"),
        ('[{"sku": "A", "image_url": "a.png", "prompt": " "}]', "m.json", "row 1: missing prompt"),
    ],
)
def test_manifest_errors_name_the_row(catalogue: ModuleType, text: str, name: str, message: str) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    with pytest.raises(AirflowFailException, match=f"manifest {name}.*{message}"):
        catalogue.parse_manifest(text, name)


def test_manifest_json_and_relative_urls(catalogue: ModuleType) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    rows = catalogue.parse_manifest('[{"sku": " A ", "image_url": "a.png", "prompt": "p"}]', "m.json")
    assert rows == [{"sku": "A", "image_url": "a.png", "prompt": "p"}]
    assert catalogue.resolve_image_url("a.png", "http://127.0.0.1:1/samples") == (
        "http://127.0.0.1:1/samples/a.png"
    )
    assert catalogue.resolve_image_url("https://x.test/a.png", "") == "https://x.test/a.png"
    with pytest.raises(AirflowFailException, match="image_base_url"):
        catalogue.resolve_image_url("a.png", "")


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_catalogue_run_keeps_the_good_skus_when_one_fails(
    firered_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad SKU fails alone (before any request); the others are edited and the summary lists both."""
    for name in (f"{CATALOGUE}.py", "firered_catalogue_manifest.csv"):
        shutil.copy(EXAMPLE_DAGS / name, Path(DAGS_FOLDER) / name)
    module = load_module(Path(DAGS_FOLDER) / f"{CATALOGUE}.py")
    manifest = tmp_path / "manifest.json"
    good = {"GOOD-1": "Make the shoe red", "GOOD-2": "Make the mug blue"}
    rows: list[dict[str, Any]] = [
        {"sku": "GOOD-1", "image_url": "shoe.png", "prompt": good["GOOD-1"]},
        {"sku": "BAD-1", "image_url": "file:///etc/passwd", "prompt": "Anything"},
        {"sku": "GOOD-2", "image_url": "mug.png", "prompt": good["GOOD-2"]},
    ]
    manifest.write_text(json.dumps(rows))
    output_root = tmp_path / "out"
    monkeypatch.setenv("AIRFLOW_VAR_FIRERED_IMAGE_BASE_URL", f"{firered_emulator.cdn_url}/samples/")
    firered_emulator.set_timings(queued_seconds=0.2, processing_seconds=0.5)

    run = module.dag.test(
        run_conf={
            "manifest": str(manifest),
            "output_root": str(output_root),
            "poll_interval": 1,
            "parameters": {"output_format": "jpeg"},
        }
    )

    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert states[("edit", 0)] == "success"
    assert states[("edit", 1)] == "failed"
    assert states[("edit", 2)] == "success"
    assert states[("summarise", -1)] == "failed"  # the run reports the failed SKU ...
    (summary_path,) = output_root.glob("*/summary.json")  # ... after writing the summary
    summary = json.loads(summary_path.read_text())
    assert summary["failed"] == ["BAD-1"]
    assert summary["succeeded"] == 2
    by_sku = {row["sku"]: row for row in summary["skus"]}
    for sku in good:
        (output,) = by_sku[sku]["output_paths"]
        assert Path(output).parent == summary_path.parent / sku
        with Image.open(output) as image:
            assert image.format == "JPEG"
    assert by_sku["BAD-1"]["output_paths"] == []
    # The bad SKU was refused before any request: one POST per good SKU, nothing else.
    prompts = sorted(record.body["prompt"] for record in firered_emulator.submissions())
    assert prompts == sorted(good.values())


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_catalogue_pays_once_for_a_sku_whose_job_fails(
    firered_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalogue's ``retries: 2`` do not submit a FAILED (charged) SKU again."""
    for name in (f"{CATALOGUE}.py", "firered_catalogue_manifest.csv"):
        shutil.copy(EXAMPLE_DAGS / name, Path(DAGS_FOLDER) / name)
    module = load_module(Path(DAGS_FOLDER) / f"{CATALOGUE}.py")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"sku": "NSFW-1", "image_url": "shoe.png", "prompt": "Make it red"}]))
    monkeypatch.setenv("AIRFLOW_VAR_FIRERED_IMAGE_BASE_URL", f"{firered_emulator.cdn_url}/samples/")
    firered_emulator.set_timings(queued_seconds=0.2, processing_seconds=0.5)
    firered_emulator.set_next_outcome("FAILED", "NSFW content detected")

    run = module.dag.test(
        run_conf={"manifest": str(manifest), "output_root": str(tmp_path / "out"), "poll_interval": 1}
    )

    tis = {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances()}
    assert tis[("edit", 0)].state == "failed"
    assert tis[("edit", 0)].try_number == 1  # no retry
    (_post,) = firered_emulator.submit_attempts()
    (summary_path,) = (tmp_path / "out").glob("*/summary.json")
    assert json.loads(summary_path.read_text())["failed"] == ["NSFW-1"]


@pytest.mark.usefixtures("airflow_db", "firered_conn")
@pytest.mark.parametrize(
    ("dag_id", "folder", "image_format"),
    [
        ("firered_edit_single", "firered-single", "PNG"),
        ("firered_submit_then_sense", "firered-sensed", "WEBP"),
    ],
)
def test_small_examples_run_unchanged(
    firered_emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dag_id: str,
    folder: str,
    image_format: str,
) -> None:
    shutil.copy(EXAMPLE_DAGS / f"{dag_id}.py", Path(DAGS_FOLDER) / f"{dag_id}.py")
    module = load_module(Path(DAGS_FOLDER) / f"{dag_id}.py")
    monkeypatch.setenv("AIRFLOW_VAR_FIRERED_IMAGE_BASE_URL", f"{firered_emulator.cdn_url}/samples/")
    monkeypatch.setenv("AIRFLOW_VAR_FIRERED_OUTPUT_ROOT", str(tmp_path))
    firered_emulator.set_timings(queued_seconds=0.2, processing_seconds=1)

    run = module.dag.test(run_conf={"image_url": "shoe.png"})

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states
    assert set(states.values()) == {"success"}, states
    (output,) = (tmp_path / folder).glob("*/*")
    with Image.open(output) as image:
        assert image.format == image_format
    (submitted,) = firered_emulator.submissions()
    assert f"{firered_emulator.cdn_url}/samples/shoe.png" in json.dumps(submitted.body)
