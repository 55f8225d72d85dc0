"""
Read a batched catalogue run's result manifests as untrusted input, every line checked.

A run folder holds one folder per batch (``batch-0000/``, ...), each with the result manifest
written by ``FireRedBatchEditOperator`` (:mod:`~airflow_provider_firered.batch.manifest`), read
through that module: bounded in size, one line at a time. Each line is then checked (a plain key, a
known outcome, outputs inside the batch folder, http(s) input images). A line that fails a check is
reported as a problem and not used. Locations are local paths or any ``ObjectStoragePath`` URL.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_firered.batch.figures import FAILURE_OUTCOMES, NightFigures, figures_from_manifest
from airflow_provider_firered.batch.manifest import (
    MANIFEST_NAME,
    MAX_LINE_BYTES,
    MAX_MANIFEST_BYTES,
    OUTCOMES,
    PENDING,
    ReadBudget,
    TooLarge,
    manifest_lines,
    open_manifest,
)
from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.media.output_paths import as_target, check_inside
from airflow_provider_firered.utils.urls import is_http_url

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Mapping, Sequence

    from airflow.providers.common.compat.sdk import ObjectStoragePath

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
    Hold one item (SKU) of a batch, as its manifest line reported it, after the checks.

    :param key: the item's key: one plain path segment.
    :param outcome: ``edited``, ``reused``, ``failed`` or ``over_budget``; in a dry run's plan
        ``would_edit``, ``would_reuse``, ``would_fail``, ``invalid`` or ``over_budget``.
    :param batch: the name of the batch folder it belongs to.
    :param status: the job's status, or why the item failed without one.
    :param request_id: the gateway's request id.
    :param outputs: the saved images' locations, each inside the batch folder.
    :param error: what went wrong, for a failed item.
    :param images: the input image URLs, each http(s).
    :param prompt: the edit instruction.
    :param paid: the paid submits its batch task sent for it.
    :param dry_run: whether the line is a dry run's plan.
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
    paid: int = 0
    dry_run: bool = False

    @property
    def is_failure(self) -> bool:
        """Return whether the item got (or, in a plan, would get) no output."""
        return self.outcome in FAILURE_OUTCOMES


@dataclass
class BatchResult:
    """
    Hold a batch folder's manifest: its items and what was wrong with it.

    :param name: the batch folder's name.
    :param manifest: the manifest's location.
    :param items: the items that passed the checks.
    :param problems: what was wrong, one text each.
    :param found: whether the manifest exists.
    """

    name: str
    manifest: str
    items: list[ItemResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    found: bool = True

    def figures(self) -> NightFigures:
        """Return the batch's figures, from its items."""
        return figures_from_manifest(self.items)

    def counts(self) -> dict[str, int]:
        """Return ``total`` and the count of each outcome (a plan's own, for a dry run)."""
        return self.figures().counts()


@dataclass
class RunReport:
    """
    Hold every batch of a run, read from its run folder.

    :param run_folder: the run folder's location.
    :param batches: its batches, in order.
    """

    run_folder: str
    batches: list[BatchResult]

    @property
    def items(self) -> list[ItemResult]:
        """Return every batch's items, in batch order."""
        return [item for batch in self.batches for item in batch.items]

    @property
    def problems(self) -> list[str]:
        """Return every batch's problems, in batch order."""
        return [problem for batch in self.batches for problem in batch.problems]

    def figures(self) -> NightFigures:
        """Return the figures of the whole run, from every batch's items."""
        return figures_from_manifest(self.items)

    def counts(self) -> dict[str, int]:
        """Return ``total`` and the count of each outcome, over every batch (a plan's, for a dry run)."""
        return self.figures().counts()


# -- checks -------------------------------------------------------------------------------------------


def is_plain_segment(text: object) -> bool:
    """
    Return whether ``text`` can name one folder: no separators, not ``.``/``..``, no control characters.

    :param text: the value to check, of any type.
    """
    return (
        isinstance(text, str)
        and 0 < len(text) <= _MAX_KEY
        and text not in (".", "..")
        and "/" not in text
        and "\\" not in text
        and text.isprintable()
    )


def is_web_url(text: object) -> bool:
    """
    Return whether ``text`` is a plain http(s) URL with a host (the only input images linked).

    Besides :func:`~airflow_provider_firered.utils.urls.is_http_url`, every character must be
    printable: no format character (such as a right-to-left override) reaches the page.

    :param text: the value to check, of any type.
    """
    return is_http_url(text) and isinstance(text, str) and text.isprintable()


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
    Return one manifest line as an item, after its checks.

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
    if outcome not in OUTCOMES:
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
    dry_run = record.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ValueError(f"{key}: dry_run must be true or false")
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
        paid=_count(record.get("paid", record.get("attempt", 0)), key),
        dry_run=dry_run,
    )


def _count(value: object, key: str) -> int:
    """Return a line's paid submits (a line from before ``paid`` counts its ``attempt``)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ValueError(f"{key}: paid must be a whole number")
    return value


# -- reading ------------------------------------------------------------------------------------------


def read_batch_manifest(
    batch_folder: str | os.PathLike[str] | ObjectStoragePath, *, max_bytes: int = MAX_MANIFEST_BYTES
) -> BatchResult:
    """
    Read ``<batch_folder>/_manifest.jsonl``; a missing manifest gives a result with ``found=False``.

    The manifest is read one line at a time, through
    :func:`~airflow_provider_firered.batch.manifest.manifest_lines`. A line that fails a check (not
    JSON, nested too deeply, longer than
    :data:`~airflow_provider_firered.batch.manifest.MAX_LINE_BYTES`, ...) is a problem, as is a
    manifest that cannot be read (a link, not a regular file); neither stops the report.

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
        with open_manifest(folder) as source:
            for number, raw in manifest_lines(source, ReadBudget(max_bytes)):
                if raw is None:
                    problem(f"{manifest} line {number}: longer than {MAX_LINE_BYTES} bytes; not read")
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
    """
    Return the run folder's ``batch-*`` folders, by name.

    :param run_folder: the run folder (a path or a URL).
    """
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
    Give an item the batch refused for its key (reported as ``#<index>``) the key it was given.

    Only when that key is a plain folder name, so the item shows under its own name with its error.
    """
    reported = {item.key for item in batch.items}
    for position, item in enumerate(batch.items):
        match = _PLACEHOLDER.fullmatch(item.key)
        if not match or int(match[1]) >= len(expected):
            continue
        edit = expected[int(match[1])]
        key = str(edit.get("key"))
        if is_plain_segment(key) and key not in reported and item.is_failure:
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


def batch_items(batches: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """
    Return the items of each batch by its folder name, from the batch tasks' arguments.

    :param batches: the batch tasks' arguments, each with its ``output_root`` and ``edits``.
    """
    found: dict[str, list[Mapping[str, Any]]] = {}
    for batch in batches:
        name = posixpath.basename(str(batch["output_root"]).rstrip("/"))
        found[name] = list(batch["edits"])
    return found
