"""
Shared test setup: an isolated Airflow home, the emulator fixtures, a connection to it, and the tiers.

The tiers are markers (pyproject.toml): every test under ``tests/e2e`` is ``e2e`` (it starts real
Airflow processes), and the tests measured over 30 s are ``slow``. ``make test-fast`` leaves both out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

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

TESTS = Path(__file__).resolve().parent
#: Tests outside tests/e2e that start a real Airflow deployment too: marker ``e2e``.
E2E_ELSEWHERE = frozenset({"test_catalogue_cost_measures_three_nights"})
#: Tests whose call took over 30 s on a 2-core machine, on either Airflow (``pytest --durations=0``):
#: marker ``slow``. A shared fixture's setup is not counted: it moves to the next test. By function
#: name, so that a test keeps its mark wherever it moves. Every e2e test is slow too.
SLOW_TESTS = frozenset(
    {
        "test_airflow_dags_test_cli",
        "test_catalogue_batches_edit_every_sku_and_report_a_failed_one",
        "test_catalogue_rerun_reuses_unchanged_skus_and_reedits_a_changed_one",
        "test_the_catalogue_plans_a_night_then_spends_within_its_budget",
        "test_demo_edits_the_sample_catalogue_in_batches_then_reuses_it",
        "test_demo_with_a_key_uses_that_gateway_and_reports_a_failed_sku",
        "test_trigger_cost_compares_every_waiter_with_the_grid_floor",
    }
)
#: Tests of what only the newest Airflow's venv runs (``make demo`` and ``make bench`` use ``.venv``):
#: marker ``newest``; ``make test`` leaves them out on the oldest Airflow.
NEWEST_ONLY = frozenset(
    {
        "test_demo_edits_the_sample_catalogue_in_batches_then_reuses_it",
        "test_demo_with_a_key_uses_that_gateway_and_reports_a_failed_sku",
        "test_trigger_cost_compares_every_waiter_with_the_grid_floor",
    }
)


#: tests/unit needs no network and starts no server. These unit tests still start one (the emulator or
#: tests/hostile.py's server) and belong in tests/integration: the list only shrinks.
UNIT_TESTS_WITH_A_SERVER = frozenset(
    {
        "test_a_240_character_id_is_downloaded_end_to_end",
        "test_a_clear_collects_a_job_of_the_same_edit_that_is_still_running",
        "test_a_clear_submits_a_fresh_edit",
        "test_a_clear_submits_afresh_unless_the_same_edit_is_still_running",
        "test_a_deferrable_submit_refused_with_429_defers_on_a_timer",
        "test_a_huge_extra_fails_before_any_request",
        "test_a_key_refused_during_the_wait_is_retried_only_where_a_retry_resumes",
        "test_a_resumed_submit_past_its_deadline_fails_naming_the_429s",
        "test_a_retry_resumes_the_stored_request_without_posting",
        "test_a_stopped_batch_counts_its_jobs_names_a_few_and_points_to_the_manifest",
        "test_a_stopped_single_edit_says_its_job_runs_on_and_where_its_id_is",
        "test_a_stored_completed_request_is_collected_even_without_waiting",
        "test_a_stored_failed_request_fails_for_good_without_posting",
        "test_a_stored_request_that_cannot_be_resumed_is_replaced",
        "test_a_success_event_is_collected",
        "test_a_worker_submit_still_waits_out_429_in_the_hook",
        "test_an_edit_is_validated_once_however_often_it_is_sent",
        "test_heads_answered_before_the_deadline_are_kept",
        "test_no_head_is_sent_once_the_deadline_has_passed",
        "test_pasted_key_works_on_both_paths",
        "test_resubmission_counts_across_deferrals",
        "test_resubmission_counts_on_the_worker",
        "test_source_identities_come_from_head_answers",
        "test_the_head_phase_ends_at_its_deadline_against_a_silent_host",
        "test_the_sensor_defers_with_the_same_slack_as_the_operator",
        "test_without_a_deadline_every_head_is_awaited",
        "test_without_a_state_store_no_wait_posts_once_and_reads_nothing",
    }
)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Fail a unit test that listens on a socket or opens a network connection, loopback included."""
    name = getattr(request.node, "originalname", request.node.name)
    if TESTS / "unit" not in request.node.path.parents or name in UNIT_TESTS_WITH_A_SERVER:
        yield
        return
    seen: list[str] = []
    listen, connect = socket.socket.listen, socket.socket.connect

    def listening(sock: socket.socket, *args: Any) -> None:
        seen.append(f"listens on {sock.getsockname()}")
        listen(sock, *args)

    def connecting(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            seen.append(f"connects to {address}")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "listen", listening)
    monkeypatch.setattr(socket.socket, "connect", connecting)
    yield
    assert not seen, f"a unit test needs no network and starts no server, this one {seen}: move it"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tiers: ``e2e`` (real Airflow processes), ``slow`` (over 30 s) and ``newest``."""
    for item in items:
        name = getattr(item, "originalname", item.name)
        if TESTS / "e2e" in item.path.parents or name in E2E_ELSEWHERE:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.slow)
        elif name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if name in NEWEST_ONLY:
            item.add_marker(pytest.mark.newest)


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
