"""
Render the plugin's pages: a batch's contact sheet, one page of rows at a time, and its messages.

As the contact sheet file (:mod:`~airflow_provider_firered.batch.contact_sheet`), a page runs no
script and fetches nothing but images: every text and attribute is escaped, inputs are shown only
when they are http(s) URLs, outputs only through the plugin's own file route. :data:`POLICY` is sent
as the ``Content-Security-Policy`` header; it also lets Airflow's UI (same origin) show the page in
its task instance view.

An input that no longer loads (an expired signed URL, a host that is gone) shows a placeholder with
its URL instead of a broken image, as in the file
(:func:`~airflow_provider_firered.batch.contact_sheet.input_html`): the image (``alt=""``: a
broken one takes no room) lies over a box that gives the URL, and hides it once loaded. No
``onerror`` handler is needed, which the policy would block anyway. An input the batch folder keeps
a copy of (``_inputs/``) is shown from that copy, through the file route.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING
from urllib.parse import quote

from airflow_provider_firered.batch.contact_sheet import INPUT_STYLE, input_html
from airflow_provider_firered.batch.run_results import is_web_url
from airflow_provider_firered.plugins.links import FILES_ROUTE
from airflow_provider_firered.plugins.sheet import PAGE_SIZE, page_numbers

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_provider_firered.batch.run_results import ItemResult
    from airflow_provider_firered.plugins.sheet import Sheet
    from airflow_provider_firered.plugins.source import TaskBatch, TaskInstanceId

#: No script, no fetch, no form, no plugin: only images (outputs from here, inputs from the web) and
#: the inline style; framed only by Airflow's own UI.
POLICY = (
    "default-src 'none'; img-src 'self' http: https:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
#: Headers of every page: the policy, no referrer to the input images' hosts, no caching.
HEADERS = {
    "Content-Security-Policy": POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
#: The most failures listed at the top of the first page (each row shows its own error too).
MAX_FAILURES_LISTED = 100

STYLE = (
    """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
.meta{color:#555}.meta code{overflow-wrap:anywhere}
.counts span{margin-right:1rem}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.4rem;vertical-align:top;text-align:left}
img{max-width:220px;max-height:220px;background:#f4f4f4}
.outcome{font-weight:600;padding:.1rem .4rem;border-radius:.3rem}
.edited{background:#dff3df}.reused{background:#e3ecfa}.failed{background:#fadcdc}
.error{color:#a00;white-space:pre-wrap}.prompt{color:#555;font-size:.9rem}
.problems li{color:#a00}
.output{display:inline-block;position:relative;vertical-align:top;min-width:120px;min-height:60px}
.output img::after{content:"Output no longer loads";position:absolute;inset:0;padding:.4rem;font-size:.8rem;
color:#7a4a00;background:#fff6e5;border:1px dashed #d89a3c}
.unavailable{color:#7a4a00;font-size:.85rem;overflow-wrap:anywhere}
.pager a,.pager b,.pager span{margin-right:.5rem}
""".strip()
    + "\n"
    + INPUT_STYLE
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def page_html(title: str, body: Iterable[str]) -> str:
    """
    Return a whole page around ``body``.

    :param title: the page's title (escaped here).
    :param body: the body's parts, already escaped.
    """
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
    )
    return "\n".join([head, *body, "</body></html>"]) + "\n"


def message_html(title: str, text: str) -> str:
    """
    Return a page that says one thing (no such task instance, no manifest, not signed in).

    :param title: the heading.
    :param text: the message.
    """
    return page_html(title, [f"<h1>{_e(title)}</h1>", f"<p>{_e(text)}</p>"])


class SheetPage:
    """
    Render one page of a task instance's contact sheet.

    :param ti: the task instance.
    :param batch: what the metadata database says of it.
    :param sheet: its manifest, read and checked.
    :param number: the page shown (the first is 1).
    """

    def __init__(self, ti: TaskInstanceId, batch: TaskBatch, sheet: Sheet, number: int) -> None:
        self.ti = ti
        self.batch = batch
        self.sheet = sheet
        self.last = sheet.pages(PAGE_SIZE)
        self.number = min(max(number, 1), self.last)

    # -- addresses (relative to the page: they follow whatever path Airflow is served below) ---------

    def page_href(self, number: int, anchor: str = "") -> str:
        """
        Return the address of another page of this sheet.

        :param number: the page.
        :param anchor: an element's id on it, or ``""``.
        """
        return f"?map_index={self.ti.map_index}&page={number}" + (f"#{anchor}" if anchor else "")

    def file_href(self, path: str) -> str:
        """
        Return the address of a file the sheet serves.

        :param path: its path below the output root, ``/``-joined.
        """
        segments = "/".join(quote(part, safe="") for part in path.split("/"))
        return f"./{quote(self.ti.task_id, safe='')}/{FILES_ROUTE}/{segments}?map_index={self.ti.map_index}"

    @staticmethod
    def anchor(item: ItemResult) -> str:
        """
        Return the id of an item's row.

        :param item: the item.
        """
        return quote("sku-" + item.key, safe="")

    # -- parts -------------------------------------------------------------------------------------------

    def html(self) -> str:
        """Return the whole page."""
        title = f"Contact sheet: {self.ti.dag_id} / {self.ti.task_id}"
        parts = [f"<h1>{_e(title)}</h1>", *self._meta(), self._counts()]
        if self.number == 1:
            parts.extend(self._failures())
            parts.extend(self._problems())
        parts.append(self._pager())
        parts.extend(self._rows())
        parts.append(self._pager())
        return page_html(title, parts)

    def _meta(self) -> list[str]:
        ti, batch = self.ti, self.batch
        mapped = f" (map index {ti.map_index})" if ti.map_index >= 0 else ""
        lines = [
            f'<p class="meta">Run <code>{_e(ti.run_id)}</code>{_e(mapped)}, task state '
            f"<b>{_e(batch.state or 'none')}</b></p>",
            f'<p class="meta">Output root: <code>{_e(batch.output_root)}</code></p>',
        ]
        if batch.origin == "rendered":
            lines.append(
                '<p class="meta">The task returned no result (it failed, or has not finished): the '
                "output root is its rendered <code>output_root</code>, and items not ended yet show "
                "as unfinished.</p>"
            )
        if not self.sheet.result.found:
            lines.append(f"<p><b>No manifest found at</b> <code>{_e(self.sheet.result.manifest)}</code>.</p>")
        return lines

    def _counts(self) -> str:
        counts = self.sheet.counts()
        shown = "".join(f"<span>{_e(name)}: <b>{value}</b></span>" for name, value in counts.items())
        problems = len(self.sheet.result.problems)
        if problems:
            shown += f'<span><a href="#problems">problems</a>: <b>{problems}</b></span>'
        return f'<p class="counts">{shown}</p>'

    def _failures(self) -> list[str]:
        failures = self.sheet.failures
        if not failures:
            return []
        parts = [f'<h2 id="failures">Failures ({len(failures)})</h2><table>']
        parts.append("<tr><th>SKU</th><th>status</th><th>request id</th><th>error</th></tr>")
        for index, item in enumerate(failures[:MAX_FAILURES_LISTED]):
            href = self.page_href(index // PAGE_SIZE + 1, self.anchor(item))
            parts.append(
                f'<tr><td><a href="{_e(href)}">{_e(item.key)}</a></td><td>{_e(item.status or "")}</td>'
                f"<td>{_e(item.request_id or '')}</td>"
                f'<td class="error">{_e(item.error or "")}</td></tr>'
            )
        parts.append("</table>")
        if len(failures) > MAX_FAILURES_LISTED:
            more = len(failures) - MAX_FAILURES_LISTED
            parts.append(f"<p>{more} more failure(s) on the following pages, each with its error.</p>")
        return parts

    def _problems(self) -> list[str]:
        problems = self.sheet.result.problems
        if not problems:
            return []
        return [
            f'<h2 id="problems">Problems in the manifest ({len(problems)})</h2><ul class="problems">',
            *(f"<li>{_e(problem)}</li>" for problem in problems),
            "</ul>",
        ]

    def _pager(self) -> str:
        if self.last == 1:
            return ""
        links = []
        if self.number > 1:
            links.append(f'<a href="{_e(self.page_href(self.number - 1))}">&laquo; previous</a>')
        for number in page_numbers(self.number, self.last):
            if number is None:
                links.append("<span>&hellip;</span>")
            elif number == self.number:
                links.append(f"<b>{number}</b>")
            else:
                links.append(f'<a href="{_e(self.page_href(number))}">{number}</a>')
        if self.number < self.last:
            links.append(f'<a href="{_e(self.page_href(self.number + 1))}">next &raquo;</a>')
        return f'<p class="pager">Page {self.number} of {self.last}: {" ".join(links)}</p>'

    def _rows(self) -> list[str]:
        items = self.sheet.page(self.number, PAGE_SIZE)
        first = (self.number - 1) * PAGE_SIZE
        parts = [
            f'<h2 id="items">Items {first + 1 if items else 0}&ndash;{first + len(items)} '
            f"of {len(self.sheet.items)}</h2><table>",
            "<tr><th>SKU</th><th>input</th><th>output</th></tr>",
        ]
        parts.extend(self._row(item) for item in items)
        parts.append("</table>")
        return parts

    def _row(self, item: ItemResult) -> str:
        inputs = " ".join(self._input(url, item) for url in item.images if is_web_url(url)) or "-"
        if item.is_failure:
            result = f'<td class="error">{_e(item.error or item.status or item.outcome)}</td>'
        else:
            result = f"<td>{' '.join(self._output(output, item) for output in item.outputs) or '-'}</td>"
        return (
            f'<tr id="{_e(self.anchor(item))}"><td><b>{_e(item.key)}</b><br>'
            f'<span class="outcome {_e(item.outcome)}">{_e(item.outcome)}</span> {_e(item.status or "")}'
            f"<br><small>{_e(item.request_id or '')}</small>"
            f'<div class="prompt">{_e(item.prompt)}</div></td><td>{inputs}</td>{result}</tr>'
        )

    def _input(self, url: str, item: ItemResult) -> str:
        kept = self.sheet.inputs.get(url)
        return input_html(url, f"{item.key} input", None if kept is None else self.file_href(kept))

    def _output(self, output: str, item: ItemResult) -> str:
        path = self.sheet.outputs.get(output)
        if path is None:
            return f'<span class="unavailable">not inside the output root: {_e(output)}</span>'
        href, alt = _e(self.file_href(path)), _e(f"{item.key} output")
        return f'<a class="output" href="{href}"><img src="{href}" alt="{alt}" loading="lazy"></a>'
