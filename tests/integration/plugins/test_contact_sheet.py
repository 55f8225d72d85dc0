"""
The contact sheet served by the plugin's app, on task instances run by ``dag.test()``.

Each test reads what a real batch left in the metadata database and on disk, through the app as the
api-server mounts it, with tokens of a real auth manager.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin

from airflow_provider_firered.batch.manifest import ManifestEntry, read_manifest, write_manifest
from airflow_provider_firered.plugins.links import sheet_path
from airflow_provider_firered.plugins.pages import POLICY
from tests.integration.plugins.auth_manager import OUTSIDER
from tests.integration.plugins.conftest import DAG_ID, xcom_value

if TYPE_CHECKING:
    from tests.integration.plugins.conftest import Api, BatchRun

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def page_url(run: BatchRun, task_id: str, map_index: int | str = -1, dag_id: str = DAG_ID) -> str:
    return sheet_path(dag_id, run.run_id, task_id, map_index)


def image_links(page: str, base: str) -> list[str]:
    """Every output image the page shows, as absolute paths."""
    return [urljoin(base, html.unescape(src)) for src in re.findall(r'<img src="(\./[^"]+)"', page)]


def test_the_page_lists_every_sku_with_counts_and_the_failures_error(api: Api, batch_run: BatchRun) -> None:
    url = page_url(batch_run, "batch")
    answer = api.get(url)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["content-security-policy"] == POLICY
    assert answer.headers["referrer-policy"] == "no-referrer"
    page = answer.text
    for key in ("SKU-1", "SKU-2", "SKU-3", "SKU-BAD"):
        assert f'id="sku-{key}"' in page, key
    assert "total: <b>4</b>" in page
    assert "edited: <b>3</b>" in page
    assert "failed: <b>1</b>" in page
    entries = {entry.key: entry for entry in read_manifest(batch_run.root("batch")) or []}
    error = entries["SKU-BAD"].error
    assert error
    assert html.escape(error) in page
    # Inputs beside outputs: the input is the source URL itself, each output comes from the app (an
    # item refused as invalid records no input).
    assert page.count(f'<img src="{html.escape(batch_run.sample_image)}"') == 3
    assert len(image_links(page, url)) == 3
    assert "<script" not in page


def test_a_listed_image_is_streamed_with_its_type(api: Api, batch_run: BatchRun) -> None:
    url = page_url(batch_run, "batch")
    links = image_links(api.get(url).text, url)
    entries = {entry.key: entry for entry in read_manifest(batch_run.root("batch")) or []}
    outputs = [Path(output) for key in ("SKU-1", "SKU-2", "SKU-3") for output in entries[key].outputs]
    assert len(links) == len(outputs) == 3
    for link in links:
        answer = api.get(link)
        assert answer.status_code == 200, (link, answer.text)
        assert "location" not in answer.headers
        (output,) = [o for o in outputs if link.split("?")[0].endswith("/" + quote(o.name))]
        assert answer.content == output.read_bytes()
        expected = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}[output.suffix]
        assert answer.headers["content-type"] == expected
        assert answer.headers["x-content-type-options"] == "nosniff"


def files_url(run: BatchRun, task_id: str, path: str, map_index: int = -1) -> str:
    base = sheet_path(DAG_ID, run.run_id, task_id, map_index)
    page, _, query = base.partition("?")
    return f"{page}/files/{path}?{query}"


def rewrite_manifest(root: Path, entries: list[ManifestEntry]) -> None:
    write_manifest(root, entries)


def test_a_file_not_in_the_manifest_is_404(api: Api, batch_run: BatchRun) -> None:
    root = batch_run.root("batch")
    (root / "SKU-1" / "planted.png").write_bytes(PNG)  # an image there, but not one the batch wrote
    (entry,) = [e for e in read_manifest(root) or [] if e.key == "SKU-1"]
    listed = Path(entry.outputs[0]).name
    assert api.get(files_url(batch_run, "batch", f"SKU-1/{listed}")).status_code == 200
    for path in (
        "SKU-1/planted.png",
        "_manifest.jsonl",
        "_batch.json",
        "SKU-1",
        f"SKU-2/{listed}",  # a listed name under another item's folder
        # (An HTTP client removes plain dot segments before sending: these are sent encoded.)
        f"SKU-1/%2E%2E/SKU-1/{listed}",
        f"SKU-1/%2E/{listed}",
        "../../../../etc/passwd",
        "%2E%2E/%2E%2E/etc/passwd",
        str(root / "SKU-1" / listed),
        f"/{root}/SKU-1/{listed}",
        "",
    ):
        answer = api.get(files_url(batch_run, "batch", path))
        assert answer.status_code == 404, (path, answer.status_code, answer.text[:200])
        assert "location" not in answer.headers


def test_files_listed_but_outside_the_root_or_behind_a_link_are_404(
    api: Api, batch_run: BatchRun, tmp_path: Path
) -> None:
    root = batch_run.root("scratch")
    outside = tmp_path / "outside.png"
    outside.write_bytes(PNG)
    folder = root / "ITEM"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "real.png").write_bytes(PNG)
    (folder / "notes.png").write_text("not an image, whatever its name")
    for name, target in (("escape.png", outside), ("alias.png", folder / "real.png")):
        link = folder / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    fifo = folder / "fifo.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    (root / "linked").unlink(missing_ok=True)
    (root / "linked").symlink_to(folder, target_is_directory=True)
    listed = [str(folder / name) for name in ("real.png", "alias.png", "notes.png", "fifo.png")]
    rewrite_manifest(
        root,
        [
            ManifestEntry("ITEM", "edited", "COMPLETED", "req-1", outputs=listed),
            # Refused lines: an output outside the root, one whose link leads out, one through a
            # linked folder; each is a problem of the manifest, not a file of the sheet.
            ManifestEntry("OUT", "edited", "COMPLETED", "req-2", outputs=[str(outside)]),
            ManifestEntry("ESCAPE", "edited", "COMPLETED", "req-3", outputs=[str(folder / "escape.png")]),
        ],
    )
    page = api.get(page_url(batch_run, "scratch"))
    assert page.status_code == 200
    assert "Problems in the manifest (2)" in page.text
    assert api.get(files_url(batch_run, "scratch", "ITEM/real.png")).status_code == 200
    for path in (
        "ITEM/alias.png",  # a link inside the root: never followed
        "ITEM/notes.png",  # not an image by its first bytes
        "ITEM/fifo.png",  # not a regular file: refused without blocking
        "ITEM/escape.png",
        "linked/real.png",
        str(outside),
        "../" + outside.name,
        f"../{tmp_path.name}/{outside.name}",
    ):
        answer = api.get(files_url(batch_run, "scratch", path))
        assert answer.status_code == 404, (path, answer.status_code, answer.text[:200])


def test_without_a_token_the_answer_is_401_and_a_bad_token_403(api: Api, batch_run: BatchRun) -> None:
    url = page_url(batch_run, "batch")
    image = image_links(api.get(url).text, url)[0]
    for address in (url, image):
        assert api.get(address, user=None).status_code == 401
        bad = api.get(address, user=None, headers={"Authorization": "Bearer not-a-token"})
        assert bad.status_code == 403
    # A browser gets a page saying what to do, under the same policy.
    browser = api.get(url, user=None, headers={"Accept": "text/html,application/xhtml+xml"})
    assert browser.status_code == 401
    assert browser.headers["content-type"].startswith("text/html")
    assert browser.headers["content-security-policy"] == POLICY
    assert "SKU-1" not in browser.text


def test_a_user_who_may_not_read_the_dag_gets_403(api: Api, batch_run: BatchRun) -> None:
    url = page_url(batch_run, "batch")
    image = image_links(api.get(url).text, url)[0]
    for address in (url, image, page_url(batch_run, "no-such-task")):
        answer = api.get(address, user=OUTSIDER)
        assert answer.status_code == 403, address
        assert "SKU-1" not in answer.text
    # The same user may read the task instances of a DAG not denied: the check is per DAG.
    assert api.get(page_url(batch_run, "batch", dag_id="another_dag"), user=OUTSIDER).status_code == 404
    assert api.get(url, user="reader").status_code == 200


def test_each_mapped_task_instance_has_its_own_sheet(api: Api, batch_run: BatchRun) -> None:
    first = api.get(page_url(batch_run, "mapped", 0))
    second = api.get(page_url(batch_run, "mapped", 1))
    assert first.status_code == second.status_code == 200
    assert 'id="sku-MAP-A"' in first.text
    assert "MAP-B" not in first.text
    assert 'id="sku-MAP-B"' in second.text
    (entry,) = read_manifest(batch_run.root("mapped-1")) or []
    name = Path(entry.outputs[0]).name
    assert api.get(files_url(batch_run, "mapped", f"MAP-B/{name}", 1)).status_code == 200
    assert api.get(files_url(batch_run, "mapped", f"MAP-B/{name}", 0)).status_code == 404
    # The task has no unmapped instance; an index that is no number is no task instance either.
    assert api.get(page_url(batch_run, "mapped")).status_code == 404
    assert api.get(page_url(batch_run, "mapped", "x")).status_code == 404


def test_the_external_views_placeholder_means_an_unmapped_instance(api: Api, batch_run: BatchRun) -> None:
    answer = api.get(page_url(batch_run, "batch", "{MAP_INDEX}"))
    assert answer.status_code == 200
    assert 'id="sku-SKU-1"' in answer.text


def test_a_failed_batch_shows_its_sheet_from_its_rendered_output_root(api: Api, batch_run: BatchRun) -> None:
    assert xcom_value(DAG_ID, batch_run.run_id, "failing") is None  # it returned nothing
    answer = api.get(page_url(batch_run, "failing"))
    assert answer.status_code == 200, answer.text
    assert "task state <b>failed</b>" in answer.text
    assert 'id="sku-NOPE"' in answer.text
    assert "must be a non-empty string" in answer.text
    assert "rendered <code>output_root</code>" in answer.text


def test_no_task_instance_or_no_batch_is_404(api: Api, batch_run: BatchRun) -> None:
    for url in (
        page_url(batch_run, "no-such-task"),
        sheet_path(DAG_ID, "no-such-run", "batch"),
        sheet_path("no_such_dag", batch_run.run_id, "batch"),
        files_url(batch_run, "no-such-task", "SKU-1/x.png"),
    ):
        answer = api.get(url)
        assert answer.status_code == 404, url


def test_10000_skus_load_a_page_at_a_time(api: Api, batch_run: BatchRun) -> None:
    root = batch_run.root("scratch")
    image = batch_run.sample_image
    output = root / "ITEM" / "real.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(PNG)
    entries = [
        ManifestEntry(
            f"SKU-{n:05d}",
            "failed" if n % 500 == 7 else "edited",
            "FAILED" if n % 500 == 7 else "COMPLETED",
            f"req-{n}",
            outputs=[] if n % 500 == 7 else [str(output)],
            error="Emulated failure: the model refused" if n % 500 == 7 else None,
            images=[f"{image}?sku={n}"],
            prompt=f"Put SKU {n} on a white studio background, soft shadow, centred " * 3,
        )
        for n in range(10_000)
    ]
    rewrite_manifest(root, entries)
    assert (root / "_manifest.jsonl").stat().st_size > 3_000_000
    url = page_url(batch_run, "scratch")
    timings = {}
    for page in (1, 57, 100, 101):
        started = time.monotonic()
        answer = api.get(f"{url}&page={page}")
        timings[page] = time.monotonic() - started
        assert answer.status_code == 200
        rows = re.findall(r'<tr id="sku-([^"]+)"', answer.text)
        assert len(rows) == 100, page
        assert "total: <b>10000</b>" in answer.text
        assert "failed: <b>20</b>" in answer.text
        assert len(answer.content) < 400_000
    # Failures first, then by key; past the last page, the last page.
    first = re.findall(r'<tr id="sku-([^"]+)"', api.get(f"{url}&page=1").text)
    assert first[:20] == [f"SKU-{n:05d}" for n in range(10_000) if n % 500 == 7]
    last = re.findall(r'<tr id="sku-([^"]+)"', api.get(f"{url}&page=101").text)
    assert last[-1] == "SKU-09999"
    # The first read parses the manifest; the pages after it (and each image) find it read.
    assert max(timings[57], timings[100]) < 5, timings
    assert timings[1] < 60, timings
    print(f"10,000 SKUs: page timings {timings}")


def test_an_input_that_no_longer_loads_shows_its_url_in_a_placeholder(api: Api, batch_run: BatchRun) -> None:
    page = api.get(page_url(batch_run, "batch")).text
    source = html.escape(batch_run.sample_image)
    # The image (alt="": a broken one takes no room) lies over a box that gives the URL; no script.
    assert f'<span class="gone">Input no longer loads:<br>{source}</span><img src="{source}" alt=""' in page
    assert f'<a class="source" href="{source}"' in page
    assert ".input .gone{position:absolute" in page


def test_the_contact_sheet_file_shows_a_dead_input_as_a_placeholder_with_its_escaped_url(
    tmp_path: Path,
) -> None:
    from airflow_provider_firered.batch.contact_sheet import contact_sheet_html
    from airflow_provider_firered.batch.run_results import read_run

    dead = 'http://127.0.0.1:9/expired.png?sig="a"&b=<c>'
    output = tmp_path / "run" / "batch-0000" / "A" / "a.png"
    output.parent.mkdir(parents=True)
    output.write_bytes(PNG)
    entry = ManifestEntry("A", "edited", "COMPLETED", "req-A", outputs=[str(output)], images=[dead])
    write_manifest(output.parent.parent, [entry])

    page = contact_sheet_html(read_run(tmp_path / "run"))

    escaped = html.escape(dead, quote=True)
    assert dead not in page
    assert f'<span class="gone">Input no longer loads:<br>{escaped}</span>' in page
    assert f'<img src="{escaped}" alt=""' in page
    assert "<script" not in page


def test_a_kept_copy_of_an_input_is_shown_instead_of_its_url(
    api: Api, batch_run: BatchRun, tmp_path: Path
) -> None:
    """A batch folder's ``_inputs/`` copy outlives the input's host: the file and the page show it."""
    from airflow_provider_firered.batch.contact_sheet import contact_sheet_html, keep_input_copy
    from airflow_provider_firered.batch.run_results import read_run

    root = batch_run.root("scratch")
    gone = "http://127.0.0.1:9/gone/shoe.png"
    output = root / "KEPT" / "out.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(PNG)
    rewrite_manifest(
        root, [ManifestEntry("KEPT", "edited", "COMPLETED", "req-K", outputs=[str(output)], images=[gone])]
    )
    copy = keep_input_copy(root, gone, PNG)
    (root / "_inputs" / "not-listed").write_bytes(PNG)

    url = page_url(batch_run, "scratch")
    page = api.get(url).text
    kept = f"./scratch/files/_inputs/{Path(str(copy)).name}?map_index=-1"
    assert f'<img src="{html.escape(kept)}" alt=""' in page
    assert f'<a class="source" href="{html.escape(gone)}"' in page  # the source is still named
    answer = api.get(urljoin(url, kept))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert api.get(files_url(batch_run, "scratch", "_inputs/not-listed")).status_code == 404

    # The file: the copy, relative to the run folder.
    run = tmp_path / "run"
    batch = run / "batch-0000"
    (batch / "KEPT").mkdir(parents=True)
    shutil.copy(output, batch / "KEPT" / "out.png")
    kept_output = str(batch / "KEPT" / "out.png")
    entry = ManifestEntry("KEPT", "edited", "COMPLETED", outputs=[kept_output], images=[gone])
    write_manifest(batch, [entry])
    keep_input_copy(batch, gone, PNG)
    sheet = contact_sheet_html(read_run(run))
    assert f'<img src="batch-0000/_inputs/{Path(str(copy)).name}" alt=""' in sheet
    assert html.escape(gone) in sheet


def test_plan_and_budget_outcomes_are_failures_with_their_reasons_and_counts(
    api: Api, batch_run: BatchRun
) -> None:
    from airflow_provider_firered.batch.figures import figures_from_manifest

    root = batch_run.root("scratch")
    image = batch_run.sample_image
    output = root / "R-OK" / "out.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(PNG)
    plan = [
        ManifestEntry("P-NEW", "would_edit", "NEW", error="new: never edited", images=[image], dry_run=True),
        ManifestEntry("P-SAME", "would_reuse", "UNCHANGED", error="unchanged since", dry_run=True),
        ManifestEntry("P-FAIL", "would_fail", "UNCHANGED", error="ended FAILED last night", dry_run=True),
        ManifestEntry("P-BAD", "invalid", "INVALID", error="prompt: must be <non-empty>", dry_run=True),
        ManifestEntry("P-OVER", "over_budget", "OVER_BUDGET", error="over max_paid_edits=1", dry_run=True),
    ]
    real = [
        ManifestEntry("R-OK", "edited", "COMPLETED", "req-1", outputs=[str(output)], images=[image]),
        ManifestEntry("R-OVER", "over_budget", "OVER_BUDGET", error="not sent: over max_paid_edits=1"),
        ManifestEntry("R-FAIL", "failed", "FAILED", "req-2", error="the model refused"),
    ]
    for entries, failing in ((plan, ("P-FAIL", "P-BAD", "P-OVER")), (real, ("R-OVER", "R-FAIL"))):
        rewrite_manifest(root, entries)
        page = api.get(page_url(batch_run, "scratch")).text
        counts = figures_from_manifest(read_manifest(root) or []).counts()
        shown = dict(re.findall(r"<span>([a-z_]+): <b>(\d+)</b></span>", page))
        assert shown == {name: str(value) for name, value in counts.items()}, (shown, counts)
        failures = page.split('<h2 id="failures">', 1)[1].split("</table>", 1)[0]
        assert f"Failures ({len(failing)})" in failures
        listed = re.findall(r'<a href="[^"]*#sku-([^"]+)">', failures)
        assert sorted(listed) == sorted(failing)
        for entry in entries:
            if entry.key in failing:
                assert f'<td class="error">{html.escape(str(entry.error))}</td>' in failures, entry.key
            else:
                assert entry.key not in failures


def test_a_browser_signed_in_to_airflow_is_let_in_by_its_cookie(api: Api, batch_run: BatchRun) -> None:
    """Airflow 3.1+ signs the UI in with a cookie, which a page the UI links to receives too."""
    from airflow_provider_firered.version_compat import api_reads_token_cookie

    url = page_url(batch_run, "batch")

    def with_cookie(user: str) -> Any:
        api.client.cookies.set("_token", api.tokens[user])
        try:
            return api.get(url, user=None, headers={"Accept": "text/html"})
        finally:
            api.client.cookies.clear()

    answer, denied = with_cookie("reader"), with_cookie(OUTSIDER)
    if api_reads_token_cookie():
        assert answer.status_code == 200
        assert 'id="sku-SKU-1"' in answer.text
        assert denied.status_code == 403
    else:
        # Airflow 3.0 reads bearer tokens only (its UI keeps the token in local storage): the
        # page says so instead of showing a bare error.
        assert answer.status_code == 401
        assert "Authorization: Bearer" in answer.text
