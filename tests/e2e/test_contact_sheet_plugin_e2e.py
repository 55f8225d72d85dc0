"""
The contact sheet plugin in a real api-server: signed in over HTTP, the page and its images.

A batch DAG runs with ``airflow dags test`` against the emulator (three SKUs, one refused as
invalid), writing its task instances to the deployment's metadata database. The api-server then
serves the plugin, loaded from the provider's registration. Over plain HTTP, as a browser or a
script would: sign in with the simple auth manager's token endpoint, open the task instance's contact
sheet (200, every SKU, the failure's error), stream a listed image (its type), and get 401 without a
token and 404 for a file the manifest does not list. The task instance carries the "Contact sheet"
extra link, and on Airflow 3.1+ the plugin's external view and the UI's sign-in cookie.

Runs on the oldest Airflow too (marker ``oldest``): there the UI's sign-in never reaches the page (its
token stays in the browser's local storage), and there are no external views.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.error
import urllib.request
from html import unescape
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin

import airflow
import pytest
from firered_devtools.deployment import start_emulator

from airflow_provider_firered.batch.manifest import read_manifest
from airflow_provider_firered.plugins.links import sheet_path
from tests.e2e.browser import UI_USER, enable_ui_login, start_api_server
from tests.e2e.conftest import running_deployment

if TYPE_CHECKING:
    from email.message import Message

    from firered_devtools.deployment import AirflowDeployment

pytestmark = [pytest.mark.e2e, pytest.mark.oldest, pytest.mark.timeout(900)]

DAG_ID = "firered_contact_sheet_e2e"
API_KEY = "sk-firered-SHEET-3c1f5e7a9b2d"
AIRFLOW_VERSION = tuple(int(part) for part in airflow.__version__.split(".")[:2])
#: Airflow 3.1+: external views, and the UI's sign-in cookie read by the api-server.
HAS_EXTERNAL_VIEWS = AIRFLOW_VERSION >= (3, 1)

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
    url: str, *, token: str | None = None, cookie: str | None = None, body: Any = None
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
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")

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


def test_the_contact_sheet_through_a_real_api_server(tmp_path: Path) -> None:
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
        edits = [
            *(
                {"key": f"SKU-{n}", "prompt": f"A white background for SKU {n}", "images": [image]}
                for n in (1, 2)
            ),
            {"key": "SKU-BAD", "prompt": " ", "images": [image]},
        ]
        (dags / f"{DAG_ID}.py").write_text(
            DAG_FILE.format(dag_id=DAG_ID, edits=edits, output_root=str(output_root))
        )
        deployment.cli("db", "migrate")
        # The api-server reads DAGs serialized in the database (Airflow 3.0's ``dags test`` writes none).
        deployment.cli("dags", "reserialize")
        ran = deployment.cli("dags", "test", DAG_ID, timeout=300, check=False)
        ((run_id, state),) = deployment.query("SELECT run_id, state FROM dag_run WHERE dag_id = ?", (DAG_ID,))
        assert state == "success", ran.stdout[-4000:] + ran.stderr[-4000:]

        start_api_server(deployment)
        deployment.wait_healthy(timeout=180, components=())
        token = sign_in(deployment, password)
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
