"""The batch manifest: written whole, read back without trusting it, found under earlier runs."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tracemalloc
from dataclasses import asdict
from pathlib import Path

import pytest

from airflow_provider_firered.batch.earlier_runs import EarlierBatch, NotReusable, copy_outputs
from airflow_provider_firered.batch.manifest import (
    MANIFEST_NAME,
    ManifestEntry,
    ReadBudget,
    TooLarge,
    bounded_lines,
    previous_entries,
    read_manifest,
    write_manifest,
)
from airflow_provider_firered.exceptions import FireRedError
from tests.unit.batch.conftest import memory_path


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
    monkeypatch.setattr("airflow_provider_firered.batch.manifest.MAX_MANIFEST_BYTES", 100)
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
    assert found["C"][1].path == tmp_path / "night1" / "batch-0001"
    assert previous_entries([str(tmp_path / "missing")]) == {}


# -- earlier runs: read without trusting them, within bounds ------------------------------------------

DEEP = "[" * 200_000  # json.loads raises RecursionError, not ValueError


def earlier_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "airflow_provider_firered.batch.manifest"]


def test_a_deeply_nested_line_is_a_bad_line_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = json.dumps(asdict(entry("A")))
    (tmp_path / MANIFEST_NAME).write_text(f'{DEEP}\n{good}\n{{"key": {DEEP}\n')
    assert [e.key for e in read_manifest(tmp_path) or []] == ["A"]  # the batch's own progress
    caplog.set_level(logging.INFO)
    found = previous_entries([str(tmp_path)])  # an earlier run
    assert list(found) == ["A"]
    (warning,) = earlier_warnings(caplog)  # logged once, for both bad lines
    assert "2 line(s) are not valid entries and were skipped" in warning


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["link to /dev/zero", "fifo", "link to a good manifest elsewhere"])
def test_an_earlier_manifest_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    night = tmp_path / "night1"
    night.mkdir()
    manifest = night / MANIFEST_NAME
    if kind == "fifo":
        os.mkfifo(manifest)  # opening it for reading would block until a writer came
    elif kind == "link to /dev/zero":
        manifest.symlink_to("/dev/zero")  # reading it would never end
    else:
        write_manifest(tmp_path / "elsewhere", [entry("A")])
        manifest.symlink_to(tmp_path / "elsewhere" / MANIFEST_NAME)
    caplog.set_level(logging.INFO)
    assert previous_entries([str(night)]) == {}
    (warning,) = earlier_warnings(caplog)
    assert warning.startswith(f"Earlier manifest {manifest} cannot be read")
    assert warning.endswith("nothing is reused from it")


def test_an_oversized_earlier_manifest_means_nothing_to_reuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("airflow_provider_firered.batch.manifest.MAX_MANIFEST_BYTES", 100)
    write_manifest(tmp_path / "big", [entry(f"K{n}") for n in range(10)])
    write_manifest(tmp_path / "small", [entry("S")])
    monkeypatch.setattr("airflow_provider_firered.batch.manifest.MAX_MANIFEST_BYTES", 300)
    caplog.set_level(logging.INFO)
    assert list(previous_entries([str(tmp_path / "big"), str(tmp_path / "small")])) == ["S"]
    (warning,) = earlier_warnings(caplog)
    assert "is larger than 300 bytes" in warning
    with pytest.raises(FireRedError, match="is larger than 300 bytes"):  # its own: loud
        read_manifest(tmp_path / "big")


def test_the_bytes_read_from_all_earlier_runs_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    roots = []
    for night in range(4):
        write_manifest(tmp_path / f"n{night}", [entry(f"K{night}")])
        roots.append(str(tmp_path / f"n{night}"))
    size = (tmp_path / "n0" / MANIFEST_NAME).stat().st_size
    monkeypatch.setattr("airflow_provider_firered.batch.earlier_runs.MAX_EARLIER_BYTES", 2 * size)
    caplog.set_level(logging.INFO)
    assert sorted(previous_entries(roots)) == ["K0", "K1"]
    (warning,) = earlier_warnings(caplog)  # once, however many roots are left
    assert (
        f"more than {2 * size} manifest bytes in all; {tmp_path / 'n2'} and the rest are not read" in warning
    )


def test_the_subfolders_read_from_an_earlier_root_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("airflow_provider_firered.batch.earlier_runs.MAX_EARLIER_FOLDERS", 3)
    for batch in range(3):
        write_manifest(tmp_path / "night1" / f"batch-{batch:04d}", [entry(f"K{batch}")])
    assert sorted(previous_entries([str(tmp_path / "night1")])) == ["K0", "K1", "K2"]
    (tmp_path / "night1" / "summary.json").write_text("{}")  # a fourth entry
    caplog.set_level(logging.INFO)
    assert previous_entries([str(tmp_path / "night1")]) == {}
    (warning,) = earlier_warnings(caplog)
    assert "holds more than 3 entries: not searched for batch folders" in warning


def test_a_batch_folder_that_is_a_link_is_not_read(tmp_path: Path) -> None:
    write_manifest(tmp_path / "elsewhere", [entry("X")])
    write_manifest(tmp_path / "night1" / "batch-0000", [entry("A")])
    (tmp_path / "night1" / "batch-0001").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "latest").symlink_to(tmp_path / "night1")  # the root itself may be a link
    assert sorted(previous_entries([str(tmp_path / "latest")])) == ["A"]


def test_reading_a_manifest_holds_about_one_line_in_memory(tmp_path: Path) -> None:
    # 8 MB of lines that are not entries, and one line of 3 MiB: nothing is kept, and the peak stays
    # near one line (it was about 3.7 times the bytes read).
    padding = "x" * 1000
    bad = "".join(json.dumps({"key": n, "outcome": "edited", "pad": padding}) + "\n" for n in range(8000))
    (tmp_path / MANIFEST_NAME).write_text(bad + "y" * (3 * 1024 * 1024) + "\n" + bad)
    size = (tmp_path / MANIFEST_NAME).stat().st_size
    for read in (lambda: read_manifest(tmp_path), lambda: previous_entries([str(tmp_path)])):
        tracemalloc.start()
        try:
            assert not read()
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 3 * 1024 * 1024 < size / 6


# -- writing: never through a planted link --------------------------------------------------------------


def test_a_link_planted_at_the_manifest_or_its_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    victims: list[Path] = []
    for name in (MANIFEST_NAME, f".{MANIFEST_NAME}.part", f".{MANIFEST_NAME}.tmp"):
        victim = tmp_path / f"victim-{len(victims)}"
        victim.write_text("precious")
        (root / name).symlink_to(victim)
        victims.append(victim)
    write_manifest(root, [entry("A")])
    assert [victim.read_text() for victim in victims] == ["precious"] * 3
    assert not (root / MANIFEST_NAME).is_symlink()
    assert (root / MANIFEST_NAME).is_file()
    assert [e.key for e in read_manifest(root) or []] == ["A"]
    # The temporary file was fresh: the planted names are still there, untouched, and nothing else.
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [MANIFEST_NAME, f".{MANIFEST_NAME}.part", f".{MANIFEST_NAME}.tmp"]
    )


# -- copying an earlier output --------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 40
RID = "firered-image-edit-v1-1_019d0000-0000-0000-0000-000000000001"


@pytest.mark.usefixtures("memory_store")
def test_on_object_storage_only_an_image_inside_the_key_folder_is_copied(tmp_path: Path) -> None:
    root = memory_path("memory://catalogue/night1")
    (root / "A").mkdir(parents=True, exist_ok=True)
    (root / "A" / "old-name.webp").write_bytes(PNG)
    (root / "A" / "page.png").write_bytes(b"<html><script>alert(1)</script></html>")
    (root / "B").mkdir(parents=True, exist_ok=True)
    (root / "B" / "other.png").write_bytes(PNG)
    batch = EarlierBatch(root)

    def copy(output: str, max_bytes: int = 1000) -> list[str]:
        earlier = ManifestEntry("A", "edited", "COMPLETED", request_id=RID, outputs=[output])
        return copy_outputs(earlier, batch, tmp_path / "A", max_bytes=max_bytes)

    assert copy(str(root / "A" / "old-name.webp")) == [str(tmp_path / "A" / f"{RID}_0.png")]
    assert (tmp_path / "A" / f"{RID}_0.png").read_bytes() == PNG
    for output, why in [
        (str(root / "A" / "page.png"), "is not a PNG, JPEG, WebP or GIF image"),
        (str(root / "B" / "other.png"), "is not a file of"),
        (str(root / "A" / ".." / "B" / "other.png"), "is not a file of"),
        ("memory://elsewhere/night1/A/old-name.webp", "is not a file of"),
        (str(tmp_path / "local.png"), "is not in the object store of its earlier run"),
    ]:
        with pytest.raises(NotReusable, match=re.escape(why)):
            copy(output)
    with pytest.raises(NotReusable, match="larger than the 20-byte max_download_bytes"):
        copy(str(root / "A" / "old-name.webp"), max_bytes=20)
    assert sorted(p.name for p in (tmp_path / "A").iterdir()) == [f"{RID}_0.png"]


def test_a_refused_output_leaves_nothing_of_its_item_behind(tmp_path: Path) -> None:
    night = tmp_path / "night1"
    (night / "A").mkdir(parents=True)
    (night / "A" / "a_0.png").write_bytes(PNG)
    (night / "A" / "a_1.png").symlink_to(night / "A" / "a_0.png")  # a link, even to its own file
    earlier = ManifestEntry(
        "A", "edited", "COMPLETED", request_id=RID, outputs=[str(night / "A" / f"a_{n}.png") for n in (0, 1)]
    )
    with pytest.raises(NotReusable, match="Too many levels of symbolic links"):
        copy_outputs(earlier, EarlierBatch(night), tmp_path / "n2" / "A", max_bytes=1000)
    assert list((tmp_path / "n2" / "A").iterdir()) == []  # the first copy was removed


def test_lines_are_read_with_read_alone_and_bounded() -> None:
    # Object storage files (fsspec) have no bounded readline: only read(n) is used.
    class OnlyRead:
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def read(self, size: int) -> bytes:
            return self.data.read(size)

    data = b"a\r\n" + b"x" * 200_000 + b"\n\nlast"
    assert list(bounded_lines(OnlyRead(data), ReadBudget(len(data)), max_line=100_000)) == [  # type: ignore[arg-type]
        b"a",
        None,
        b"",
        b"last",
    ]
    with pytest.raises(TooLarge):
        list(bounded_lines(OnlyRead(data), ReadBudget(len(data) - 1)))  # type: ignore[arg-type]
