"""Integration fixtures: an Airflow metadata database for ``dag.test()`` runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Migrate the sqlite database under the tests' AIRFLOW_HOME once per session."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW__CORE__UNIT_TEST_MODE"}
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
