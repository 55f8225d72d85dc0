"""
The contact sheet plugin in a real api-server: over HTTP, then as a person in Chromium.

A batch DAG runs with ``airflow dags test`` against the emulator (three SKUs, one refused as
invalid), writing its task instances to the deployment's metadata database. SKU-2's input is served
by a server of the test's own that stops after the run, as a signed URL expires. The api-server then
serves the plugin, loaded from the provider's registration; both tests share it and the run.

- Over plain HTTP, as a script would: sign in with the simple auth manager's token endpoint, open the
  task instance's contact sheet (200, every SKU, the failure's error), stream a listed image (its
  type), and get 401 without a token and 404 for a file the manifest does not list. The task
  instance carries the "Contact sheet" extra link, and on Airflow 3.1+ the plugin's external view
  and the UI's sign-in cookie.
- In a headless Chromium (Airflow 3.1+), as a person would: sign in through the UI's form, open the
  batch task instance, follow its "Contact sheet" tab (the external view) and see the page in it:
  the counts, every output's thumbnail loaded, the failure with its error, and the dead input's
  placeholder with its URL; an image the manifest does not list is a 404 there too. On Airflow 3.3
  the view's screenshot is written to ``test-artifacts/contact-sheet/`` (to
  ``docs/images/contact_sheet_page.png``, which the README and ``docs/plugin.md`` show, with
  ``FIRERED_UPDATE_DOCS_IMAGES=1``); a failed step leaves one there too.

Runs on the oldest Airflow too (marker ``oldest``): there the UI's sign-in never reaches the page (its
token stays in the browser's local storage) and there are no external views, so the browser test is
skipped with that reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from html import escape, unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin

import airflow
import pytest
from firered_devtools.deployment import start_emulator

from airflow_provider_firered.batch.manifest import read_manifest
from airflow_provider_firered.plugins.links import sheet_path
from tests.e2e.browser import UI_USER, enable_ui_login, open_browser, sign_in_ui, start_api_server
from tests.e2e.conftest import running_deployment

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator
    from email.message import Message

    from firered_devtools.deployment import AirflowDeployment

pytestmark = [pytest.mark.e2e, pytest.mark.oldest, pytest.mark.timeout(900)]

DAG_ID = "firered_contact_sheet_e2e"
CATALOGUE_DAG = "firered_catalogue_reedit"
API_KEY = "sk-firered-SHEET-3c1f5e7a9b2d"
AIRFLOW_VERSION = tuple(int(part) for part in airflow.__version__.split(".")[:2])
#: Airflow 3.1+: external views, and the UI's sign-in cookie read by the api-server.
HAS_EXTERNAL_VIEWS = AIRFLOW_VERSION >= (3, 1)
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "contact-sheet"
#: The README's picture is taken again only when asked (a test run leaves the tracked file alone).
SCREENSHOT = (
    ROOT / "docs" / "images" if os.environ.get("FIRERED_UPDATE_DOCS_IMAGES") == "1" else ARTIFACTS
) / "contact_sheet_page.png"
#: The external view's route on a task instance page (``url_route`` in the plugin).
VIEW_ROUTE = "plugin/firered-contact-sheet"

DAG_FILE = """
from datetime import datetime, timezone

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False):
    FireRedBatchEditOperator(
        task_id="batch",
        edits={edits!r},
        output_root={output_root!r},
        max_failed=1,
        # ``airflow dags test`` runs deferred waits in a process of its own: wait on the worker.
        deferrable=False,
        poll_interval=1,
    )
"""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as it is: the test sees it rather than following it."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def http(
    url: str,
    *,
    token: str | None = None,
    cookie: str | None = None,
    body: Any = None,
    method: str | None = None,
) -> tuple[int, Message, bytes]:
    """One request, never following a redirect: (status, headers, body)."""
    headers = {"Accept": "*/*"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        url, data=data, headers=headers, method=method or ("POST" if data else "GET")
    )

    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=60) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def sign_in(deployment: AirflowDeployment, password: str) -> str:
    """The simple auth manager's token for the UI user."""
    status, _, body = http(
        f"{deployment.api_url}/auth/token", body={"username": UI_USER, "password": password}
    )
    assert status in (200, 201), body[:500]
    return str(json.loads(body)["access_token"])


def plugin_entry_point_installed() -> bool:
    return any(point.name == "firered" for point in entry_points(group="airflow.plugins"))


@contextlib.contextmanager
def expiring_image(body: bytes) -> Iterator[str]:
    """A URL on loopback that serves ``body`` (a PNG) until the block ends, then nothing: an expired URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *_args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="expiring-image", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/signed/sku-2.png?X-Signature=a1b2&Expires=1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class SheetServer:
    """The module's deployment: its api-server, the UI user's password, the run and its inputs."""

    deployment: AirflowDeployment
    password: str
    run_id: str
    output_root: Path
    live_input: str
    dead_input: str


@pytest.fixture(scope="module")
def sheet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SheetServer]:
    """Run the batch DAG once, then start the api-server; both tests read them."""
    tmp_path = tmp_path_factory.mktemp("contact-sheet-e2e")
    dags = tmp_path / "dags"
    dags.mkdir()
    output_root = tmp_path / "catalogue" / "batch-0000"
    with running_deployment(tmp_path / "airflow-home", dags) as deployment:
        password = secrets.token_urlsafe(12)
        enable_ui_login(deployment, password)
        if not plugin_entry_point_installed():
            # Airflow loads a provider's plugins from provider info only when it discovers providers
            # eagerly; the "airflow.plugins" entry point loads them otherwise.
            deployment.env["AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS"] = "False"
        emulator = start_emulator(
            deployment, "--keys", API_KEY, "--queued-seconds", "0.2", "--processing-seconds", "0.5"
        )
        deployment.env["AIRFLOW_CONN_FIRERED_DEFAULT"] = json.dumps(
            {"conn_type": "firered", "host": emulator.gateway_url, "password": API_KEY}
        )
        image = emulator.sample_images[0]
        with urllib.request.urlopen(emulator.sample_images[-1], timeout=30) as answer:
            png = answer.read()
        deployment.cli("db", "migrate")
        with expiring_image(png) as expiring:
            edits = [
                {"key": "SKU-1", "prompt": "A white background for SKU 1", "images": [image]},
                {"key": "SKU-2", "prompt": "A white background for SKU 2", "images": [expiring]},
                {"key": "SKU-BAD", "prompt": " ", "images": [image]},
            ]
            (dags / f"{DAG_ID}.py").write_text(
                DAG_FILE.format(dag_id=DAG_ID, edits=edits, output_root=str(output_root))
            )
            # The api-server reads DAGs serialized in the database (Airflow 3.0's ``dags test`` writes none).
            deployment.cli("dags", "reserialize")
            ran = deployment.cli("dags", "test", DAG_ID, timeout=300, check=False)
        ((run_id, state),) = deployment.query("SELECT run_id, state FROM dag_run WHERE dag_id = ?", (DAG_ID,))
        assert state == "success", ran.stdout[-4000:] + ran.stderr[-4000:]

        start_api_server(deployment)
        deployment.wait_healthy(timeout=180, components=())
        yield SheetServer(deployment, password, str(run_id), output_root, image, expiring)


def test_the_contact_sheet_through_a_real_api_server(sheet_server: SheetServer) -> None:
    deployment, output_root, run_id = sheet_server.deployment, sheet_server.output_root, sheet_server.run_id
    token = sign_in(deployment, sheet_server.password)
    api = deployment.api_url
    page = api + sheet_path(DAG_ID, run_id, "batch")

    # The page, signed in: every SKU, the counts, the failure's error, under the policy.
    status, headers, body = http(page, token=token)
    assert status == 200, body[:2000]
    assert str(headers.get("Content-Security-Policy")).startswith("default-src 'none'")
    text = body.decode()
    for key in ("SKU-1", "SKU-2", "SKU-BAD"):
        assert f'id="sku-{key}"' in text, key
    assert "total: <b>3</b>" in text
    assert "failed: <b>1</b>" in text
    assert "must be a non-empty string" in text
    # The input whose URL expired: over its placeholder, which names it (escaped).
    assert f'<span class="gone">Input no longer loads:<br>{escape(sheet_server.dead_input)}</span>' in text

    # Its images come from the api-server, typed by their bytes; nothing else is served.
    links = [urljoin(page, unescape(src)) for src in re.findall(r'<img src="(\./[^"]+)"', text)]
    assert len(links) == 2
    entries = {entry.key: entry for entry in read_manifest(output_root) or []}
    status, headers, body = http(links[0], token=token)
    assert status == 200
    assert str(headers.get("Content-Type")).startswith("image/")
    assert headers.get("Location") is None
    assert body in {Path(out).read_bytes() for key in ("SKU-1", "SKU-2") for out in entries[key].outputs}
    planted = output_root / "SKU-1" / "planted.png"
    planted.write_bytes(Path(entries["SKU-1"].outputs[0]).read_bytes())
    not_listed = links[0].split("/files/")[0] + "/files/SKU-1/planted.png?map_index=-1"
    assert http(not_listed, token=token)[0] == 404
    assert http(links[0].split("/files/")[0] + "/files/_manifest.jsonl", token=token)[0] == 404

    # Without a token: 401, for the page and for its images.
    assert http(page)[0] == 401
    assert http(links[0])[0] == 401

    # The UI's sign-in cookie (Airflow 3.1+) opens it too: a page the UI links to is signed in.
    if HAS_EXTERNAL_VIEWS:
        assert http(page, cookie=token)[0] == 200

    # Reach: the extra link on the task instance, and (3.1+) the external view.
    links_url = f"{api}/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/batch/links"
    status, _, body = http(links_url, token=token)
    assert status == 200, body[:1000]
    assert json.loads(body)["extra_links"]["Contact sheet"] == sheet_path(DAG_ID, run_id, "batch")
    status, _, body = http(f"{api}/api/v2/plugins", token=token)
    assert status == 200
    (plugin,) = [p for p in json.loads(body)["plugins"] if p["name"] == "firered"]
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/firered"]
    if HAS_EXTERNAL_VIEWS:
        assert [view["destination"] for view in plugin["external_views"]] == ["task_instance"]
    started = time.monotonic()
    assert http(page, token=token)[0] == 200
    assert time.monotonic() - started < 30


#: Each image of the sheet: its address, decoded width, and the row it is in.
IMAGES_JS = """() => [...document.images].map((i) => [
    i.getAttribute('src'), i.naturalWidth, i.closest('tr') ? i.closest('tr').id : ''])"""
#: What a person sees at the middle of an input's box: the image, or the placeholder under it.
SEEN_JS = """(box) => {
    const r = box.getBoundingClientRect();
    const seen = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
    return [seen ? seen.tagName : '', seen ? seen.className : '', seen ? seen.textContent : ''];
}"""


@pytest.mark.skipif(
    not HAS_EXTERNAL_VIEWS,
    reason="Airflow 3.0: the UI keeps its sign-in in local storage (the page it links to is not signed "
    "in) and has no external views; the page is tested over HTTP with a token",
)
def test_a_person_opens_the_contact_sheet_from_the_task_instance(
    sheet_server: SheetServer, request: pytest.FixtureRequest
) -> None:
    chromium = str(request.getfixturevalue("chromium_executable"))
    api, run_id = sheet_server.deployment.api_url, sheet_server.run_id
    task_page = f"{api}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/batch"
    with open_browser(chromium, ARTIFACTS, f"airflow-{airflow.__version__}", (1600, 1300)) as ui:
        page = ui.page
        sign_in_ui(ui, api, sheet_server.password)
        with ui.step("task-instance"):
            page.goto(task_page)
            page.get_by_text("FireRedBatchEditOperator").first.wait_for()
        with ui.step("contact-sheet-tab"):
            page.get_by_role("link", name="Contact sheet").click()
            page.wait_for_url(f"**/{VIEW_ROUTE}")
            view = page.locator("iframe").first
            # The UI fills the view's placeholders, leaving {MAP_INDEX} as is on an unmapped task.
            assert view.get_attribute("src") == sheet_path(DAG_ID, run_id, "batch", "{MAP_INDEX}")
            sheet = view.element_handle().content_frame()
            assert sheet is not None
            sheet.locator("h1", has_text="Contact sheet").wait_for()
        with ui.step("the-page"):
            counts = sheet.locator("p.counts").inner_text()
            assert re.search(r"total: 3(?!\d)", counts), counts
            assert re.search(r"failed: 1(?!\d)", counts), counts
            failures = sheet.locator("h2#failures + table")
            assert "SKU-BAD" in failures.inner_text()
            assert "must be a non-empty string" in failures.inner_text()
            for image in sheet.locator("img").all():
                image.scroll_into_view_if_needed()  # lazy images load once in view
            sheet.wait_for_function("() => [...document.images].every((i) => i.complete)")
            images = sheet.evaluate(IMAGES_JS)
            outputs = [(src, width) for src, width, _ in images if "/files/" in src]
            assert len(outputs) == 2, images
            assert all(width > 0 for _, width in outputs), images
            inputs = {row: (src, width) for src, width, row in images if src.startswith("http")}
            assert inputs["sku-SKU-1"] == (sheet_server.live_input, inputs["sku-SKU-1"][1])
            assert inputs["sku-SKU-1"][1] > 0, images
            assert inputs["sku-SKU-2"] == (sheet_server.dead_input, 0), images
        with ui.step("dead-input"):
            box = sheet.locator("#sku-SKU-2 a.input")
            box.scroll_into_view_if_needed()
            tag, kind, said = box.evaluate(SEEN_JS)
            assert (tag, kind) == ("SPAN", "gone"), (tag, kind, said)
            assert said == f"Input no longer loads:{sheet_server.dead_input}"
        if AIRFLOW_VERSION >= (3, 3):
            # The README shows the page as a person first sees it in the task instance's tab.
            sheet.locator("h1").scroll_into_view_if_needed()
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
        with ui.step("not-listed"):
            files = f"{api}/firered/contact-sheet/{DAG_ID}/{quote(run_id, safe='')}/batch/files"
            answer = page.request.get(f"{files}/_manifest.jsonl?map_index=-1")
            assert answer.status == 404, answer.status
            listed = page.request.get(urljoin(f"{api}{sheet_path(DAG_ID, run_id, 'batch')}", outputs[0][0]))
            assert listed.status == 200, listed.status


@pytest.mark.skipif(not HAS_EXTERNAL_VIEWS, reason="human-in-the-loop operators need Airflow 3.1+")
def test_a_person_approves_the_catalogue_through_the_api_and_publish_runs(
    sheet_server: SheetServer, tmp_path: Path
) -> None:
    """The catalogue example with its review on: the review waits, a person approves, publish runs."""
    deployment = sheet_server.deployment
    shutil.copy(ROOT / "example_dags" / "firered_catalogue_reedit.py", deployment.dags_folder)
    base, name = sheet_server.live_input.rsplit("/", 1)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"sku": "SHOE-1", "image_url": name, "prompt": "Make the shoe red"}]))
    deployment.env["AIRFLOW_VAR_FIRERED_IMAGE_BASE_URL"] = f"{base}/"
    deployment.env["AIRFLOW_VAR_FIRERED_CATALOGUE_ALLOWED_PREFIXES"] = json.dumps([str(tmp_path)])
    deployment.cli("dags", "reserialize")
    conf = {
        "manifest": str(manifest),
        "output_root": str(tmp_path / "out"),
        "review": True,
        "poll_interval": 1,
    }
    ran: list[subprocess.CompletedProcess[str]] = []
    night = threading.Thread(
        target=lambda: ran.append(
            deployment.cli(
                "dags", "test", CATALOGUE_DAG, "--conf", json.dumps(conf), timeout=400, check=False
            )
        ),
        daemon=True,
    )
    night.start()

    # The review waits for a person: the run stays open until someone answers.
    deadline = time.monotonic() + 300
    waiting: list[tuple[Any, ...]] = []
    while not waiting and time.monotonic() < deadline and night.is_alive():
        time.sleep(1)
        waiting = deployment.query(
            "SELECT run_id FROM task_instance WHERE dag_id = ? AND task_id = 'review'"
            " AND state IN ('deferred', 'awaiting_input')",
            (CATALOGUE_DAG,),
        )
    assert waiting, ran[0].stdout[-4000:] + ran[0].stderr[-4000:] if ran else "the review never waited"
    ((run_id,),) = waiting
    token = sign_in(deployment, sheet_server.password)
    answer_url = (
        f"{deployment.api_url}/api/v2/dags/{CATALOGUE_DAG}/dagRuns/{quote(run_id, safe='')}"
        "/taskInstances/review/-1/hitlDetails"
    )
    status, _, body = http(answer_url, token=None, body={"chosen_options": ["Approve"]}, method="PATCH")
    assert status in (401, 403), body[:300]  # nobody signed in answers nothing
    status, _, body = http(answer_url, token=token, body={"chosen_options": ["Approve"]}, method="PATCH")
    assert status == 200, body[:1000]

    night.join(timeout=300)
    assert ran
    assert not night.is_alive()
    states = dict(
        deployment.query(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (CATALOGUE_DAG, run_id),
        )
    )
    assert (states["review"], states["publish"]) == ("success", "success"), (states, ran[0].stdout[-3000:])
    ((published,),) = deployment.query(
        "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'publish'"
        " AND key = 'return_value'",
        (CATALOGUE_DAG, run_id),
    )
    assert f'"approved_by": "{UI_USER}"' in str(published), published
