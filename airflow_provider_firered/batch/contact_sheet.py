"""
Write a catalogue run's contact sheet: ``index.html``, a page a person opens in a browser.

The page is static and self-contained: inline CSS, a Content-Security-Policy that allows no script
and no fetch, every text escaped. Input images link to their http(s) URLs, outputs relative to the
run folder, so the page works wherever the folder is opened or copied.

An input that no longer loads (an expired signed URL, a host that is gone) shows a placeholder with
its URL, not a broken image, without script: the image (``alt=""``, so a broken one takes no room)
lies over a box that says so (:func:`input_html`, :data:`INPUT_STYLE`); a loaded image hides the box.
A batch folder may keep copies of its inputs in ``_inputs/``, each named by its URL
(:func:`input_copy_name`, written by :func:`keep_input_copy`): the sheet shows a kept copy instead
of the URL, so the inputs outlive their host (the demo keeps its emulator's images this way). The
plugin's page does the same (:mod:`airflow_provider_firered.plugins.sheet`).
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import os
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from airflow_provider_firered.batch.run_results import is_plain_segment, is_web_url
from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.media.output_paths import as_target, check_inside
from airflow_provider_firered.utils.atomic_files import write_atomic

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from airflow_provider_firered.batch.run_results import ItemResult, RunReport

CONTACT_SHEET_NAME = "index.html"
#: The folder, in a batch folder, of the copies kept of its input images.
INPUT_COPIES = "_inputs"


def input_copy_name(url: str) -> str:
    """
    Return the file name of the kept copy of the input image at ``url``: its URL's SHA-256.

    :param url: the input image's URL, as the manifest lists it.
    """
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def input_copies(folder: Path | ObjectStoragePath) -> frozenset[str]:
    """
    Return the names of the input copies kept in ``folder``'s ``_inputs/`` (none when it is missing).

    One listing, whatever the number of items: the sheet looks names up in it.

    :param folder: a batch folder.
    """
    with contextlib.suppress(OSError, NotImplementedError, ValueError):
        kept = folder / INPUT_COPIES
        if isinstance(kept, Path):
            return frozenset(os.listdir(kept))
        return frozenset(child.name for child in kept.iterdir())
    return frozenset()


def keep_input_copy(folder: Path | ObjectStoragePath, url: str, data: bytes) -> Path | ObjectStoragePath:
    """
    Keep ``data``, the image at ``url``, in ``folder``'s ``_inputs/``; return the copy's location.

    :param folder: a batch folder.
    :param url: the input image's URL, as the manifest lists it.
    :param data: the image's bytes.
    """
    kept = folder / INPUT_COPIES
    if isinstance(kept, Path):
        kept.mkdir(exist_ok=True)
    target = kept / input_copy_name(url)
    write_atomic(target, data)
    return target


def relative_link(location: str, run_folder: str) -> str | None:
    """
    Return a URL-quoted link to ``location`` relative to ``run_folder``, or None unless it lies inside it.

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
.over_budget,.would_fail,.invalid{background:#fde9c8}.would_edit{background:#efe3fa}
.would_reuse{background:#e3ecfa}.reason{color:#555;white-space:pre-wrap}
.plan{background:#efe3fa;padding:.4rem}
.error{color:#a00;white-space:pre-wrap}.prompt{color:#555;font-size:.9rem}
.problems li{color:#a00}
""".strip()
#: The placeholder under each input image (shared with the plugin's page): the image, when it loads,
#: covers the box; a broken one with ``alt=""`` takes no room, so the box and its URL show.
INPUT_STYLE = """
.input{display:inline-block;position:relative;vertical-align:top;min-width:180px;min-height:120px;
margin:0 .3rem .1rem 0;color:inherit;text-decoration:none}
.input img{position:relative;z-index:1;display:block;background:#f4f4f4}
.input .gone{position:absolute;inset:0;padding:.4rem;font-size:.8rem;color:#7a4a00;background:#fff6e5;
border:1px dashed #d89a3c;overflow:hidden;overflow-wrap:anywhere}
.source{display:block;font-size:.75rem;max-width:220px;overflow-wrap:anywhere;color:#555}
""".strip()
#: No scripts, no fetches: only images (the inputs are on the web, the outputs beside the page).
_POLICY = "default-src 'none'; img-src * data: file:; style-src 'unsafe-inline'"


def input_html(url: str, label: str, src: str | None = None) -> str:
    """
    Return an input image over its placeholder, then its source URL as a link.

    :param url: the input's http(s) URL, as the manifest lists it.
    :param label: what the image is, for assistive technology (``<key> input``).
    :param src: where the image is loaded from (a kept copy), when not from ``url``.
    """
    link, shown = html.escape(url, quote=True), html.escape(src or url, quote=True)
    return (
        f'<a class="input" href="{shown}" aria-label="{html.escape(label, quote=True)}" '
        f'rel="noreferrer noopener"><span class="gone">Input no longer loads:<br>{link}</span>'
        f'<img src="{shown}" alt="" loading="lazy" referrerpolicy="no-referrer"></a>'
        f'<a class="source" href="{link}" rel="noreferrer noopener">{link}</a>'
    )


def _images_cell(hrefs: Sequence[str | None], label: str) -> str:
    """Return a cell of linked images; a location that cannot be linked shows as ``-``."""
    shown = []
    for href in hrefs:
        if href is None:
            shown.append("-")
            continue
        link = html.escape(href, quote=True)
        alt = html.escape(label, quote=True)
        shown.append(f'<a class="output" href="{link}"><img src="{link}" alt="{alt}" loading="lazy"></a>')
    return f"<td>{' '.join(shown) or '-'}</td>"


def _inputs_cell(item: ItemResult, kept: frozenset[str]) -> str:
    """Return the cell of an item's inputs: each kept copy, else its URL, over its placeholder."""
    shown = []
    for url in item.images:
        if not is_web_url(url):
            continue
        name = input_copy_name(url)
        src = f"{quote(item.batch)}/{INPUT_COPIES}/{name}" if name in kept else None
        shown.append(input_html(url, f"{item.key} input", src))
    return f"<td>{' '.join(shown) or '-'}</td>"


def _row(item: ItemResult, run_folder: str, kept: frozenset[str] = frozenset()) -> str:
    inputs = _inputs_cell(item, kept)
    if item.is_failure:
        result = f'<td class="error">{html.escape(item.error or item.status or item.outcome)}</td>'
    elif item.dry_run:  # a plan: no output, the reason instead
        result = f'<td class="reason">{html.escape(item.error or item.status or item.outcome)}</td>'
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
    Return a self-contained HTML page of the run.

    The page holds the counts (a dry run's plan says so and shows the plan's), the failures (items
    that got, or would get, no output) with their errors, the problems found in the manifests,
    and one row per item with its input image and its (first) output side by side. Every text is
    escaped; input images are linked only when http(s), outputs only as links relative to the run
    folder (so the page works wherever the folder is opened or copied).

    :param report: the run, from :func:`~airflow_provider_firered.batch.run_results.read_run`.
    :param title: the page's title.
    """
    figures = report.figures()
    counts = figures.counts()
    items = sorted(report.items, key=lambda i: (not i.is_failure, i.key))
    failures = [i for i in items if i.is_failure]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}\n{INPUT_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Run folder: <code>{html.escape(report.run_folder)}</code></p>",
        *(
            ['<p class="plan">Dry run: this is a plan. Nothing was sent or written but the manifests.</p>']
            if figures.dry_run
            else []
        ),
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
    kept = _kept_copies(report)
    parts.extend(_row(item, report.run_folder, kept.get(item.batch, frozenset())) for item in items)
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"


def _kept_copies(report: RunReport) -> Mapping[str, frozenset[str]]:
    """Return, for each batch folder of the run with kept input copies, their names."""
    try:
        root = as_target(report.run_folder, field_name="run_folder")
    except (FireRedValidationError, ValueError, TypeError):
        return {}
    found = {}
    for batch in report.batches:
        if is_plain_segment(batch.name):
            names = input_copies(root / batch.name)
            if names:
                found[batch.name] = names
    return found


def write_contact_sheet(report: RunReport, *, title: str = "Catalogue re-edit") -> str:
    """
    Write ``index.html`` in the run folder (see :func:`contact_sheet_html`); return its location.

    The page is written whole or not at all, never through a link planted at its name.

    :param report: the run, from :func:`~airflow_provider_firered.batch.run_results.read_run`.
    :param title: the page's title.
    """
    target = as_target(report.run_folder, field_name="run_folder") / CONTACT_SHEET_NAME
    write_atomic(target, contact_sheet_html(report, title=title))
    return str(target)
