"""Shared test setup: an isolated Airflow home, the emulator fixtures, and a connection to it."""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

# Airflow reads its configuration at import: point it at a throwaway home before anything imports it.
_HOME = tempfile.mkdtemp(prefix="firered-tests-airflow-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME}/airflow.db"
# dag.test() (3.3) runs DAGs that live in a bundle: tests write their DAG files here.
DAGS_FOLDER = os.path.join(_HOME, "dags")
os.makedirs(DAGS_FOLDER, exist_ok=True)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = DAGS_FOLDER

pytest_plugins = ["tests.hostile"]

#: A recognisable key: tests scan logs, errors and recorded requests for it.
TEST_KEY = "sk-firered-TESTKEY-0123456789abcdef"
#: Fast retries so fault tests finish quickly, still exponential with jitter.
FAST_RETRY_EXTRAS: dict[str, Any] = {
    "retry_max_attempts": 4,
    "retry_initial_wait": 0.01,
    "retry_max_wait": 0.05,
    "retry_jitter": 0.01,
    "retry_max_retry_after": 0.5,
    "request_timeout": 5,
}


def conn_uri_json(host: str, key: str = TEST_KEY, **extra: Any) -> str:
    """The ``AIRFLOW_CONN_*`` JSON for a FireRed connection."""
    return json.dumps(
        {"conn_type": "firered", "host": host, "password": key, "extra": {**FAST_RETRY_EXTRAS, **extra}}
    )


@pytest.fixture
def firered_conn(firered_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point ``firered_default`` at a fresh emulator; yields the conn id."""
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(firered_emulator.gateway_url))
    return "firered_default"


def without_masker_registration(text: str) -> str:
    """
    Drop Airflow's own debug lines that echo a secret while registering it with the masker.

    Airflow 3.0's in-process ``dag.test()`` supervisor logs its ``MaskSecret(value=...)`` messages at
    debug level; those lines are Airflow telling its masker about the key, not a leak by the provider.
    """
    return "\n".join(line for line in text.splitlines() if "MaskSecret(" not in line)


def run_dag_source(dag_id: str, source: str) -> Any:
    """Write ``source`` as a DAG file into the dags folder, import it and run ``dag.test()``: the run."""
    path = Path(DAGS_FOLDER) / f"{dag_id}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"firered_test_dag_{dag_id}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag.test()
