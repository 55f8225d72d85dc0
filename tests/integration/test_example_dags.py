"""The example DAGs: they import cleanly, and the catalogue one runs through real Airflow (``dag.test()``)."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import pytest
from PIL import Image

from airflow_provider_firered.batch import locations as param_locations
from tests.conftest import DAGS_FOLDER
from tests.hostile import Answer, HostileServer
from tests.integration.operators.test_firered import in_log

if TYPE_CHECKING:
    from types import ModuleType

    from airflow_provider_firered.emulator import Emulator

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"
CATALOGUE = "firered_catalogue_reedit"
PER_SKU = "firered_catalogue_per_sku"
EDIT_BATCH = "edit_batch"
#: The Variable where an admin lists the path and URL prefixes a run's params may name.
ALLOWED_VARIABLE = "firered_catalogue_allowed_prefixes"
ALLOWED_VARIABLE_ENV = f"AIRFLOW_VAR_{ALLOWED_VARIABLE.upper()}"
#: Distinct logical dates: each run of these tests gets its own run folder.
FIRST_RUN = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc)


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"firered_example_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install(dag_id: str) -> ModuleType:
    """Copy an example (and the sample manifest) into the tests' DAG folder and load it from there."""
    for name in (f"{dag_id}.py", "firered_catalogue_manifest.csv"):
        shutil.copy(EXAMPLE_DAGS / name, Path(DAGS_FOLDER) / name)
    return load_module(Path(DAGS_FOLDER) / f"{dag_id}.py")


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
    assert set(bag.dag_ids) == {
        CATALOGUE,
        PER_SKU,
        "firered_catalogue_publish",
        "firered_edit_single",
        "firered_submit_then_sense",
    }
    for dag_id, dag in bag.dags.items():
        assert dag.doc_md, f"{dag_id} has no docs"


def test_catalogue_shape(catalogue: ModuleType) -> None:
    dag = catalogue.dag
    assert dag.schedule == "0 2 * * *"
    review = ["review"] if catalogue.HAS_REVIEW else []
    tasks = ["load_manifest", EDIT_BATCH, "summarise", *review, "publish"]
    assert [t.task_id for t in dag.topological_sort()] == tasks
    edit = dag.get_task(EDIT_BATCH)
    assert edit.operator_name == "FireRedBatchEditOperator"
    assert edit.pool == "firered_gateway"
    assert edit.partial_kwargs["deferrable"] is True
    assert dag.get_task("summarise").trigger_rule == "all_done"
    assert dag.params["batch_size"] is None  # then the Variable, then 500
    assert dag.params["review"] is None  # then the Variable, then no review: unattended


def test_per_sku_shape() -> None:
    dag = load_module(EXAMPLE_DAGS / f"{PER_SKU}.py").dag
    assert dag.schedule is None
    assert "max_map_length" in dag.doc_md
    edit = dag.get_task("edit")
    assert edit.operator_name == "FireRedEditOperator"
    assert edit.pool == "firered_gateway"


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("sku,image_url\nA,a.png\n", "m.csv", "row 1, field prompt: missing"),
        ("sku,image_url,prompt\nA,a.png,x\nA,b.png,y\n", "m.csv", "row 2, field sku: 'A' is a duplicate"),
        ("sku,image_url,prompt\n../etc,a.png,x\n", "m.csv", "row 1, field sku: '../etc' is not allowed"),
        ("sku,image_url,prompt\n..,a.png,x\n", "m.csv", "row 1, field sku: '..' is not allowed"),
        ("sku,image_url,prompt\nA,file:///etc/passwd,x\n", "m.csv", "row 1, field image_url: 'file:"),
        ("sku,image_url,prompt\nA,javascript:alert(1),x\n", "m.csv", "is not an http\\(s\\) URL"),
        ("sku,image_url,prompt\nSHOE 1,a.png,x\n", "m.csv", "row 1, field sku: 'SHOE 1' is not allowed"),
        ("sku,image_url,prompt\n", "m.csv", "no rows"),
        ('{"sku": "A"}', "m.json", "expected a JSON list of objects"),
        ("[{", "m.json", "not JSON"),
        ('[{"sku": "A", "image_url": "a.png", "prompt": " "}]', "m.json", "row 1, field prompt: missing"),
    ],
)
def test_manifest_errors_name_the_row_and_field(
    catalogue: ModuleType, text: str, name: str, message: str
) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    with pytest.raises(AirflowFailException, match=f"(?s)manifest {name}.*{message}"):
        catalogue.parse_manifest(text, name, "http://127.0.0.1:1/samples/")


def test_every_bad_row_is_reported_at_once(catalogue: ModuleType) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    rows = [{"sku": f"A{i}", "image_url": "a.png", "prompt": "p"} for i in range(30)]
    rows[3]["prompt"] = ""
    rows[7]["sku"] = "A0"
    with pytest.raises(AirflowFailException) as caught:
        catalogue.parse_manifest(json.dumps(rows), "m.json", "")
    text = str(caught.value)
    assert "32 problem(s), nothing was sent" in text  # 30 relative URLs without a base, 2 more
    assert "row 4, field prompt: missing" in text
    assert "row 8, field sku: 'A0' is a duplicate" in text
    assert "row 1, field image_url: image_url 'a.png' is relative: set the run's image_base_url" in text
    assert "... and 12 more" in text


def test_manifest_json_and_relative_urls(catalogue: ModuleType) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    rows = catalogue.parse_manifest(
        '[{"sku": " A ", "image_url": "a.png", "prompt": "p"}]', "m.json", "http://127.0.0.1:1/samples"
    )
    assert rows == [{"sku": "A", "image_url": "http://127.0.0.1:1/samples/a.png", "prompt": "p"}]
    assert catalogue.resolve_image_url("https://x.test/a.png", "") == "https://x.test/a.png"
    with pytest.raises(AirflowFailException, match="image_base_url"):
        catalogue.resolve_image_url("a.png", "")


def test_run_folders_sort_by_time_and_previous_is_the_latest_earlier_one(
    catalogue: ModuleType, tmp_path: Path
) -> None:
    night = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc)
    assert catalogue.run_folder_name("scheduled", night, night) == "2026-03-01"
    assert catalogue.run_folder_name("manual", None, night) == "2026-03-01T020000Z"
    for name in ("2026-02-27", "2026-02-28T101010Z", "2026-03-01", "2026-03-02", "notes"):
        (tmp_path / name / "batch-0000").mkdir(parents=True)
    (tmp_path / "2026-02-26" / "batch-0000").mkdir(parents=True)
    (tmp_path / "2026-02-28").mkdir()  # no batch in it: nothing to reuse there

    assert catalogue.find_previous(str(tmp_path), "2026-03-01T020000Z") == f"{tmp_path}/2026-03-01"
    assert catalogue.find_previous(str(tmp_path), "2026-03-01") == f"{tmp_path}/2026-02-28T101010Z"
    assert catalogue.find_previous(str(tmp_path), "2026-02-26") is None
    assert catalogue.find_previous(str(tmp_path / "missing"), "2026-03-01") is None


def _catalogue_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, *allowed: Path | str) -> None:
    """The Variables an admin sets: image base URL, and where a run's paths may point (``allowed``)."""
    monkeypatch.setenv("AIRFLOW_VAR_FIRERED_IMAGE_BASE_URL", f"{emulator.cdn_url}/samples/")
    if allowed:
        monkeypatch.setenv(ALLOWED_VARIABLE_ENV, json.dumps([str(prefix) for prefix in allowed]))
    else:
        monkeypatch.delenv(ALLOWED_VARIABLE_ENV, raising=False)
    emulator.set_timings(queued_seconds=0.2, processing_seconds=0.5)


def _run(module: ModuleType, when: datetime, **conf: Any) -> Any:
    # review off unless asked: dag.test() waits for a person's answer (Airflow 3.3), and keeps a
    # run's params on the DAG object.
    return module.dag.test(logical_date=when, run_conf={"poll_interval": 1, "review": False, **conf})


def _after_summarise(module: ModuleType, state: str) -> dict[tuple[str, int], str]:
    """The states of ``review`` (Airflow 3.1+) and ``publish`` once ``summarise`` ended in ``state``."""
    then = {"success": "success", "failed": "upstream_failed", "skipped": "skipped"}[state]
    return {(task, -1): then for task in (["review"] if module.HAS_REVIEW else []) + ["publish"]}


def _states(run: Any) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): str(ti.state) for ti in run.get_task_instances()}


def _posted_prompts(emulator: Emulator) -> list[str]:
    """The prompt of every submit POST, whatever its answer (each one may be paid)."""
    return sorted(str(record.body["prompt"]) for record in emulator.submit_attempts())


def _sheet_links(sheet: Path) -> tuple[list[str], str]:
    text = sheet.read_text(encoding="utf-8")
    return re.findall(r'<img src="([^"]+)"', text), text


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_catalogue_batches_edit_every_sku_and_report_a_failed_one(
    firered_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five SKUs in batches of two: one POST per SKU, a failing SKU paid once and shown with its error."""
    module = install(CATALOGUE)
    _catalogue_env(firered_emulator, monkeypatch, tmp_path)
    manifest = tmp_path / "manifest.json"
    rows = [
        {"sku": "SHOE-1", "image_url": "shoe.png", "prompt": "Make the shoe red"},
        {"sku": "MUG-1", "image_url": "mug.png", "prompt": "Make the mug blue"},
        {"sku": "GONE-1", "image_url": "missing.png", "prompt": "Make it green"},  # the CDN answers 404
        {"sku": "TEE-1", "image_url": "tshirt.png", "prompt": "Make the shirt grey"},
        {"sku": "SHOE-2", "image_url": "shoe.png", "prompt": "Make the shoe gold"},
    ]
    manifest.write_text(json.dumps(rows))
    output_root = tmp_path / "out"

    run = _run(
        module,
        FIRST_RUN,
        manifest=str(manifest),
        output_root=str(output_root),
        batch_size=2,
        parameters={"output_format": "jpeg"},
    )

    states = _states(run)
    assert states == {
        ("load_manifest", -1): "success",
        (EDIT_BATCH, 0): "success",  # a failed SKU does not fail its batch ...
        (EDIT_BATCH, 1): "success",
        (EDIT_BATCH, 2): "success",
        ("summarise", -1): "failed",  # ... the summary reports it and fails the run
        **_after_summarise(module, "failed"),  # ... and nothing is published
    }
    # One POST per SKU, the failing one included, and no second one for it.
    assert _posted_prompts(firered_emulator) == sorted(row["prompt"] for row in rows)
    run_folder = output_root / "2026-03-01T020000Z"
    assert sorted(p.name for p in run_folder.iterdir()) == [
        "batch-0000",
        "batch-0001",
        "batch-0002",
        "index.html",
        "summary.json",
    ]
    summary = json.loads((run_folder / "summary.json").read_text())
    assert (summary["total"], summary["edited"], summary["reused"], summary["failed"]) == (5, 4, 0, 1)
    assert [(b["batch"], b["total"], b["failed"]) for b in summary["batches"]] == [
        ("batch-0000", 2, 0),
        ("batch-0001", 2, 1),
        ("batch-0002", 1, 0),
    ]
    (failure,) = summary["failures"]
    assert failure["key"] == "GONE-1"
    assert failure["batch"] == "batch-0001"
    assert "missing.png" in failure["error"]
    assert summary["problems"] == []
    for number, row in enumerate(rows):
        if row["sku"] == "GONE-1":
            continue
        item = next(i for i in summary["items"] if i["key"] == row["sku"])
        (output,) = item["outputs"]
        assert Path(output).parent == run_folder / f"batch-{number // 2:04d}" / row["sku"]
        with Image.open(output) as image:
            assert image.format == "JPEG"
    # The contact sheet: each input beside its output (relative links that resolve), the failure's error.
    links, text = _sheet_links(run_folder / "index.html")
    outputs = [link for link in links if not link.startswith("http")]
    assert len(outputs) == 4
    for link in outputs:
        assert (run_folder / unquote(link)).is_file(), link
    assert f"{firered_emulator.cdn_url}/samples/shoe.png" in links
    assert html.escape(failure["error"]) in text


def images_in_browser(page_path: Path) -> dict[str, int]:
    """Open the page in a headless Chromium from its folder; each image's ``src`` and decoded width."""
    from tests.e2e.browser import CHROMIUM_ARGS, find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium here to open the contact sheet with")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        chrome = playwright.chromium.launch(
            executable_path=chromium, args=list(CHROMIUM_ARGS), timeout=60_000
        )
        try:
            page = chrome.new_page()
            page.goto(page_path.as_uri(), wait_until="load", timeout=60_000)
            for img in page.locator("img").all():
                img.scroll_into_view_if_needed(timeout=10_000)  # lazy images load once in view
            page.wait_for_function("[...document.images].every((i) => i.complete)", timeout=30_000)
            found: list[list[Any]] = page.evaluate(
                "[...document.images].map((i) => [i.getAttribute('src'), i.naturalWidth])"
            )
        finally:
            chrome.close()
    return {str(src): int(width) for src, width in found}


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_contact_sheet_shows_inputs_and_outputs_in_a_browser(
    firered_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened from its folder, every image of the page loads: inputs from their URLs, outputs beside it."""
    module = install(CATALOGUE)
    _catalogue_env(firered_emulator, monkeypatch, tmp_path)
    manifest = tmp_path / "manifest.json"
    rows = [
        {"sku": "SHOE-1", "image_url": "shoe.png", "prompt": "Make the <shoe> red & shiny"},
        {"sku": "MUG_1.a", "image_url": "mug.png", "prompt": "Make the mug blue"},
    ]
    manifest.write_text(json.dumps(rows))
    output_root = tmp_path / "out"

    run = _run(module, FIRST_RUN + timedelta(days=20), manifest=str(manifest), output_root=str(output_root))

    assert set(_states(run).values()) == {"success"}, _states(run)
    (sheet,) = output_root.glob("*/index.html")
    # Moved elsewhere, the folder's page still shows its outputs: every output link is relative.
    moved = shutil.copytree(sheet.parent, tmp_path / "copied")
    widths = images_in_browser(moved / "index.html")
    assert len(widths) == 4, widths
    assert all(width > 0 for width in widths.values()), widths
    assert sum(src.startswith("batch-0000/") for src in widths) == 2, widths


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_catalogue_rerun_reuses_unchanged_skus_and_reedits_a_changed_one(
    firered_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second run with nothing changed submits nothing; one changed prompt re-edits that SKU only."""
    module = install(CATALOGUE)
    _catalogue_env(firered_emulator, monkeypatch, tmp_path)
    manifest = tmp_path / "manifest.csv"
    output_root = tmp_path / "out"
    rows = {"SHOE-1": "Make the shoe red", "MUG-1": "Make the mug blue", "TEE-1": "Make the shirt grey"}
    images = {"SHOE-1": "shoe.png", "MUG-1": "mug.png", "TEE-1": "tshirt.png"}

    def write_manifest(prompts: dict[str, str]) -> None:
        lines = ["sku,image_url,prompt", *(f"{sku},{images[sku]},{p}" for sku, p in prompts.items())]
        manifest.write_text("\n".join(lines) + "\n")

    def run_and_read(when: datetime) -> dict[str, Any]:
        run = _run(module, when, manifest=str(manifest), output_root=str(output_root), batch_size=2)
        assert set(_states(run).values()) == {"success"}, _states(run)
        folder = output_root / when.strftime("%Y-%m-%dT%H%M%SZ")
        return dict(json.loads((folder / "summary.json").read_text()))

    write_manifest(rows)
    first = run_and_read(FIRST_RUN + timedelta(days=1))
    assert (first["edited"], first["reused"]) == (3, 0)
    assert len(firered_emulator.submit_attempts()) == 3

    # Nothing changed: nothing is submitted, every SKU is copied from the first run.
    second = run_and_read(FIRST_RUN + timedelta(days=2))
    assert len(firered_emulator.submit_attempts()) == 3
    assert (second["edited"], second["reused"], second["failed"]) == (0, 3, 0)
    second_folder = output_root / (FIRST_RUN + timedelta(days=2)).strftime("%Y-%m-%dT%H%M%SZ")
    for item in second["items"]:
        (output,) = item["outputs"]
        assert Path(output).is_relative_to(second_folder)
        assert Path(output).is_file()
    links, _ = _sheet_links(second_folder / "index.html")
    assert all((second_folder / unquote(link)).is_file() for link in links if not link.startswith("http"))

    # One prompt changed (and the catalogue reordered): only that SKU is edited again.
    write_manifest({"TEE-1": rows["TEE-1"], "MUG-1": "Make the mug yellow", "SHOE-1": rows["SHOE-1"]})
    third = run_and_read(FIRST_RUN + timedelta(days=3))
    assert (third["edited"], third["reused"], third["failed"]) == (1, 2, 0)
    assert [i["key"] for i in third["items"] if i["outcome"] == "edited"] == ["MUG-1"]
    assert _posted_prompts(firered_emulator) == sorted([*rows.values(), "Make the mug yellow"])


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_catalogue_with_a_bad_row_sends_nothing(
    firered_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = install(CATALOGUE)
    _catalogue_env(firered_emulator, monkeypatch, tmp_path)
    manifest = tmp_path / "manifest.json"
    rows = [
        {"sku": "GOOD-1", "image_url": "shoe.png", "prompt": "Make the shoe red"},
        {"sku": "BAD-1", "image_url": "file:///etc/passwd", "prompt": "Anything"},
    ]
    manifest.write_text(json.dumps(rows))

    run = _run(module, FIRST_RUN + timedelta(days=10), manifest=str(manifest), output_root=str(tmp_path))

    assert _states(run) == {
        ("load_manifest", -1): "failed",
        (EDIT_BATCH, -1): "upstream_failed",
        ("summarise", -1): "skipped",  # nothing to report: no batch was planned
        **_after_summarise(module, "skipped"),
    }
    assert firered_emulator.submit_attempts() == []
    assert not list(tmp_path.glob("*/summary.json"))


# -- where a run's params may point ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("{root}/catalogue/2026/m.csv", True),
        ("{root}/catalogue", True),
        ("{root}/catalogue/2026/../m.csv", True),  # a `..` that stays inside
        ("file://{root}/catalogue/m.csv", True),
        ("{root}/default.csv", True),  # the default is always accepted
        ("/etc/passwd", False),
        ("{root}/catalogue/../../etc/passwd", False),
        ("{root}/catalogue/2026/../../elsewhere/m.csv", False),
        ("{root}/catalogue-evil/m.csv", False),  # the prefix's string, not its folder
        ("{root}/catalogue/link/m.csv", False),  # a symlink inside the prefix, pointing out
        ("~/m.csv", False),
        ("relative/m.csv", False),
        ("https://cdn.test/catalogue/m.csv", True),
        ("https://CDN.test/catalogue/m.csv", True),
        ("https://cdn.test/catalogue", True),
        ("https://cdn.test/catalogue-evil/m.csv", False),
        ("https://other.test/catalogue/m.csv", False),
        ("http://cdn.test/catalogue/m.csv", False),
        ("https://cdn.test:8443/catalogue/m.csv", False),
        ("https://cdn.test@other.test/catalogue/m.csv", False),
        ("https://cdn.test/catalogue/../m.csv", False),
        ("https://cdn.test/catalogue/%2e%2e/m.csv", False),
        ("https://cdn.test/catalogue/a%2f..%2f..%2fm.csv", False),
        ("https://cdn.test/catalogue/..%5c..%5cm.csv", False),
        ("s3://bucket/catalogue/m.csv", True),
        ("s3://bucket/catalogue-evil/m.csv", False),
        ("s3://other/catalogue/m.csv", False),
        ("s3://aws_admin@bucket/catalogue/m.csv", False),  # another connection's credentials
    ],
)
@pytest.mark.usefixtures("catalogue")
def test_location_params_are_allowed_only_under_a_prefix(tmp_path: Path, value: str, allowed: bool) -> None:
    """A prefix matches whole path segments after resolving; a URL also matches scheme, user, host, port."""
    from airflow.providers.common.compat.sdk import AirflowFailException

    (tmp_path / "catalogue").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "catalogue" / "link").symlink_to(tmp_path / "elsewhere")
    prefixes = [f"{tmp_path}/catalogue", "https://cdn.test/catalogue/", "s3://bucket/catalogue"]
    value = value.format(root=tmp_path)
    default = f"{tmp_path}/default.csv"

    if allowed:
        param_locations.check_location("manifest", value, default, prefixes)
        return
    with pytest.raises(AirflowFailException) as refused:
        param_locations.check_location("manifest", value, default, prefixes)
    message = str(refused.value)
    assert message.startswith(f"manifest: {value!r} "), message
    assert "nothing was sent" in message
    assert "Allowed: the prefixes in the Airflow Variable firered_catalogue_allowed_prefixes" in message
    assert all(repr(prefix) in message for prefix in prefixes), message


@pytest.mark.usefixtures("catalogue")
def test_without_the_prefix_variable_only_the_default_is_allowed(tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    default = str(tmp_path / "out")
    assert param_locations.check_location("output_root", f"{tmp_path}/x/../out/", default, None) == default
    with pytest.raises(AirflowFailException, match="only the default") as refused:
        param_locations.check_location("output_root", f"{default}/night", default, None)
    assert "setting the Airflow Variable firered_catalogue_allowed_prefixes" in str(refused.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"/data"', "expected a JSON list of path or URL prefixes"),
        ('["/data", 3]', "expected a JSON list of path or URL prefixes"),
        ('["/data", " "]', "expected a JSON list of path or URL prefixes"),
        ("/data", "expected a JSON list of path or URL prefixes"),
        ('["data"]', "'data': a path prefix must be absolute"),
        ('["https:///catalogue"]', "a URL needs a scheme and a host"),
        ('["https://cdn.test/a/../b"]', "its path has '.', '..'"),
    ],
)
@pytest.mark.usefixtures("catalogue")
def test_a_malformed_prefix_variable_is_refused(
    monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    monkeypatch.setenv(ALLOWED_VARIABLE_ENV, text)
    with pytest.raises(
        AirflowFailException, match=r"^Variable firered_catalogue_allowed_prefixes: "
    ) as refused:
        param_locations.allowed_prefixes()
    assert message in str(refused.value)
    monkeypatch.setenv(ALLOWED_VARIABLE_ENV, '["/data", "s3://bucket/x"]')
    assert param_locations.allowed_prefixes() == ["/data", "s3://bucket/x"]


#: One SKU: what each location test's manifests hold.
ONE_SKU = [{"sku": "SHOE-1", "image_url": "shoe.png", "prompt": "Make the shoe red"}]


@pytest.mark.usefixtures("airflow_db", "firered_conn")
@pytest.mark.parametrize("case", ["path", "dot-dot", "sibling", "other-host", "no-variable"])
def test_catalogue_param_outside_the_allowed_prefixes_fails_before_anything_is_sent(
    firered_emulator: Emulator,
    hostile: HostileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    case: str,
) -> None:
    """A path elsewhere, a `..` escape, a sibling folder, a URL on another host: refused, 0 POSTs, 0 reads."""
    module = install(CATALOGUE)
    allowed = tmp_path / "catalogue"
    inside, outside = allowed / "manifest.json", tmp_path / "elsewhere" / "manifest.json"
    for path in (inside, outside):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ONE_SKU))
    # Serves the manifest to anyone who asks: the refused URL must never be asked.
    hostile.route("/", Answer(200, {"Content-Type": "application/json"}, json.dumps(ONE_SKU).encode()))
    url_prefix = f"http://127.0.0.1:{hostile.port}/catalogue/"
    conf = {"manifest": str(inside), "output_root": str(allowed / "out")}
    param, value = {
        "path": ("manifest", str(outside)),
        "dot-dot": ("manifest", f"{allowed}/2026/../../elsewhere/manifest.json"),
        "sibling": ("output_root", f"{allowed}-evil"),
        "other-host": ("manifest", f"http://localhost:{hostile.port}/catalogue/manifest.json"),
        "no-variable": ("manifest", str(inside)),
    }[case]
    conf[param] = value
    prefixes = () if case == "no-variable" else (allowed, url_prefix)
    _catalogue_env(firered_emulator, monkeypatch, *prefixes)

    run = _run(module, FIRST_RUN + timedelta(days=30), **conf)

    captured = capfd.readouterr()
    log = captured.out + captured.err
    assert _states(run) == {
        ("load_manifest", -1): "failed",
        (EDIT_BATCH, -1): "upstream_failed",
        ("summarise", -1): "skipped",
        **_after_summarise(module, "skipped"),
    }
    assert firered_emulator.submit_attempts() == []
    assert hostile.seen == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalogue", "elsewhere"]  # nothing written
    assert in_log(f"{param}: {value!r} is not under an allowed prefix; nothing was sent.", log), log
    if prefixes:
        assert in_log(f"Allowed: the prefixes in the Airflow Variable {ALLOWED_VARIABLE}", log)
        assert in_log(f"({str(allowed)!r}, {url_prefix!r})", log)
    else:
        assert in_log(f"only the default, {str(module.SAMPLE_MANIFEST)!r}", log), log


def _http_object_storage() -> bool:
    from airflow.sdk import ObjectStoragePath

    try:
        ObjectStoragePath("http://127.0.0.1/x")
    except TypeError:
        return False
    return True


@pytest.mark.usefixtures("airflow_db", "firered_conn")
@pytest.mark.parametrize("manifest_from", ["path", "url"])
def test_catalogue_params_inside_the_allowed_prefixes_run(
    firered_emulator: Emulator,
    hostile: HostileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    manifest_from: str,
) -> None:
    """A manifest and an output root under the admin's prefixes (through a `..` that stays inside) run."""
    if manifest_from == "url" and not _http_object_storage():
        pytest.skip("this Airflow's ObjectStoragePath does not read http URLs")
    module = install(CATALOGUE)
    allowed = tmp_path / "catalogue"
    (allowed / "2026").mkdir(parents=True)
    (allowed / "manifest.json").write_text(json.dumps(ONE_SKU))
    hostile.route(
        "/catalogue/", Answer(200, {"Content-Type": "application/json"}, json.dumps(ONE_SKU).encode())
    )
    url_prefix = f"http://127.0.0.1:{hostile.port}/catalogue/"
    _catalogue_env(firered_emulator, monkeypatch, allowed, url_prefix)
    manifest = f"{allowed}/2026/../manifest.json" if manifest_from == "path" else f"{url_prefix}manifest.json"
    when = FIRST_RUN + timedelta(days=31)

    run = _run(module, when, manifest=manifest, output_root=f"{allowed}/2026/../out")

    assert set(_states(run).values()) == {"success"}, _states(run)
    assert _posted_prompts(firered_emulator) == [ONE_SKU[0]["prompt"]]
    summary = json.loads((allowed / "out" / when.strftime("%Y-%m-%dT%H%M%SZ") / "summary.json").read_text())
    assert (summary["total"], summary["edited"]) == (1, 1)
    assert bool(hostile.seen) == (manifest_from == "url")


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_per_sku_param_outside_the_allowed_prefixes_fails_before_anything_is_sent(
    firered_emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The per-SKU DAG takes the same params and checks them the same way."""
    module = install(PER_SKU)
    allowed = tmp_path / "catalogue"
    allowed.mkdir()
    (allowed / "manifest.json").write_text(json.dumps(ONE_SKU))
    _catalogue_env(firered_emulator, monkeypatch, allowed)
    evil = f"{allowed}-evil"

    run = module.dag.test(
        run_conf={"manifest": str(allowed / "manifest.json"), "output_root": evil, "poll_interval": 1}
    )

    captured = capfd.readouterr()
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in run.get_task_instances()}
    assert states == {
        ("load_manifest", -1): "failed",
        ("edit", -1): "upstream_failed",
        ("summarise", -1): "skipped",  # nothing to report, and no retries waited for
    }
    assert firered_emulator.submit_attempts() == []
    assert not Path(evil).exists()
    assert in_log(f"output_root: {evil!r} is not under an allowed prefix", captured.out + captured.err)


@pytest.mark.usefixtures("airflow_db", "firered_conn")
def test_per_sku_run_keeps_the_good_skus_when_one_fails(
    firered_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-SKU pattern: a bad SKU fails alone (before any request); the summary lists both."""
    module = install(PER_SKU)
    manifest = tmp_path / "manifest.json"
    good = {"GOOD-1": "Make the shoe red", "GOOD-2": "Make the mug blue"}
    rows: list[dict[str, Any]] = [
        {"sku": "GOOD-1", "image_url": "shoe.png", "prompt": good["GOOD-1"]},
        {"sku": "BAD-1", "image_url": "file:///etc/passwd", "prompt": "Anything"},
        {"sku": "GOOD-2", "image_url": "mug.png", "prompt": good["GOOD-2"]},
    ]
    manifest.write_text(json.dumps(rows))
    output_root = tmp_path / "out"
    _catalogue_env(firered_emulator, monkeypatch, tmp_path)

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
def test_per_sku_pays_once_for_a_sku_whose_job_fails(
    firered_emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-SKU DAG's ``retries: 2`` do not submit a FAILED (charged) SKU again."""
    module = install(PER_SKU)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"sku": "NSFW-1", "image_url": "shoe.png", "prompt": "Make it red"}]))
    _catalogue_env(firered_emulator, monkeypatch, tmp_path)
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


# -- the review before publishing (Airflow 3.1+: human-in-the-loop) -----------------------------------


def _answer_review(choice: str, seen: dict[str, Any]) -> threading.Thread:
    """Answer the run's review as the api-server records a person's answer: the answer, then the resume."""

    def answer() -> None:
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance
        from airflow.models.trigger import handle_event_submit
        from airflow.triggers.base import TriggerEvent
        from airflow.utils.session import create_session
        from sqlalchemy import select

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with create_session() as session:
                ti = session.scalar(
                    select(TaskInstance).where(
                        TaskInstance.dag_id == CATALOGUE,
                        TaskInstance.task_id == "review",
                        TaskInstance.state.in_(["awaiting_input", "deferred"]),
                    )
                )
                detail = session.get(HITLDetail, ti.id) if ti is not None else None
                if ti is not None and detail is not None and not detail.response_received:
                    seen.update(subject=detail.subject, body=detail.body, defaults=detail.defaults)
                    detail.responded_by = {"id": "reviewer", "name": "reviewer"}
                    detail.responded_at = datetime.now(timezone.utc)
                    detail.chosen_options = [choice]
                    detail.params_input = {}
                    event = TriggerEvent(detail.as_resume_event_payload())
                    handle_event_submit(event, task_instance=ti, session=session)
                    return
            time.sleep(0.2)

    # Every model mapped here, before the thread queries them: SQLAlchemy configures its mappers on
    # first use, which fails when another thread does it while a model module is half imported.
    from airflow.models import import_all_models
    from sqlalchemy.orm import configure_mappers

    import_all_models()  # type: ignore[no-untyped-call,unused-ignore]
    configure_mappers()
    thread = threading.Thread(target=answer, name="reviewer", daemon=True)
    thread.start()
    return thread


def test_the_review_comes_after_summarise_or_not_at_all_without_human_in_the_loop(
    catalogue: ModuleType,
) -> None:
    dag = catalogue.dag
    if catalogue.HAS_REVIEW:
        assert dag.get_task("review").upstream_task_ids == {"summarise"}
        assert dag.get_task("publish").upstream_task_ids == {"review"}
        assert dag.get_task("review").defaults == ["Reject"]  # no answer in time: not published
    else:  # Airflow 3.0: published without the step, and the doc says why
        assert "review" not in dag.task_ids
        assert dag.get_task("publish").upstream_task_ids == {"summarise"}
    assert "Airflow 3.0** has no human-in-the-loop operators" in str(dag.doc_md)


@pytest.mark.usefixtures("airflow_db", "firered_conn")
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("choice", "published"), [("Approve", True), ("Reject", False)])
def test_publish_runs_only_when_a_person_approves(
    firered_emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    choice: str,
    published: bool,
) -> None:
    module = install(CATALOGUE)
    if not module.HAS_REVIEW:
        pytest.skip("human-in-the-loop operators need Airflow 3.1+: the DAG publishes without a review")
    _catalogue_env(firered_emulator, monkeypatch, tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(ONE_SKU))
    seen: dict[str, Any] = {}
    reviewer = _answer_review(choice, seen)

    when = FIRST_RUN + timedelta(days=40 + published)
    run = _run(module, when, manifest=str(manifest), output_root=str(tmp_path / "out"), review=True)

    reviewer.join(timeout=10)
    log = "".join(capfd.readouterr())
    states = _states(run)
    assert states[("review", -1)] == "success", states
    assert states[("publish", -1)] == ("success" if published else "skipped"), states
    assert str(run.state) == "success"
    # The text a person reads: the counts, each batch's page in Airflow's UI, the file.
    assert seen["subject"] == "Publish tonight's catalogue edits?"
    body = str(seen["body"])
    assert "**1 SKU(s)**: 1 edited, 0 reused, 0 failed, 0 over budget." in body
    page = f"/firered/contact-sheet/{CATALOGUE}/{quote(run.run_id, safe='')}/{EDIT_BATCH}?map_index=0"
    assert f"- [batch-0000]({page})" in body
    assert f"{tmp_path / 'out' / when.strftime('%Y-%m-%dT%H%M%SZ') / 'index.html'}" in body
    assert ("Publishing 1 SKU(s) (approved by reviewer)" in log) is published
    # Only an approved night reaches the asset that `firered_catalogue_publish` runs on.
    events = _catalogue_asset_events(run)
    if published:
        (extra,) = events
        assert {k: extra[k] for k in ("total", "edited", "reused", "failed", "paid", "dry_run")} == {
            "total": 1,
            "edited": 1,
            "reused": 0,
            "failed": 0,
            "paid": 1,
            "dry_run": False,
        }
        assert str(extra["contact_sheet"]).endswith("index.html")
        assert str(extra["manifest"]).endswith("summary.json")
    else:
        assert events == []


def _catalogue_asset_events(run: Any) -> list[dict[str, Any]]:
    """The extras of the events the run recorded on the catalogue's asset, from the metadata database."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(AssetEvent).filter_by(source_dag_id=run.dag_id, source_run_id=run.run_id)
        return [dict(event.extra) for event in rows if event.asset.name == "firered_catalogue"]
