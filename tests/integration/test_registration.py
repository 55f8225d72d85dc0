"""The provider as Airflow's CLI sees it: registration, the connection type, and a key check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import airflow
import pytest

from airflow_provider_firered.emulator import Emulator
from airflow_provider_firered.gateway.connection_extras import EXTRAS, PLACEHOLDERS, RELABELING
from tests.conftest import TEST_KEY

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-cli")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
    }
    env.pop("AIRFLOW_CONN_FIRERED_DEFAULT", None)
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    run(["db", "migrate"], env)
    return env


def run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_provider_and_connection_type_are_registered(airflow_env: dict[str, str]) -> None:
    assert "airflow-provider-firered" in run(["providers", "list"], airflow_env)
    hooks = run(["providers", "hooks"], airflow_env)
    assert "airflow_provider_firered.hooks.firered.FireRedHook" in hooks
    assert "firered" in hooks


def test_cli_connection_add_and_test(airflow_env: dict[str, str]) -> None:
    with Emulator().start() as emulator:
        run(
            [
                "connections",
                "add",
                "my_firered",
                "--conn-type",
                "firered",
                "--conn-host",
                emulator.gateway_url,
                "--conn-password",
                TEST_KEY,
            ],
            airflow_env,
        )
        output = run(["connections", "test", "my_firered"], airflow_env)
        assert "Connection success!" in output
        assert TEST_KEY not in output
        assert emulator.submit_attempts() == []


#: What Airflow's providers manager makes of the provider: the connection form the UI is built from and
#: the trigger modules it registers.
PROBE = """
import json
from airflow.providers_manager import ProvidersManager
manager = ProvidersManager()
prefix = "extra__firered__"
widgets = [key[len(prefix):] for key in manager.connection_form_widgets if key.startswith(prefix)]
triggers = [t.trigger_class_name for t in manager.trigger if t.package_name == "airflow-provider-firered"]
behaviour = manager.field_behaviours.get("firered")
print(json.dumps({"behaviour": behaviour, "widgets": widgets, "triggers": triggers}))
"""


def test_airflow_builds_the_form_and_registers_the_triggers(airflow_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=airflow_env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    form = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(form["triggers"]) == [
        "airflow_provider_firered.triggers.firered",
        "airflow_provider_firered.triggers.firered_batch",
    ]
    behaviour = form["behaviour"]
    assert behaviour is not None, "Airflow applied no form behaviour to the firered type"
    assert behaviour["hidden_fields"] == ["schema", "port", "login"]
    assert behaviour["relabeling"] == RELABELING
    assert behaviour["placeholders"]["host"] == PLACEHOLDERS["host"]
    assert behaviour["placeholders"]["password"] == PLACEHOLDERS["password"]
    if tuple(int(p) for p in airflow.__version__.split(".")[:2]) >= (3, 2):
        # Every extra a user may set is a form field (from provider info's conn-fields).
        assert sorted(form["widgets"]) == sorted(extra.name for extra in EXTRAS)


def test_cli_connection_with_blank_extras_as_the_ui_saves_it(airflow_env: dict[str, str]) -> None:
    blank = json.dumps({extra.name: None for extra in EXTRAS})
    with Emulator(keys=[TEST_KEY]).start() as emulator:
        run(
            [
                "connections",
                "add",
                "firered_blank_extras",
                "--conn-type",
                "firered",
                "--conn-host",
                emulator.gateway_url,
                "--conn-password",
                TEST_KEY,
                "--conn-extra",
                blank,
            ],
            airflow_env,
        )
        output = run(["connections", "test", "firered_blank_extras"], airflow_env)
        assert "Connection success!" in output
        assert TEST_KEY not in output
        assert emulator.submit_attempts() == []
