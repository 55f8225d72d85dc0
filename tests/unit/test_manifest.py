"""The batch manifest: written whole, read back without trusting it, found under earlier runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_firered.exceptions import FireRedError
from airflow_provider_firered.manifest import (
    MANIFEST_NAME,
    ManifestEntry,
    previous_entries,
    read_manifest,
    write_manifest,
)


def entry(key: str, **fields: object) -> ManifestEntry:
    return ManifestEntry(key, "edited", "COMPLETED", request_id=f"rid-{key}", **fields)  # type: ignore[arg-type]


def test_a_manifest_round_trips_and_leaves_no_partial_file(tmp_path: Path) -> None:
    written = write_manifest(tmp_path / "run", [entry("A", outputs=["/x/A/1.png"]), entry("B")])
    assert written == str(tmp_path / "run" / MANIFEST_NAME)
    assert [json.loads(line)["key"] for line in Path(written).read_text().splitlines()] == ["A", "B"]
    assert read_manifest(tmp_path / "run") == [entry("A", outputs=["/x/A/1.png"]), entry("B")]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [MANIFEST_NAME]
    assert read_manifest(tmp_path / "nothing-here") is None


def test_a_tampered_line_is_skipped_not_trusted(tmp_path: Path) -> None:
    lines = [
        json.dumps({"key": "A", "outcome": "edited", "outputs": ["a.png"]}),
        "not json",
        json.dumps({"key": "B", "outcome": "edited", "outputs": "a.png"}),
        json.dumps({"key": "C", "outcome": "stolen"}),
        json.dumps({"key": 5, "outcome": "edited"}),
        json.dumps({"key": "D", "outcome": "failed", "error": {"nested": True}}),
        json.dumps(["key", "E"]),
    ]
    (tmp_path / MANIFEST_NAME).write_text("\n".join(lines))
    assert [e.key for e in read_manifest(tmp_path) or []] == ["A"]


def test_an_oversized_manifest_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("airflow_provider_firered.manifest.MAX_MANIFEST_BYTES", 100)
    write_manifest(tmp_path, [entry(f"K{n}") for n in range(10)])
    with pytest.raises(FireRedError, match="is larger than 100 bytes"):
        read_manifest(tmp_path)


def test_earlier_runs_are_searched_one_level_down(tmp_path: Path) -> None:
    write_manifest(tmp_path / "night1" / "batch-0000", [entry("A"), entry("B")])
    write_manifest(tmp_path / "night1" / "batch-0001", [entry("C")])
    write_manifest(tmp_path / "single", [entry("A", prompt="newer")])
    found = previous_entries([str(tmp_path / "night1"), str(tmp_path / "single")])
    assert sorted(found) == ["A", "B", "C"]
    assert found["A"][0].prompt == "newer"  # later roots win
    assert found["C"][1] == tmp_path / "night1" / "batch-0001"
    assert previous_entries([str(tmp_path / "missing")]) == {}
