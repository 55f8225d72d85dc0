"""
Write a catalogue run's contact sheet: ``index.html``, a page a person opens in a browser.

The page is static and self-contained: inline CSS, a Content-Security-Policy that allows no script
and no fetch, every text escaped. Input images link to their http(s) URLs, outputs relative to the
run folder, so the page works wherever the folder is opened or copied.
"""

from __future__ import annotations

import html
import os
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from airflow_provider_firered.batch.run_results import is_web_url
from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.media.output_paths import as_target, check_inside
from airflow_provider_firered.utils.atomic_files import write_atomic

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow_provider_firered.batch.run_results import ItemResult, RunReport

CONTACT_SHEET_NAME = "index.html"


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
#: No scripts, no fetches: only images (the inputs are on the web, the outputs beside the page).
_POLICY = "default-src 'none'; img-src * data: file:; style-src 'unsafe-inline'"


def _images_cell(hrefs: Sequence[str | None], label: str) -> str:
    """Return a cell of linked images; a location that cannot be linked shows as ``-``."""
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
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
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
    parts.extend(_row(item, report.run_folder) for item in items)
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"


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
