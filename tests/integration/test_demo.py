"""The ``make demo`` script, run as a user runs it: a subprocess with its own Airflow home."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from tests.conftest import TEST_KEY
from tests.subprocesses import run_script

if TYPE_CHECKING:
    import subprocess

    from airflow_provider_firered.emulator import Emulator

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"
SAMPLE_SKUS = ["SHOE-1001", "SHOE-1002", "MUG-2001", "MUG-2002", "TEE-3001"]


def run_demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FIRERED_")}
    base.update(FIRERED_DEMO_HOME=str(tmp_path / "home"), FIRERED_DEMO_OUTPUT=str(tmp_path / "out"), **env)
    # A loaded 2-core machine: a demo run took 240 s with a load of 11.
    return run_script([sys.executable, str(DEMO)], env=base, timeout=420)


def run_folders(tmp_path: Path) -> list[Path]:
    return [path for path in (tmp_path / "out").iterdir() if path.is_dir()]


def processes_of(tmp_path: Path) -> list[int]:
    """Live processes started by a demo run here (they inherit its FIRERED_DEMO_HOME)."""
    needle = f"FIRERED_DEMO_HOME={tmp_path / 'home'}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.timeout(900)  # two demo runs on a loaded 2-core machine
def test_demo_edits_the_sample_catalogue_in_batches_then_reuses_it(tmp_path: Path) -> None:
    result = run_demo(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "5 of 5 SKU(s) edited, 0 reused from an earlier run, 0 failed; 3 batch task(s), 3 waited deferred."
        in result.stdout
    )
    (run_folder,) = run_folders(tmp_path)
    assert f"Contact sheet: {run_folder / 'index.html'}" in result.stdout
    assert (run_folder / "index.html").is_file()
    # The review is off in the demo (dags test would wait for a person): publish follows summarise.
    assert "    review                       success" in result.stdout
    assert "    publish                      success" in result.stdout
    # The page in the local UI, for the first batch task, and how to start that UI.
    pages = re.findall(r"In Airflow: +(http://localhost:8080/\S+)", result.stdout)
    assert len(pages) == 1, result.stdout
    assert pages[0].startswith(
        "http://localhost:8080/firered/contact-sheet/firered_catalogue_reedit/manual__"
    )
    assert pages[0].endswith("/edit_batch?map_index=0")
    assert "(batch-0000; map_index=1..2 for the others)" in result.stdout
    assert f"AIRFLOW_HOME={tmp_path / 'home'} " in result.stdout
    assert " api-server --port 8080" in result.stdout
    # The emulator stopped with the demo: the sheet shows the copies kept of its images.
    sheet = (run_folder / "index.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)" alt=""', sheet)
    assert len(sources) == len(SAMPLE_SKUS), sheet
    for source in sources:
        assert re.fullmatch(r"batch-000[0-2]/_inputs/[0-9a-f]{64}", source), source
        with Image.open(run_folder / source) as image:
            assert image.format == "PNG"
    for number, sku in enumerate(SAMPLE_SKUS):
        assert f"    {sku:<16} edited   batch-{number // 2:04d}/{sku}/" in result.stdout
        (image_path,) = (run_folder / f"batch-{number // 2:04d}" / sku).iterdir()
        with Image.open(image_path) as image:
            assert image.format == "PNG"
    assert processes_of(tmp_path) == []

    # Run again: nothing changed, so every SKU is copied from the first run and nothing waits.
    again = run_demo(tmp_path)

    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 of 5 SKU(s) edited, 5 reused from an earlier run, 0 failed" in again.stdout
    assert len(run_folders(tmp_path)) == 2
    for sku in SAMPLE_SKUS:
        assert f"    {sku:<16} reused   batch-" in again.stdout
    assert processes_of(tmp_path) == []


@pytest.mark.timeout(300)
def test_demo_with_a_key_uses_that_gateway_and_reports_a_failed_sku(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    """With FIRERED_API_KEY the demo talks to the configured gateway; a failed SKU fails the demo."""
    manifest = tmp_path / "manifest.json"
    rows = [
        {"sku": "GOOD", "image_url": f"{firered_emulator.cdn_url}/samples/mug.png", "prompt": "Make it red"},
        {"sku": "BAD", "image_url": f"{firered_emulator.cdn_url}/samples/gone.png", "prompt": "Make it blue"},
    ]
    manifest.write_text(json.dumps(rows))

    result = run_demo(
        tmp_path,
        FIRERED_API_KEY=TEST_KEY,
        FIRERED_GATEWAY_URL=firered_emulator.gateway_url,
        FIRERED_MANIFEST=str(manifest),
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "demo failed: the run failed (failed SKUs: BAD)" in result.stderr
    assert "    GOOD             edited   batch-0000/GOOD/" in result.stdout
    assert "    BAD              failed   FAILED: " in result.stdout
    assert "1 of 2 SKU(s) edited, 0 reused from an earlier run, 1 failed; 1 batch task(s)" in result.stdout
    # One POST per SKU, the failing one included (it is paid once).
    assert sorted(r.body["prompt"] for r in firered_emulator.submit_attempts()) == [
        "Make it blue",
        "Make it red",
    ]
    assert {r.headers["Ocp-Apim-Subscription-Key"] for r in firered_emulator.submit_attempts()} == {TEST_KEY}
    assert TEST_KEY not in result.stdout + result.stderr
    assert processes_of(tmp_path) == []


def test_demo_refuses_to_empty_a_folder_that_is_not_its_own(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    precious = tmp_path / "home" / "notes.txt"
    precious.write_text("keep me")

    result = run_demo(tmp_path)

    assert result.returncode == 1
    assert "is not empty and holds no demo database: not deleting it" in result.stderr
    assert precious.read_text() == "keep me"
