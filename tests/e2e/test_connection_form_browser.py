"""
The ``firered`` connection made the way a new user makes it: in the Airflow web UI, in a real browser.

A headless Chromium signs in to the api-server, opens Admin → Connections → Add, picks the FireRed
type, checks the form (labels, placeholders, hidden fields, every extra on Airflow 3.2+), fills only
the gateway URL (the emulator) and the key, and saves with every extra left blank. The UI then stores
the extras as nulls: ``airflow connections test`` must pass on that saved connection, and one edit
must run through a DAG that reads it from the metadata database.

On Airflow 3.3 the form's screenshot is written to ``docs/images/connection-form.png`` (the README
shows it). On failure, screenshots are kept in ``test-artifacts/connection-form/``.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import airflow
import pytest
from firered_devtools.deployment import AirflowDeployment, start_emulator

from airflow_provider_firered.gateway.connection_extras import EXTRAS, PLACEHOLDERS, RELABELING
from tests.conftest import without_masker_registration
from tests.e2e.browser import Browser, enable_ui_login, open_browser, sign_in_ui, start_api_server
from tests.e2e.conftest import running_deployment, unavailable

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_firered.emulator.process import EmulatorProcess

# The timeout covers installing Chromium on a fresh machine (at most 420 s) and the run itself.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "connection-form"
SCREENSHOT = ROOT / "docs" / "images" / "connection-form.png"
CONN_ID = "firered_default"
DAG_ID = "firered_ui_connection"
#: A recognisable key: the emulator accepts only this one, and no output may show it.
API_KEY = "sk-firered-UIFORM-5d1e0c7a9b3f"
#: Every browser step waits at most this long (milliseconds).
STEP_MS = 30_000
AIRFLOW_VERSION = tuple(int(part) for part in airflow.__version__.split(".")[:2])
#: Airflow 3.2+ builds the form from provider info's ``conn-fields``; 3.0/3.1 from get_ui_field_behaviour.
HAS_EXTRA_FIELDS = AIRFLOW_VERSION >= (3, 2)

DAG_FILE = """
from datetime import datetime, timezone

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False):
    FireRedEditOperator(
        task_id="edit",
        firered_conn_id={conn_id!r},
        prompt="A studio background, edited through a connection made in the UI",
        images=[{image!r}],
        output_dir={output_dir!r},
        # The worker reads the connection through the execution API, from the metadata database
        # (``airflow dags test`` runs deferred waits in a process of its own that cannot read it).
        deferrable=False,
        poll_interval=1,
    )
"""


@pytest.fixture
def ui_deployment(tmp_path: Path) -> Iterator[AirflowDeployment]:
    """An api-server (nothing else) serving a DAG folder of one edit, with a UI user."""
    dags = tmp_path / "dags"
    dags.mkdir()
    with running_deployment(tmp_path / "airflow-home", dags) as deployment:
        yield deployment


def sign_in(ui: Browser, deployment: AirflowDeployment, password: str) -> None:
    sign_in_ui(ui, deployment.api_url, password)


def open_add_form(ui: Browser) -> Any:
    """Admin → Connections → Add Connection, type FireRed Image Edit; returns the dialog."""
    page = ui.page
    with ui.step("open-form"):
        page.get_by_role("button", name="Admin").click()
        page.get_by_role("menuitem", name="Connections").click()
        page.get_by_role("button", name="Add Connection").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_label("Connection ID").fill(CONN_ID)
        dialog.get_by_role("combobox").fill("FireRed")
        page.get_by_role("option", name="FireRed Image Edit").click()
        dialog.get_by_label(RELABELING["host"]).wait_for(state="visible")
    return dialog


def check_form(ui: Browser, dialog: Any) -> None:
    """The labels, placeholders and hidden fields a first-time user sees."""
    with ui.step("check-form"):
        host = dialog.get_by_label(RELABELING["host"])
        key = dialog.get_by_label(RELABELING["password"])
        assert host.get_attribute("placeholder") == PLACEHOLDERS["host"]
        assert key.get_attribute("placeholder") == PLACEHOLDERS["password"]
        assert key.get_attribute("type") == "password"
        names = dialog.locator("input, textarea").evaluate_all("els => els.map(e => e.name)")
        for hidden in ("login", "port", "schema"):
            assert hidden not in names, f"{hidden} should be hidden: {names}"
        labels = [text.strip() for text in dialog.locator("label").all_inner_texts()]
        for standard in ("Host", "Login", "Port", "Schema", "Password"):
            assert standard not in labels, f"the standard label {standard!r} is shown: {labels}"


def check_extra_fields(ui: Browser, dialog: Any) -> None:
    """Airflow 3.2+: every declared extra is a form field, with its label and help; left blank."""
    with ui.step("extra-fields"):
        dialog.get_by_text("Extra Fields", exact=True).click()
        for extra in EXTRAS:
            field = dialog.locator(f"[name='element_{extra.name}']")
            field.wait_for(state="visible")
            assert dialog.get_by_text(extra.label, exact=True).count() == 1, extra.label
            assert dialog.get_by_text(extra.help, exact=False).count() == 1, extra.help
            if extra.kind != "boolean":
                assert field.input_value() == "", f"{extra.name} should start blank"


def save(ui: Browser, deployment: AirflowDeployment, dialog: Any) -> dict[str, Any]:
    """Save the form; returns the stored connection row (read from the metadata database)."""
    with ui.step("save"):
        dialog.get_by_role("button", name="Save").click()
        dialog.wait_for(state="hidden")
    deadline = time.monotonic() + STEP_MS / 1000
    while True:
        rows = deployment.query(
            "SELECT conn_type, host, port, login, schema, extra FROM connection WHERE conn_id = ?", (CONN_ID,)
        )
        if rows:
            conn_type, host, port, login, schema, extra = rows[0]
            return {
                "conn_type": conn_type,
                "host": host,
                "port": port,
                "login": login,
                "schema": schema,
                "extra": json.loads(extra) if extra else None,
            }
        assert time.monotonic() < deadline, f"{CONN_ID} was not saved:\n{deployment.tail_logs()}"
        time.sleep(0.5)


def run_edit(deployment: AirflowDeployment, emulator: EmulatorProcess, output_dir: Path) -> None:
    """One edit through a DAG that names the saved connection (no AIRFLOW_CONN_* anywhere)."""
    (deployment.dags_folder / f"{DAG_ID}.py").write_text(
        DAG_FILE.format(
            dag_id=DAG_ID, conn_id=CONN_ID, image=emulator.sample_images[0], output_dir=str(output_dir)
        )
    )
    result = deployment.cli("dags", "test", DAG_ID, timeout=240, check=False)
    states = deployment.query("SELECT state FROM dag_run WHERE dag_id = ?", (DAG_ID,))
    log = f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    assert states == [("success",)], f"the run ended {states}:\n{log}"
    assert API_KEY not in without_masker_registration(result.stdout + result.stderr)


def test_connection_made_in_the_ui_runs_an_edit(
    ui_deployment: AirflowDeployment, chromium_executable: str, tmp_path: Path
) -> None:
    if not HAS_EXTRA_FIELDS and importlib.util.find_spec("wtforms") is None:
        unavailable("Airflow 3.0/3.1 apply a hook's form labels only with wtforms: pip install -e '.[test]'")
    deployment = ui_deployment
    assert not any(name.startswith("AIRFLOW_CONN_") for name in deployment.env)
    password = secrets.token_urlsafe(12)
    enable_ui_login(deployment, password)
    deployment.env["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
    emulator = start_emulator(
        deployment, "--keys", API_KEY, "--queued-seconds", "0.5", "--processing-seconds", "1"
    )
    deployment.cli("db", "migrate")
    start_api_server(deployment)
    deployment.wait_healthy(timeout=180, components=())

    label = f"airflow-{airflow.__version__}"
    with open_browser(chromium_executable, ARTIFACTS, label) as ui:
        sign_in(ui, deployment, password)
        dialog = open_add_form(ui)
        check_form(ui, dialog)
        if AIRFLOW_VERSION >= (3, 3):
            # The README shows the form as a user first sees it: placeholders, nothing typed yet.
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            dialog.screenshot(path=str(SCREENSHOT))
        with ui.step("fill"):
            dialog.get_by_label(RELABELING["host"]).fill(emulator.gateway_url)
            # Pasted with trailing spaces, as keys copied from a web page often are.
            dialog.get_by_label(RELABELING["password"]).fill(API_KEY + "  ")
        if HAS_EXTRA_FIELDS:
            check_extra_fields(ui, dialog)
        stored = save(ui, deployment, dialog)

    assert stored["conn_type"] == "firered"
    assert stored["host"] == emulator.gateway_url
    assert (stored["port"], stored["login"], stored["schema"]) == (None, None, None)
    if HAS_EXTRA_FIELDS:
        # The defect this test exists for: the form stores every blank extra as null.
        assert stored["extra"] == {extra.name: None for extra in EXTRAS}
    else:
        assert not stored["extra"]

    tested = deployment.cli("connections", "test", CONN_ID)
    assert "Connection success!" in tested.stdout + tested.stderr
    assert API_KEY not in without_masker_registration(tested.stdout + tested.stderr)
    assert emulator.control("GET", "submissions") == []

    output_dir = tmp_path / "edits"
    run_edit(deployment, emulator, output_dir)
    assert len(emulator.control("GET", "submissions")) == 1, "exactly one paid submit"
    outputs = [path for path in output_dir.rglob("*") if path.is_file()]
    assert len(outputs) == 1, outputs
