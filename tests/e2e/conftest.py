"""Fixtures for the end-to-end tests: a real Airflow deployment on loopback, always torn down."""

from __future__ import annotations

import contextlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from firered_devtools.deployment import AirflowDeployment

from tests.e2e.browser import install_chromium

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"
#: DAGs that exist only for the end-to-end tests.
TEST_DAGS = Path(__file__).resolve().parent / "dags"

#: The e2e modules that also run on the oldest Airflow (marker ``oldest``), each because the provider or
#: Airflow takes another path there. ``make test`` runs the other e2e tests on the newest Airflow only:
#: what they check does not differ by version (test_postgres_triggerers_e2e: the handover is Airflow's,
#: and the trigger it moves takes the same path as test_catalogue_e2e's), or they need Airflow 3.3's
#: task_state_store and skip before it (test_load_e2e, test_worker_crash_e2e); each costs minutes.
DIFFERS_ON_OLDEST = {
    # A real triggerer on 3.0 refuses blocking calls on its event loop, and has no aget_connection
    # (3.1+): the hook reads the connection and masks the key in a worker thread there. dag.test()
    # runs triggers in its own process, so only a deployment shows that path.
    "test_catalogue_e2e": "the triggerer's connection read on 3.0",
    # 3.0/3.1 build the form from FireRedHook.get_ui_field_behaviour (labels only with wtforms);
    # 3.2+ from provider info's conn-fields, with a field per extra.
    "test_connection_form_browser": "the connection form of 3.0/3.1",
    # Airflow 3.0 has no external views, and its UI's sign-in never reaches the plugin's page.
    "test_contact_sheet_plugin_e2e": "the contact sheet plugin on 3.0",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``oldest`` the e2e tests whose behaviour differs on the oldest Airflow."""
    here = Path(__file__).resolve().parent
    for item in items:
        if item.path.parent == here and item.path.stem in DIFFERS_ON_OLDEST:
            item.add_marker(pytest.mark.oldest(DIFFERS_ON_OLDEST[item.path.stem]))


#: For the tests where a retry must resume the request it stored: that needs Airflow 3.3's task_state_store.
needs_task_state_store = pytest.mark.skipif(
    "not __import__('airflow').__version__.startswith('3.3')",
    reason="a retry resumes its stored request only with task_state_store (Airflow 3.3+)",
)


def _version_tuple(dist: str) -> tuple[int, ...]:
    try:
        text = version(dist)
    except PackageNotFoundError:
        return ()
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def deployment_skip_reason() -> str | None:
    """Why a real deployment cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        # Airflow's task supervisor detaches task processes into their own process groups; the
        # deployment finds them through /proc to guarantee that nothing is left running.
        return "the end-to-end deployment needs Linux /proc to track every process it starts"
    if _version_tuple("apache-airflow-core")[:2] == (3, 0) and _version_tuple("cadwyn") >= (6,):
        # Airflow 3.0's execution API answers the task runner's first call with HTTP 422 under
        # cadwyn 6+ (a newer release than Airflow 3.0 was built with), so no task can start.
        return (
            "Airflow 3.0 with cadwyn>=6 cannot start tasks (execution API HTTP 422); "
            "install it with cadwyn<6 and fastapi<0.117, as in Airflow 3.0's constraints"
        )
    return None


@contextlib.contextmanager
def running_deployment(home: Path, dags_folder: Path) -> Iterator[AirflowDeployment]:
    """An Airflow deployment serving ``dags_folder``; every process it started is stopped afterwards."""
    reason = deployment_skip_reason()
    if reason:
        pytest.skip(reason)
    airflow = AirflowDeployment(home=home, dags_folder=dags_folder)
    try:
        yield airflow
    finally:
        left = airflow.stop_all()
        assert not left, f"processes still running after the test: {left}"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[AirflowDeployment]:
    """A deployment serving ``example_dags``."""
    with running_deployment(tmp_path / "airflow-home", EXAMPLE_DAGS) as airflow:
        yield airflow


def unavailable(reason: str) -> None:
    """Skip a browser test that cannot run here, except in CI (``CI=true``), where it must run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"in CI the browser test must run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """The distribution's headless Chromium (installed when missing and running as root)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("Playwright is not installed: pip install -e '.[test]'")
    path, reason = install_chromium(timeout=420)
    if path is None:
        unavailable(reason)
    return str(path)
