"""The catalogue report: batch manifests read as untrusted input, ``summary.json`` and the contact sheet."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from airflow_provider_firered.batch import run_results
from airflow_provider_firered.batch.contact_sheet import relative_link, write_contact_sheet
from airflow_provider_firered.batch.manifest import ManifestEntry, write_manifest
from airflow_provider_firered.batch.report import write_summary
from airflow_provider_firered.batch.run_results import read_batch_manifest, read_run
from tests.unit.batch.conftest import memory_path

INPUT = "https://images.example.test/shoe.png"


def line(key: str, outcome: str = "edited", **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "key": key,
        "outcome": outcome,
        "status": "COMPLETED" if outcome != "failed" else "FAILED",
        "request_id": f"req-{key}",
        "outputs": [],
        "error": None,
        "fingerprint": "f",
        "images": [INPUT],
        "prompt": f"edit {key}",
    }
    entry.update(fields)
    return entry


def write_batch(run: Path, name: str, entries: list[Any], *, files: bool = True) -> Path:
    """A batch folder with its manifest (an entry that is a str is written as that raw line)."""
    folder = run / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for entry in entries:
        if isinstance(entry, dict):
            if files and entry["outcome"] != "failed" and not entry["outputs"]:
                output = folder / entry["key"] / f"req-{entry['key']}_0.png"
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_bytes(b"\x89PNG fake")
                entry["outputs"] = [str(output)]
            lines.append(json.dumps(entry))
        else:
            lines.append(entry)
    (folder / "_manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_a_manifest_is_read_with_its_counts(tmp_path: Path) -> None:
    folder = write_batch(
        tmp_path,
        "batch-0000",
        [line("A"), line("B", "reused"), line("C", "failed", error="NSFW content detected")],
    )

    batch = read_batch_manifest(folder)

    assert batch.problems == []
    assert batch.counts() == {
        "total": 3,
        "edited": 1,
        "reused": 1,
        "failed": 1,
        "over_budget": 0,
        "paid": 0,
        "pending": 0,
    }
    by_key = {item.key: item for item in batch.items}
    assert by_key["A"].outputs == (str(folder / "A" / "req-A_0.png"),)
    assert by_key["C"].error == "NSFW content detected"
    assert by_key["B"].batch == "batch-0000"


def test_the_report_reads_what_the_batch_writes(tmp_path: Path) -> None:
    # One manifest format: every entry a batch writes, its progress snapshot included, passes the checks.
    folder = tmp_path / "batch-0000"
    output = folder / "A" / "rid-A_0.png"
    entries = [
        ManifestEntry("A", "edited", "COMPLETED", "rid-A", [str(output)], images=[INPUT], prompt="white"),
        ManifestEntry("B", "failed", "FAILED", "rid-B", error="NSFW content detected", images=[INPUT]),
        ManifestEntry("C", "pending", images=[INPUT], prompt="white", attempt=1, paid=1),
    ]
    write_manifest(folder, entries)

    batch = read_batch_manifest(folder)

    assert batch.problems == []
    assert batch.counts() == {
        "total": 3,
        "edited": 1,
        "reused": 0,
        "failed": 2,
        "over_budget": 0,
        "paid": 1,
        "pending": 0,
    }
    first = batch.items[0]
    assert (first.key, first.outputs, first.images) == ("A", (str(output),), (INPUT,))
    assert batch.items[2].error == "unfinished: its batch stopped before this item ended"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps(line("../escape")), "is not a plain folder name"),
        (json.dumps(line("a/b")), "is not a plain folder name"),
        (json.dumps(line("..")), "is not a plain folder name"),
        (json.dumps(line("A", "hacked")), "outcome 'hacked' is not one of"),
        (json.dumps(line("A", outputs=["/etc/passwd"])), "is not inside the batch folder"),
        (json.dumps(line("A", outputs="x.png")), "outputs must be a list"),
        (json.dumps(line("A", images=["javascript:alert(1)"])), "is not an http(s) URL"),
        (json.dumps(line("A", images=["file:///etc/passwd"])), "is not an http(s) URL"),
        (json.dumps(line("A", error={"html": "<b>"})), "error must be a string"),
    ],
)
def test_a_tampered_line_is_reported_not_trusted(tmp_path: Path, raw: str, why: str) -> None:
    folder = write_batch(tmp_path, "batch-0000", [line("GOOD"), raw])

    batch = read_batch_manifest(folder)

    assert [item.key for item in batch.items] == ["GOOD"]
    (problem,) = batch.problems
    assert problem.startswith(f"{folder / '_manifest.jsonl'} line 2: ")
    assert why in problem


def test_an_output_reached_through_dot_dot_or_a_symlink_is_outside(tmp_path: Path) -> None:
    folder = write_batch(tmp_path / "run", "batch-0000", [])
    (tmp_path / "secret.png").write_bytes(b"x")
    (folder / "A").mkdir()
    (folder / "A" / "link.png").symlink_to(tmp_path / "secret.png")
    dotted = str(folder / "A" / ".." / ".." / ".." / "secret.png")
    write_batch(
        tmp_path / "run",
        "batch-0000",
        [line("A", outputs=[str(folder / "A" / "link.png")]), line("B", outputs=[dotted])],
        files=False,
    )

    batch = read_batch_manifest(folder)

    assert batch.items == []
    assert len(batch.problems) == 2
    assert all("is not inside the batch folder" in problem for problem in batch.problems)


def test_a_second_line_for_a_key_is_a_problem(tmp_path: Path) -> None:
    folder = write_batch(tmp_path, "batch-0000", [line("A"), line("A", "failed", error="later")])

    batch = read_batch_manifest(folder)

    assert [(i.key, i.outcome) for i in batch.items] == [("A", "edited")]
    assert batch.problems == [f"{folder / '_manifest.jsonl'} line 2: A: a second line for this key"]


def test_a_manifest_is_read_only_up_to_its_bound(tmp_path: Path) -> None:
    folder = write_batch(tmp_path, "batch-0000", [line(f"K{i}") for i in range(50)])
    first = (folder / "_manifest.jsonl").read_text().splitlines(keepends=True)
    limit = len("".join(first[:3])) + 10  # three whole lines and part of the fourth

    batch = read_batch_manifest(folder, max_bytes=limit)

    assert [item.key for item in batch.items] == ["K0", "K1", "K2"]
    assert batch.problems == [
        f"{folder / '_manifest.jsonl'}: larger than {limit} bytes; the rest was not read"
    ]


def test_a_pending_item_counts_as_failed_unfinished(tmp_path: Path) -> None:
    folder = write_batch(tmp_path, "batch-0000", [line("A", "pending", status=None)])

    (item,) = read_batch_manifest(folder).items

    assert item.outcome == "failed"
    assert item.error is not None
    assert item.error.startswith("unfinished")


def test_the_run_holds_every_given_item_even_unreported_ones(tmp_path: Path) -> None:
    run = tmp_path / "2026-01-02"
    write_batch(run, "batch-0000", [line("A"), line("STRANGER")])
    given = {
        "batch-0000": [{"key": "A", "images": [INPUT]}, {"key": "B", "images": [INPUT], "prompt": "p"}],
        "batch-0001": [{"key": "C", "images": ["javascript:x"], "prompt": "q"}],
    }

    report = read_run(run, given)

    outcomes = {(i.batch, i.key): (i.outcome, i.status) for i in report.items}
    assert outcomes == {
        ("batch-0000", "A"): ("edited", "COMPLETED"),
        ("batch-0000", "B"): ("failed", "UNREPORTED"),
        ("batch-0001", "C"): ("failed", "UNREPORTED"),
    }
    c = next(i for i in report.items if i.key == "C")
    assert c.error is not None
    assert "wrote no manifest" in c.error
    assert c.images == ()  # a non-http(s) image is never linked
    assert f"{run / 'batch-0000' / '_manifest.jsonl'}: STRANGER: not an item of this batch" in report.problems
    assert f"{run / 'batch-0001' / '_manifest.jsonl'}: missing" in report.problems


def test_an_item_refused_for_its_key_shows_under_the_key_it_was_given(tmp_path: Path) -> None:
    run = tmp_path / "run"
    refused = line("#1", "failed", status="INVALID", error="edits[1].key: must be a plain folder name")
    write_batch(run, "batch-0000", [line("A"), {**refused, "images": [], "prompt": None}])
    given: dict[str, list[dict[str, Any]]] = {
        "batch-0000": [{"key": "A"}, {"key": "B 1", "images": [INPUT], "prompt": "p"}]
    }

    report = read_run(run, given)

    assert report.problems == []
    b = next(item for item in report.items if item.key == "B 1")
    assert (b.outcome, b.status, b.images, b.prompt) == ("failed", "INVALID", (INPUT,), "p")
    assert b.error == "edits[1].key: must be a plain folder name"


def test_without_given_items_the_batch_folders_are_listed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_batch(run, "batch-0001", [line("B")])
    write_batch(run, "batch-0000", [line("A")])
    (run / "not-a-batch").mkdir()

    report = read_run(run)

    assert [b.name for b in report.batches] == ["batch-0000", "batch-0001"]
    assert [i.key for i in report.items] == ["A", "B"]


def test_summary_has_counts_per_batch_and_failures(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_batch(run, "batch-0000", [line("A"), line("B", "reused")])
    write_batch(run, "batch-0001", [line("C", "failed", error="NSFW content detected")])
    report = read_run(run)

    path = write_summary(report, dag_id="d", run_id="r")

    assert path == str(run / "summary.json")
    summary = json.loads(Path(path).read_text())
    assert summary["dag_id"] == "d"
    assert (summary["total"], summary["edited"], summary["reused"], summary["failed"]) == (3, 1, 1, 1)
    assert [(b["batch"], b["total"], b["failed"]) for b in summary["batches"]] == [
        ("batch-0000", 2, 0),
        ("batch-0001", 1, 1),
    ]
    assert summary["failures"] == [
        {
            "key": "C",
            "batch": "batch-0001",
            "status": "FAILED",
            "request_id": "req-C",
            "error": "NSFW content detected",
        }
    ]
    assert [item["key"] for item in summary["items"]] == ["A", "B", "C"]
    assert not list(run.glob(".*.tmp"))


class _Page(HTMLParser):
    """The tags and text of a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_contact_sheet_puts_input_and_output_side_by_side(tmp_path: Path) -> None:
    run = tmp_path / "run"
    hostile = '<script>alert("x")</script>'
    write_batch(
        run,
        "batch-0000",
        [
            line("SKU 1#a", prompt=hostile),
            line('Q"<b>&', "failed", error=f"NSFW {hostile}", images=[INPUT + '?a="1"<x>']),
        ],
    )

    sheet = Path(write_contact_sheet(read_run(run), title=f"run {hostile}"))

    assert sheet == run / "index.html"
    page = parse_page(sheet)
    tags = [tag for tag, _ in page.tags]
    assert "script" not in tags
    assert hostile in "".join(page.text)  # shown as text, never as markup
    assert f"NSFW {hostile}" in page.text
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    # the input on the web, the output relative to the page: both work wherever the folder is opened
    assert images.count(INPUT) == 1
    assert INPUT + '?a="1"<x>' in images
    (output,) = [src for src in images if src and not src.startswith("https://")]
    assert output == "batch-0000/SKU%201%23a/req-SKU%201%23a_0.png"
    assert (sheet.parent / unquote(output)).is_file()
    csp = [attrs for tag, attrs in page.tags if tag == "meta" and attrs.get("http-equiv")]
    assert csp
    assert "default-src 'none'" in str(csp[0]["content"])
    text = " ".join(page.text)
    assert re.search(r"failed:\s*1", text)
    assert re.search(r"edited:\s*1", text)


def test_relative_link_only_inside_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert relative_link(str(run / "batch-0000" / "A" / "x y.png"), str(run)) == "batch-0000/A/x%20y.png"
    assert relative_link(f"file://{run}/batch-0000/A/x.png", str(run)) == "batch-0000/A/x.png"
    assert relative_link(str(tmp_path / "elsewhere.png"), str(run)) is None
    assert relative_link(str(run / ".." / "run2" / "x.png"), str(run)) is None
    assert relative_link("https://cdn.example.test/x.png", str(run)) is None


def test_plain_segments_and_web_urls() -> None:
    assert run_results.is_plain_segment("SKU-1.2_a b")
    for bad in ("", ".", "..", "a/b", "a\\b", "a\nb", "a\0b", "x" * 256, 5, None):
        assert not run_results.is_plain_segment(bad), bad
    assert run_results.is_web_url("http://127.0.0.1:8/a.png")
    for bad in (
        "javascript:alert(1)",
        "file:///etc/passwd",
        "//host/x",
        "data:image/png;base64,x",
        "https://",
        "https://images.example.test/a b.png",  # the shared check: no whitespace
        "https://images.example.test:99999/a.png",  # nor a port out of range
        "https://images.example.test/\u202egnp.exe",  # and the page's own: printable only
    ):
        assert not run_results.is_web_url(bad), bad


@pytest.mark.usefixtures("memory_store")
def test_object_storage_run_folder() -> None:
    run = memory_path("memory://catalogue/out/2026-01-02")
    batch = run / "batch-0000"
    output = batch / "A" / "req-A_0.png"
    output.write_bytes(b"png")
    outside = "memory://catalogue/elsewhere/x.png"
    entries = [line("A", outputs=[str(output)]), line("B", outputs=[outside])]
    (batch / "_manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))

    report = read_run(str(run))
    summary = json.loads((run / "summary.json").read_text()) if write_summary(report) else {}
    sheet = write_contact_sheet(report)

    assert [i.key for i in report.items] == ["A"]
    (problem,) = report.problems
    assert "line 2: B: output" in problem
    assert summary["edited"] == 1
    assert sheet == str(run / "index.html")
    assert 'src="batch-0000/A/req-A_0.png"' in (run / "index.html").read_text()


# -- a manifest read without trusting it, the report written whatever it holds ------------------------


def test_a_deeply_nested_line_is_a_problem_and_the_report_is_still_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    folder = write_batch(run, "batch-0000", [line("A"), "[" * 200_000, line("B")])

    report = read_run(run)
    summary = Path(write_summary(report))
    sheet = Path(write_contact_sheet(report))

    assert [item.key for item in report.items] == ["A", "B"]
    assert report.problems == [f"{folder / '_manifest.jsonl'} line 2: not JSON: nested too deeply"]
    assert json.loads(summary.read_text())["problems"] == report.problems
    assert "line 2: not JSON: nested too deeply" in sheet.read_text()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["link to /dev/zero", "fifo"])
def test_a_manifest_that_is_a_link_or_a_fifo_is_a_problem_not_a_hang(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "run" / "batch-0000"
    folder.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(folder / "_manifest.jsonl")
    else:
        (folder / "_manifest.jsonl").symlink_to("/dev/zero")

    report = read_run(tmp_path / "run", {"batch-0000": [{"key": "A", "images": [INPUT], "prompt": "p"}]})

    (problem,) = report.problems
    assert problem.startswith(f"{folder / '_manifest.jsonl'}: cannot be read")
    assert [(item.key, item.outcome) for item in report.items] == [("A", "failed")]
    assert Path(write_summary(report)).is_file()
    assert Path(write_contact_sheet(report)).is_file()


def test_an_over_long_line_is_a_problem_and_the_lines_after_it_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_results, "MAX_PROBLEMS", 3)
    folder = write_batch(
        tmp_path, "batch-0000", [line("A"), "x" * (2 * 1024 * 1024), line("B"), *["{bad"] * 5]
    )

    batch = read_batch_manifest(folder)

    assert [item.key for item in batch.items] == ["A", "B"]
    manifest = folder / "_manifest.jsonl"
    assert batch.problems == [
        f"{manifest} line 2: longer than {1024 * 1024} bytes; not read",
        f"{manifest} line 4: not JSON",
        f"{manifest} line 5: not JSON",
        f"{manifest}: 3 more problem(s) not listed",
    ]


@pytest.mark.parametrize("write", [write_summary, write_contact_sheet], ids=["summary", "contact sheet"])
def test_a_link_planted_at_the_page_or_its_temporary_name_is_not_written_through(
    tmp_path: Path, write: Any
) -> None:
    run = tmp_path / "run"
    write_batch(run, "batch-0000", [line("A")])
    name = "summary.json" if write is write_summary else "index.html"
    victims: dict[str, Path] = {}
    for planted in (name, f".{name}.tmp"):  # the target, and the fixed temporary name used before
        victim = tmp_path / f"victim{len(victims)}"
        victim.write_text("precious")
        (run / planted).symlink_to(victim)
        victims[planted] = victim

    written = Path(write(read_run(run)))

    assert [victim.read_text() for victim in victims.values()] == ["precious", "precious"]
    assert written == run / name
    assert written.is_file()
    assert not written.is_symlink()
    assert written.stat().st_size > 100
    assert (run / f".{name}.tmp").is_symlink()  # left alone: never written through
