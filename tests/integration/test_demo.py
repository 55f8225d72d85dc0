"""The ``make demo`` script, run as a user runs it: a subprocess with its own Airflow home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from tests.conftest import TEST_KEY

if TYPE_CHECKING:
    from airflow_provider_firered.emulator import Emulator

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"
SAMPLE_SKUS = ["SHOE-1001", "SHOE-1002", "MUG-2001", "MUG-2002", "TEE-3001"]


def run_demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FIRERED_")}
    base.update(FIRERED_DEMO_HOME=str(tmp_path / "home"), FIRERED_DEMO_OUTPUT=str(tmp_path / "out"), **env)
    return subprocess.run(
        [sys.executable, str(DEMO)],
        env=base,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )


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


@pytest.mark.timeout(300)
def test_demo_edits_the_sample_catalogue_with_the_emulator(tmp_path: Path) -> None:
    result = run_demo(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 of 5 SKU(s) edited; 5 waited deferred." in result.stdout
    (run_folder,) = (tmp_path / "out").iterdir()
    for sku in SAMPLE_SKUS:
        assert f"    {sku:<16} success" in result.stdout
        (image_path,) = (run_folder / sku).iterdir()
        with Image.open(image_path) as image:
            assert image.format == "PNG"
    assert processes_of(tmp_path) == []


@pytest.mark.timeout(300)
def test_demo_with_a_key_uses_that_gateway_and_reports_a_failed_sku(
    firered_emulator: Emulator, tmp_path: Path
) -> None:
    """With FIRERED_API_KEY the demo talks to the configured gateway; a bad SKU fails the demo."""
    manifest = tmp_path / "manifest.json"
    rows = [
        {"sku": "GOOD", "image_url": f"{firered_emulator.cdn_url}/samples/mug.png", "prompt": "Make it red"},
        {"sku": "BAD", "image_url": "file:///etc/hostname", "prompt": "Make it blue"},
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
    assert "    GOOD             success" in result.stdout
    assert "    BAD              failed" in result.stdout
    (submitted,) = firered_emulator.submissions()
    assert submitted.body["prompt"] == "Make it red"
    assert submitted.headers["Ocp-Apim-Subscription-Key"] == TEST_KEY
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
