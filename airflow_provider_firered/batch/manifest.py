"""
Read and write a batch's result manifest: one JSON line per item at ``<output_root>/_manifest.jsonl``.

The manifest is written whole and atomically. While the batch runs it is also its progress: items
still waiting are written with the outcome ``pending``, so a resumed task (a later wave, or a retry)
knows what is done. Every reader goes through here (the batch resuming its own progress, the search
of earlier runs, the catalogue report): one line at a time, each line and the whole file bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_firered.batch import earlier_runs
from airflow_provider_firered.batch.earlier_runs import EarlierBatch, open_regular_below
from airflow_provider_firered.batch.figures import OVER_BUDGET, PLAN_OUTCOMES
from airflow_provider_firered.exceptions import FireRedError
from airflow_provider_firered.media.output_paths import as_target
from airflow_provider_firered.utils.atomic_files import atomic_writer

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from airflow.providers.common.compat.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

#: The manifest's name in a batch's output folder.
MANIFEST_NAME = "_manifest.jsonl"
#: The most read from one manifest: a batch of 100,000 items with long prompts fits.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
#: The longest manifest line read; a batch's own line takes a few KB (a prompt is at most 5,000
#: characters, an item at most 8 image URLs of 2,048).
MAX_LINE_BYTES = 1024 * 1024
#: How an item ended.
ENDED_OUTCOMES = ("edited", "reused", "failed")
#: The outcome of an item still waiting, in the progress snapshot a batch writes while it runs.
PENDING = "pending"
#: Every outcome a manifest line may hold (a dry run's plan holds the plan's own, see ``figures``).
OUTCOMES = (*ENDED_OUTCOMES, OVER_BUDGET, PENDING, *PLAN_OUTCOMES)

_READ_CHUNK = 64 * 1024


class TooLarge(FireRedError):
    """More was read than a bound allows."""


@dataclass
class ReadBudget:
    """
    Count how many more bytes may be read.

    :param remaining: the bytes left.
    """

    remaining: int

    def take(self, size: int) -> None:
        """
        Count ``size`` bytes read; raise :class:`TooLarge` once past the budget.

        :param size: the bytes just read.
        """
        self.remaining -= size
        if self.remaining < 0:
            raise TooLarge("read past its bound")


@dataclass
class ManifestEntry:
    """
    Hold one item of a batch.

    :param key: the item's key: its output folder under the output root.
    :param outcome: ``edited``, ``reused``, ``failed``, ``over_budget`` or ``pending``; in a dry run's
        plan ``would_edit``, ``would_reuse``, ``would_fail``, ``invalid`` or ``over_budget``.
    :param status: the job's status (``COMPLETED``, ``FAILED``, ``ERROR``) or why the item failed
        without one (``INVALID``, ``REFUSED``, ``UNCERTAIN``, ``TIMEOUT``, ``OVER_BUDGET``, ...); in a
        plan, why the item would end so (``NEW``, ``CHANGED``, ``UNCHANGED``, ...).
    :param request_id: the gateway's request id, once submitted (a reused item keeps the original's).
    :param outputs: the saved images, as absolute paths or URLs.
    :param error: what went wrong, for a failed item; in a plan, the reason in words.
    :param fingerprint: what the edit depends on (:func:`~airflow_provider_firered.batch.items.fingerprint`).
    :param images: the input image URLs.
    :param prompt: the edit instruction.
    :param attempt: how many times the item was submitted in this task instance's tries (each
        accepted submit counts one): the newer of two request ids of an item is the one with the
        higher count.
    :param paid: how many paid submits (accepted, or maybe accepted) the task sent for the item over
        all its tries, a clear included: what ``max_paid_edits`` counts.
    :param dry_run: whether the entry is a dry run's plan: nothing was sent or written for it.
    """

    key: str
    outcome: str
    status: str | None = None
    request_id: str | None = None
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    fingerprint: str | None = None
    images: list[str] = field(default_factory=list)
    prompt: str | None = None
    attempt: int = 0
    paid: int = 0
    dry_run: bool = False

    @classmethod
    def from_json(cls, data: Any) -> ManifestEntry:
        """
        Return the entry read back, every field checked for its type (a manifest may have been edited).

        :param data: one line's parsed JSON.
        :raises ValueError: when it is not a valid entry.
        """
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("key"), str)
            or data.get("outcome") not in OUTCOMES
        ):
            raise ValueError("not a manifest entry")
        attempt = _whole(data.get("attempt", 0), "attempt")
        # A line from before ``paid`` was written: its accepted submits are what it paid.
        paid = _whole(data.get("paid", attempt), "paid")
        if not isinstance(data.get("dry_run", False), bool):
            raise ValueError("dry_run must be true or false")
        return cls(
            key=data["key"],
            outcome=data["outcome"],
            status=_text(data, "status"),
            request_id=_text(data, "request_id"),
            outputs=_texts(data, "outputs"),
            error=_text(data, "error"),
            fingerprint=_text(data, "fingerprint"),
            images=_texts(data, "images"),
            prompt=_text(data, "prompt"),
            attempt=attempt,
            paid=paid,
            dry_run=data.get("dry_run", False),
        )

    def to_json(self) -> str:
        """Return the entry as one JSON line's text (``dry_run`` only on a plan's lines)."""
        data = asdict(self)
        if not self.dry_run:
            del data["dry_run"]
        return json.dumps(data, ensure_ascii=False)


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ValueError(f"{name} must be a whole number")
    return value


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be text")
    return value


def _texts(data: dict[str, Any], name: str) -> list[str]:
    value = data.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of text")
    return value


# -- writing -------------------------------------------------------------------------------------------


def manifest_path(root: str | os.PathLike[str] | ObjectStoragePath) -> Path | ObjectStoragePath:
    """
    Return where the manifest of the batch writing to ``root`` lies.

    :param root: the batch's output root.
    """
    return as_target(root, field_name="output_root") / MANIFEST_NAME


def write_manifest(root: str | os.PathLike[str] | ObjectStoragePath, entries: Iterable[ManifestEntry]) -> str:
    """
    Write the manifest whole (see :mod:`~airflow_provider_firered.utils.atomic_files`).

    Locally it goes through a fresh temporary file and a rename, to object storage as one upload.
    Readers never see half a manifest, and a link planted at its name is replaced, not written through.

    :param root: the batch's output root.
    :param entries: every item, in batch order.
    :return: the manifest's path or URL.
    """
    target = manifest_path(root)
    with atomic_writer(target) as out:
        for entry in entries:
            out.write((entry.to_json() + "\n").encode("utf-8"))
    return str(target)


# -- reading -------------------------------------------------------------------------------------------


def bounded_lines(
    handle: IO[bytes], budget: ReadBudget, *, max_line: int = MAX_LINE_BYTES
) -> Iterator[bytes | None]:
    """
    Yield each line of ``handle`` without its line end, one at a time (memory stays about one line).

    The file is read in fixed pieces with ``read(n)`` alone (object storage files have no bounded
    ``readline``). A line longer than ``max_line`` bytes is yielded as ``None``, its rest skipped
    without being kept.

    :param handle: a file open for reading bytes.
    :param budget: the bytes that may be read; :class:`TooLarge` is raised before a line past it.
    :param max_line: the longest line yielded.
    """
    line = bytearray()
    too_long = False
    while chunk := handle.read(_READ_CHUNK):
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            stop = len(chunk) if end < 0 else end
            budget.take(stop - start + (end >= 0))
            if not too_long and len(line) + stop - start > max_line:
                too_long = True
                line.clear()
            elif not too_long:
                line += chunk[start:stop]
            if end < 0:
                break
            yield None if too_long else bytes(line).rstrip(b"\r")
            line.clear()
            too_long = False
            start = end + 1
    if too_long:
        yield None
    elif line:
        yield bytes(line).rstrip(b"\r")


def manifest_lines(handle: IO[bytes], budget: ReadBudget) -> Iterator[tuple[int, bytes | None]]:
    """
    Yield each non-blank line of a manifest with its number (the first is 1), within the bounds.

    A line longer than :data:`MAX_LINE_BYTES` is yielded as ``None``: a bad line, for the caller to
    count or report.

    :param handle: the manifest, open for reading bytes.
    :param budget: the bytes that may be read; :class:`TooLarge` is raised before a line past it.
    """
    for number, line in enumerate(bounded_lines(handle, budget), start=1):
        if line is None or line.strip():
            yield number, line


@contextlib.contextmanager
def open_manifest(root: Path | ObjectStoragePath, *parts: str) -> Iterator[IO[bytes]]:
    """
    Open the manifest in the batch folder ``root/<parts...>`` for reading bytes.

    Locally it must be a regular file reached through no link below ``root`` (``root`` itself may be
    one: it is what the user named), so a FIFO or a device never blocks or floods the reader.

    :param root: the folder to stay within.
    :param parts: the batch folder's path below ``root``, one plain name per part.
    :raises OSError: when it is missing, a link, or not a regular file.
    """
    if isinstance(root, Path):
        handle = open_regular_below(root, (*parts, MANIFEST_NAME))
    else:
        handle = root.joinpath(*parts, MANIFEST_NAME).open("rb")
    with handle:
        yield handle


def parse_entries(lines: Iterable[tuple[int, bytes | None]]) -> tuple[list[ManifestEntry], int]:
    """
    Return the valid entries among manifest lines, and how many lines were not valid entries.

    A line is not valid when it is not JSON, is nested too deeply, too long, or fails
    :meth:`ManifestEntry.from_json`.

    :param lines: the numbered lines of :func:`manifest_lines`.
    """
    entries = []
    bad = 0
    for _number, line in lines:
        if line is None:
            bad += 1
            continue
        try:
            entries.append(ManifestEntry.from_json(json.loads(line)))
        except (ValueError, RecursionError):  # RecursionError: a line of "[[[[..."
            bad += 1
    return entries, bad


def read_manifest(root: str | os.PathLike[str] | ObjectStoragePath) -> list[ManifestEntry] | None:
    """
    Read back the manifest a batch wrote under ``root`` (its own progress); None when there is none.

    The manifest is read one line at a time. A line that is not a valid entry, or is longer than
    :data:`MAX_LINE_BYTES`, is skipped (its item counts as unknown); a manifest over
    :data:`MAX_MANIFEST_BYTES` is refused with an error. For an earlier run's manifest, which is never
    an error, see :func:`previous_entries`.

    :param root: a batch's output root.
    :raises FireRedError: when the manifest is larger than :data:`MAX_MANIFEST_BYTES`.
    """
    target = manifest_path(root)
    try:
        with target.open("rb") as source:
            entries, _bad = parse_entries(manifest_lines(source, ReadBudget(MAX_MANIFEST_BYTES)))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except TooLarge:
        raise FireRedError(f"{target} is larger than {MAX_MANIFEST_BYTES} bytes: not read") from None
    return entries


# -- earlier runs --------------------------------------------------------------------------------------


def previous_entries(roots: Iterable[str]) -> dict[str, tuple[ManifestEntry, EarlierBatch]]:
    """
    Return the items of earlier runs by key, each with the batch it was found in.

    Each root's own manifest is read, else those of its direct subfolders (a run split into
    batches). Later roots win.

    An earlier run is read without trusting it, and nothing in it is an error: a manifest or folder
    that cannot be read, is a link below the root, is not a regular file, or is over its bound means
    nothing reused from it, logged once. Bounds: :data:`MAX_MANIFEST_BYTES` per manifest,
    :data:`~airflow_provider_firered.batch.earlier_runs.MAX_EARLIER_BYTES` for all together,
    :data:`MAX_LINE_BYTES` per line, and
    :data:`~airflow_provider_firered.batch.earlier_runs.MAX_EARLIER_FOLDERS` entries looked at per root.

    :param roots: earlier output roots (paths or URLs).
    """
    found: dict[str, tuple[ManifestEntry, EarlierBatch]] = {}
    total = ReadBudget(earlier_runs.MAX_EARLIER_BYTES)
    for root in roots:
        base = as_target(root, field_name="previous")
        for batch in _earlier_batches(base):
            if total.remaining <= 0:
                log.warning(
                    "Earlier runs: more than %d manifest bytes in all; %s and the rest are not read",
                    earlier_runs.MAX_EARLIER_BYTES,
                    batch.path,
                )
                return found
            for entry in _read_earlier(batch, total):
                found[entry.key] = (entry, batch)
    return found


def _earlier_batches(base: Path | ObjectStoragePath) -> Iterator[EarlierBatch]:
    """Yield the batches of an earlier root: the root itself if it holds a manifest, else its subfolders."""
    own = EarlierBatch(base)
    try:
        if _manifest_exists(own):
            yield own
            return
        names = _subfolders(base)
    except (OSError, NotImplementedError, ValueError) as err:
        log.warning("Earlier run %s cannot be read (%s): nothing is reused from it", base, err)
        return
    if names is None:
        log.warning(
            "Earlier run %s holds more than %d entries: not searched for batch folders, nothing is "
            "reused from it",
            base,
            earlier_runs.MAX_EARLIER_FOLDERS,
        )
        return
    for name in names:
        yield EarlierBatch(base, name)


def _manifest_exists(batch: EarlierBatch) -> bool:
    if isinstance(batch.root, Path):
        # lstat: a manifest that is a link is found here, and refused when opened.
        try:
            os.lstat(os.path.join(batch.root, *batch.parts, MANIFEST_NAME))
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True
    return bool((batch.path / MANIFEST_NAME).exists())


def _subfolders(base: Path | ObjectStoragePath) -> list[str] | None:
    """Return the names of the batch folders below ``base`` (no links); None when it holds too many."""
    limit = earlier_runs.MAX_EARLIER_FOLDERS
    if isinstance(base, Path):
        try:
            names = earlier_runs.list_folder(base, limit)
        except (FileNotFoundError, NotADirectoryError):
            return []
        if names is None:
            return None
        return [name for name in names if earlier_runs.is_folder_below(base, name)]
    if not base.exists():
        return []
    children = list(itertools.islice(base.iterdir(), limit + 1))
    if len(children) > limit:
        return None
    return sorted(child.name for child in children if child.is_dir())


def _read_earlier(batch: EarlierBatch, total: ReadBudget) -> list[ManifestEntry]:
    """Return the entries of an earlier batch's manifest; none (logged once) when it cannot be read whole."""
    where = f"{batch.path}/{MANIFEST_NAME}"
    allowed = min(MAX_MANIFEST_BYTES, total.remaining)
    budget = ReadBudget(allowed)
    try:
        with open_manifest(batch.root, *batch.parts) as source:
            entries, bad = parse_entries(manifest_lines(source, budget))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except TooLarge:
        log.warning(
            "Earlier manifest %s is larger than %d bytes (or than what is left of the %d read from all "
            "earlier runs): nothing is reused from it",
            where,
            allowed,
            earlier_runs.MAX_EARLIER_BYTES,
        )
        return []
    except (OSError, NotImplementedError, ValueError) as err:
        log.warning("Earlier manifest %s cannot be read (%s): nothing is reused from it", where, err)
        return []
    finally:
        total.remaining -= allowed - budget.remaining
    if bad:
        log.warning("Earlier manifest %s: %d line(s) are not valid entries and were skipped", where, bad)
    if any(entry.dry_run for entry in entries):
        # A plan: nothing was sent or written for it, so nothing of it is an earlier result.
        log.warning("Earlier manifest %s is a dry run's plan: nothing is reused from it", where)
        return []
    return entries
