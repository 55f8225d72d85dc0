"""
The report of a batched catalogue run: its batches' result manifests, read and checked, then
``summary.json`` and ``index.html`` (a contact sheet a person opens in a browser) in the run folder.

A run folder holds one folder per batch (``batch-0000/``, ...), each with the ``_manifest.jsonl``
written by ``FireRedBatchEditOperator``: one JSON object per item. A manifest is read as untrusted
input: bounded in size, each line checked (a plain key, a known outcome, outputs inside the batch
folder, http(s) input images). A line that fails a check is reported as a problem and not used.
Locations are local paths or any ``ObjectStoragePath`` URL.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import posixpath
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow_provider_firered.batch.earlier_runs import (
    MAX_LINE_BYTES,
    ReadBudget,
    TooLarge,
    bounded_lines,
    open_regular_below,
)
from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.media.output_paths import as_target, check_inside
from airflow_provider_firered.utils.atomic_files import write_atomic

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence
    from typing import IO

    from airflow.providers.common.compat.sdk import ObjectStoragePath

#: The result manifest a batch writes in its folder.
MANIFEST_NAME = "_manifest.jsonl"
SUMMARY_NAME = "summary.json"
CONTACT_SHEET_NAME = "index.html"
OUTCOMES = ("edited", "reused", "failed")
#: The outcome of an item still waiting, in the snapshot a batch writes while it runs.
PENDING = "pending"
#: A batch manifest larger than this is not read past it (500 items take about 500 KB).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: Longest text kept from a manifest field (errors, prompts) for the summary and the page.
MAX_TEXT = 2000
#: Problems listed per batch manifest; past them one line counts the rest (a manifest of a million
#: bad lines would otherwise make a summary of a million problems).
MAX_PROBLEMS = 100
_MAX_KEY = 255
_MAX_LIST = 64
#: How a batch names an item whose key it refused: its position in the batch.
_PLACEHOLDER = re.compile(r"#(\d{1,9})")


@dataclass(frozen=True)
class ItemResult:
    """
    One item (SKU) of a batch, as its manifest line reported it, after the checks.

    :param key: the item's key: one plain path segment.
    :param outcome: ``edited``, ``reused`` or ``failed``.
    :param batch: the name of the batch folder it belongs to.
    """

    key: str
    outcome: str
    batch: str
    status: str | None = None
    request_id: str | None = None
    outputs: tuple[str, ...] = ()
    error: str | None = None
    images: tuple[str, ...] = ()
    prompt: str = ""


@dataclass
class BatchResult:
    """A batch folder's manifest: its items and what was wrong with it."""

    name: str
    manifest: str
    items: list[ItemResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    found: bool = True

    def counts(self) -> dict[str, int]:
        """``total`` and the count of each outcome."""
        counts = {"total": len(self.items)} | {outcome: 0 for outcome in OUTCOMES}
        for item in self.items:
            counts[item.outcome] += 1
        return counts


@dataclass
class RunReport:
    """Every batch of a run, read from its run folder."""

    run_folder: str
    batches: list[BatchResult]

    @property
    def items(self) -> list[ItemResult]:
        return [item for batch in self.batches for item in batch.items]

    @property
    def problems(self) -> list[str]:
        return [problem for batch in self.batches for problem in batch.problems]

    def counts(self) -> dict[str, int]:
        totals = {"total": 0} | {outcome: 0 for outcome in OUTCOMES}
        for batch in self.batches:
            for name, value in batch.counts().items():
                totals[name] += value
        return totals


# -- checks -------------------------------------------------------------------------------------------


def is_plain_segment(text: object) -> bool:
    """Whether ``text`` can name one folder: no separators, not ``.``/``..``, no control characters."""
    return (
        isinstance(text, str)
        and 0 < len(text) <= _MAX_KEY
        and text not in (".", "..")
        and "/" not in text
        and "\\" not in text
        and text.isprintable()
    )


def is_web_url(text: object) -> bool:
    """Whether ``text`` is an absolute http(s) URL with a host (the only input images linked)."""
    if not isinstance(text, str) or not text.isprintable():
        return False
    parts = urlsplit(text)
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def _text(value: object, name: str, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string{' or null' if optional else ''}")
    return value[:MAX_TEXT]


def _strings(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or len(value) > _MAX_LIST or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of at most {_MAX_LIST} strings")
    return list(value)


def _inside(location: str, folder: Path | ObjectStoragePath) -> bool:
    try:
        check_inside(as_target(location, field_name="outputs"), folder, field_name="outputs")
    except (FireRedValidationError, ValueError, TypeError):
        return False
    return True


def parse_line(line: str, batch: str, folder: Path | ObjectStoragePath) -> ItemResult:
    """
    One manifest line as an item, after its checks.

    :param line: the line's text.
    :param batch: the batch folder's name.
    :param folder: the batch folder: every output must lie inside it.
    :raises ValueError: saying which check failed.
    """
    try:
        record = json.loads(line)
    except ValueError:
        raise ValueError("not JSON") from None
    except RecursionError:  # a line of "[[[[...": a bad line, not the end of the report
        raise ValueError("not JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    key = record.get("key")
    if not is_plain_segment(key):
        raise ValueError(f"key {str(key)[:80]!r} is not a plain folder name")
    assert isinstance(key, str)
    outcome = record.get("outcome")
    if outcome not in (*OUTCOMES, PENDING):
        raise ValueError(f"{key}: outcome {str(outcome)[:40]!r} is not one of {', '.join(OUTCOMES)}")
    outputs = _strings(record.get("outputs") or [], "outputs")
    for output in outputs:
        if not _inside(output, folder):
            raise ValueError(f"{key}: output {output[:200]!r} is not inside the batch folder")
    images = _strings(record.get("images") or [], "images")
    for image in images:
        if not is_web_url(image):
            raise ValueError(f"{key}: image {image[:200]!r} is not an http(s) URL")
    error = _text(record.get("error"), "error")
    if outcome == PENDING:  # a progress snapshot: the batch stopped before this item ended
        outcome, error = "failed", "unfinished: its batch stopped before this item ended"
    return ItemResult(
        key=key,
        outcome=str(outcome),
        batch=batch,
        status=_text(record.get("status"), "status"),
        request_id=_text(record.get("request_id"), "request_id"),
        outputs=tuple(outputs),
        error=error,
        images=tuple(images),
        prompt=_text(record.get("prompt"), "prompt") or "",
    )


# -- reading ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_manifest(folder: Path | ObjectStoragePath) -> Iterator[IO[bytes]]:
    """Open a batch's manifest: locally a regular file, not a link (a FIFO or a device never blocks)."""
    if isinstance(folder, Path):
        handle = open_regular_below(folder, (MANIFEST_NAME,))
    else:
        handle = (folder / MANIFEST_NAME).open("rb")
    with handle:
        yield handle


def read_batch_manifest(
    batch_folder: str | os.PathLike[str] | ObjectStoragePath, *, max_bytes: int = MAX_MANIFEST_BYTES
) -> BatchResult:
    """
    Read ``<batch_folder>/_manifest.jsonl``; a missing manifest gives a result with ``found=False``.

    The manifest is read one line at a time. A line that fails a check (not JSON, nested too deeply,
    longer than :data:`~airflow_provider_firered.batch.earlier_runs.MAX_LINE_BYTES`, ...) is a problem, as
    is a manifest that cannot be read (a link, not a regular file); neither stops the report.

    :param batch_folder: the batch's output folder (a path or a URL).
    :param max_bytes: the most read from the manifest; a longer one is reported and cut at a line end.
    """
    folder = as_target(batch_folder, field_name="batch_folder")
    manifest = folder / MANIFEST_NAME
    result = BatchResult(name=folder.name, manifest=str(manifest))
    seen: set[str] = set()
    skipped = 0

    def problem(text: str) -> None:
        nonlocal skipped
        if len(result.problems) < MAX_PROBLEMS:
            result.problems.append(text)
        else:
            skipped += 1

    try:
        with _open_manifest(folder) as source:
            for number, raw in enumerate(bounded_lines(source, ReadBudget(max_bytes)), start=1):
                if raw is None:
                    problem(f"{manifest} line {number}: longer than {MAX_LINE_BYTES} bytes; not read")
                    continue
                if not raw.strip():
                    continue
                try:
                    item = parse_line(raw.decode("utf-8"), result.name, folder)
                except (ValueError, UnicodeDecodeError) as err:
                    problem(f"{manifest} line {number}: {err}")
                    continue
                if item.key in seen:
                    problem(f"{manifest} line {number}: {item.key}: a second line for this key")
                    continue
                seen.add(item.key)
                result.items.append(item)
    except (FileNotFoundError, NotADirectoryError):
        result.found = False
        result.problems.append(f"{manifest}: missing")
    except TooLarge:
        problem(f"{manifest}: larger than {max_bytes} bytes; the rest was not read")
    except (OSError, NotImplementedError) as err:
        problem(f"{manifest}: cannot be read ({getattr(err, 'strerror', None) or err})")
    if skipped:
        result.problems.append(f"{manifest}: {skipped} more problem(s) not listed")
    return result


def find_batch_folders(run_folder: str | os.PathLike[str] | ObjectStoragePath) -> list[str]:
    """The run folder's ``batch-*`` folders, by name."""
    root = as_target(run_folder, field_name="run_folder")
    if not root.is_dir():
        return []
    return sorted(
        str(child) for child in root.iterdir() if child.name.startswith("batch-") and child.is_dir()
    )


def _unreported(batch: BatchResult, expected: Sequence[Mapping[str, Any]], why: str) -> None:
    """Add the items the batch was given but its manifest does not report, as failures."""
    reported = {item.key for item in batch.items}
    for edit in expected:
        key = str(edit.get("key"))
        if key in reported:
            continue
        images = [str(url) for url in edit.get("images") or [] if is_web_url(url)]
        batch.items.append(
            ItemResult(
                key=key,
                outcome="failed",
                batch=batch.name,
                status="UNREPORTED",
                error=why,
                images=tuple(images),
                prompt=str(edit.get("prompt") or "")[:MAX_TEXT],
            )
        )


def _name_placeholders(batch: BatchResult, expected: Sequence[Mapping[str, Any]]) -> None:
    """
    Give an item the batch refused for its key (reported as ``#<index>``) the key it was given,
    when that key is a plain folder name, so the item shows under its own name with its error.
    """
    reported = {item.key for item in batch.items}
    for position, item in enumerate(batch.items):
        match = _PLACEHOLDER.fullmatch(item.key)
        if not match or int(match[1]) >= len(expected):
            continue
        edit = expected[int(match[1])]
        key = str(edit.get("key"))
        if is_plain_segment(key) and key not in reported and item.outcome == "failed":
            images = tuple(str(url) for url in edit.get("images") or [] if is_web_url(url))
            prompt = str(edit.get("prompt") or "")[:MAX_TEXT]
            batch.items[position] = replace(item, key=key, images=images, prompt=prompt)
            reported.add(key)


def read_run(
    run_folder: str | os.PathLike[str] | ObjectStoragePath,
    batches: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    *,
    max_bytes: int = MAX_MANIFEST_BYTES,
) -> RunReport:
    """
    Read every batch manifest of a run.

    :param run_folder: the run folder holding the batch folders.
    :param batches: the items each batch folder (by name) was given, when known: an item its
        manifest does not report, and any item of a batch with no manifest, counts as failed; a
        reported key the batch was not given is a problem. Without it the ``batch-*`` folders found
        are read as they are.
    :param max_bytes: the most read from each manifest.
    """
    root = as_target(run_folder, field_name="run_folder")
    names = list(batches) if batches is not None else [Path(str(f)).name for f in find_batch_folders(root)]
    report = RunReport(run_folder=str(root), batches=[])
    for name in names:
        if not is_plain_segment(name):
            raise FireRedValidationError("batches", f"{name!r} is not a plain folder name")
        batch = read_batch_manifest(root / name, max_bytes=max_bytes)
        if batches is not None:
            _name_placeholders(batch, batches[name])
            given = {str(edit.get("key")) for edit in batches[name]}
            for item in [item for item in batch.items if item.key not in given]:
                batch.problems.append(f"{batch.manifest}: {item.key}: not an item of this batch")
                batch.items.remove(item)
            why = "no line for this item in its batch manifest"
            if not batch.found:
                why = "its batch wrote no manifest (the batch task failed before the end?)"
            _unreported(batch, batches[name], why)
        report.batches.append(batch)
    return report


# -- the summary --------------------------------------------------------------------------------------


def summary_of(report: RunReport, **extra: Any) -> dict[str, Any]:
    """
    The content of ``summary.json``: counts, counts per batch, the failures and every item.

    :param extra: more top-level fields (the DAG and run ids, ...).
    """
    return {
        **extra,
        "run_folder": report.run_folder,
        **report.counts(),
        "batches": [
            {"batch": b.name, "manifest": b.manifest, "found": b.found, **b.counts()} for b in report.batches
        ],
        "failures": [
            {"key": i.key, "batch": i.batch, "status": i.status, "request_id": i.request_id, "error": i.error}
            for i in report.items
            if i.outcome == "failed"
        ],
        "problems": report.problems,
        "items": [
            {
                "key": i.key,
                "batch": i.batch,
                "outcome": i.outcome,
                "status": i.status,
                "request_id": i.request_id,
                "outputs": list(i.outputs),
                "error": i.error,
            }
            for i in report.items
        ],
    }


def _write_text(target: Path | ObjectStoragePath, text: str) -> None:
    # Whole or not at all, and never through a link planted at the target or a temporary name.
    write_atomic(target, text)


def write_summary(report: RunReport, **extra: Any) -> str:
    """
    Write ``summary.json`` in the run folder (see :func:`summary_of`); return its location.

    :param report: the run, from :func:`read_run`.
    :param extra: more top-level fields.
    """
    target = as_target(report.run_folder, field_name="run_folder") / SUMMARY_NAME
    _write_text(target, json.dumps(summary_of(report, **extra), indent=1))
    return str(target)


# -- the contact sheet --------------------------------------------------------------------------------


def relative_link(location: str, run_folder: str) -> str | None:
    """
    A URL-quoted link to ``location`` relative to ``run_folder``, or None unless it lies inside it.

    :param location: an output's path or URL.
    :param run_folder: the folder the page is in.
    """
    root = as_target(run_folder, field_name="run_folder")
    try:
        target = as_target(location, field_name="outputs")
        check_inside(target, root, field_name="outputs")
    except (FireRedValidationError, ValueError, TypeError):
        return None
    if isinstance(target, Path) and isinstance(root, Path):
        relative = os.path.relpath(os.path.normpath(target), os.path.normpath(root)).replace(os.sep, "/")
    elif not isinstance(target, Path) and not isinstance(root, Path):
        relative = posixpath.relpath(
            posixpath.normpath("/" + target.path), posixpath.normpath("/" + root.path)
        )
    else:
        return None
    if relative.startswith("..") or relative in (".", ""):
        return None
    return "/".join(quote(part) for part in relative.split("/"))


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
.counts span{margin-right:1rem}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.4rem;vertical-align:top;text-align:left}
img{max-width:220px;max-height:220px;background:#f4f4f4}
.outcome{font-weight:600;padding:.1rem .4rem;border-radius:.3rem}
.edited{background:#dff3df}.reused{background:#e3ecfa}.failed{background:#fadcdc}
.error{color:#a00;white-space:pre-wrap}.prompt{color:#555;font-size:.9rem}
.problems li{color:#a00}
""".strip()
#: No scripts, no fetches: only images (the inputs are on the web, the outputs beside the page).
_POLICY = "default-src 'none'; img-src * data: file:; style-src 'unsafe-inline'"


def _images_cell(hrefs: Sequence[str | None], label: str) -> str:
    """A cell of linked images; a location that cannot be linked shows as ``-``."""
    shown = []
    for href in hrefs:
        if href is None:
            shown.append("-")
            continue
        link = html.escape(href, quote=True)
        alt = html.escape(label, quote=True)
        shown.append(f'<a href="{link}"><img src="{link}" alt="{alt}" loading="lazy"></a>')
    return f"<td>{' '.join(shown) or '-'}</td>"


def _row(item: ItemResult, run_folder: str) -> str:
    inputs = _images_cell([url if is_web_url(url) else None for url in item.images], f"{item.key} input")
    if item.outcome == "failed":
        result = f'<td class="error">{html.escape(item.error or item.status or "failed")}</td>'
    else:
        links = [relative_link(output, run_folder) for output in item.outputs]
        result = _images_cell(links, f"{item.key} output")
    anchor = html.escape(quote("sku-" + item.key), quote=True)
    return (
        f'<tr id="{anchor}"><td><b>{html.escape(item.key)}</b><br>'
        f'<span class="outcome {item.outcome}">{item.outcome}</span> {html.escape(item.status or "")}'
        f"<br><small>{html.escape(item.request_id or '')}</small>"
        f'<div class="prompt">{html.escape(item.prompt)}</div></td>{inputs}{result}</tr>'
    )


def contact_sheet_html(report: RunReport, *, title: str = "Catalogue re-edit") -> str:
    """
    A self-contained HTML page: counts, the failures with their errors, the problems found in the
    manifests, and one row per item with its input image and its (first) output side by side.

    Every text is escaped; input images are linked only when http(s), outputs only as links
    relative to the run folder (so the page works wherever the folder is opened or copied).
    """
    counts = report.counts()
    items = sorted(report.items, key=lambda i: (i.outcome != "failed", i.key))
    failures = [i for i in items if i.outcome == "failed"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Run folder: <code>{html.escape(report.run_folder)}</code></p>",
        '<p class="counts">'
        + "".join(f"<span>{html.escape(name)}: <b>{value}</b></span>" for name, value in counts.items())
        + "</p>",
    ]
    if failures:
        parts.append(f'<h2 id="failures">Failures ({len(failures)})</h2><table>')
        parts.append("<tr><th>SKU</th><th>status</th><th>request id</th><th>error</th></tr>")
        for item in failures:
            parts.append(
                f'<tr><td><a href="#{html.escape(quote("sku-" + item.key), quote=True)}">'
                f"{html.escape(item.key)}</a></td><td>{html.escape(item.status or '')}</td>"
                f"<td>{html.escape(item.request_id or '')}</td>"
                f'<td class="error">{html.escape(item.error or "")}</td></tr>'
            )
        parts.append("</table>")
    if report.problems:
        parts.append(f'<h2 id="problems">Problems in the result manifests ({len(report.problems)})</h2>')
        parts.append('<ul class="problems">')
        parts.extend(f"<li>{html.escape(problem)}</li>" for problem in report.problems)
        parts.append("</ul>")
    parts.append(f'<h2 id="items">Items ({len(items)})</h2><table>')
    parts.append("<tr><th>SKU</th><th>input</th><th>output</th></tr>")
    parts.extend(_row(item, report.run_folder) for item in items)
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"


def write_contact_sheet(report: RunReport, *, title: str = "Catalogue re-edit") -> str:
    """
    Write ``index.html`` in the run folder (see :func:`contact_sheet_html`); return its location.

    :param report: the run, from :func:`read_run`.
    :param title: the page's title.
    """
    target = as_target(report.run_folder, field_name="run_folder") / CONTACT_SHEET_NAME
    _write_text(target, contact_sheet_html(report, title=title))
    return str(target)


def batch_items(batches: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """
    The items of each batch by its folder name, from the batch tasks' arguments (``output_root``
    and ``edits`` of each).
    """
    found: dict[str, list[Mapping[str, Any]]] = {}
    for batch in batches:
        name = posixpath.basename(str(batch["output_root"]).rstrip("/"))
        found[name] = list(batch["edits"])
    return found
