"""
The throwaway PostgreSQL cluster of ``firered_devtools.postgres``: a real server on
127.0.0.1 that Airflow's drivers reach, gone after ``stop()``; and the deployment's read-only queries
on it.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import pytest
from firered_devtools import postgres as pg_module
from firered_devtools.deployment import AirflowDeployment, postgres_query
from firered_devtools.postgres import PostgresCluster, PostgresUnavailable

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    try:
        started = PostgresCluster(max_connections=50).start()
    except PostgresUnavailable as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"in CI the PostgreSQL tests must run: {err}")
        pytest.skip(str(err))
    try:
        yield started
    finally:
        started.stop()


def test_url_reaches_the_airflow_database(cluster: PostgresCluster) -> None:
    assert cluster.url.startswith(f"postgresql+psycopg2://airflow:{cluster.password}@127.0.0.1:")
    rows = postgres_query(
        cluster.url, "SELECT current_database(), current_setting('max_connections'), ?", ("x",)
    )
    assert rows == [("airflow", "50", "x")]


def test_listens_on_loopback_only(cluster: PostgresCluster) -> None:
    ((addresses,),) = postgres_query(cluster.url, "SELECT current_setting('listen_addresses')")
    assert addresses == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=5):
        pass


def test_a_wrong_password_is_refused(cluster: PostgresCluster) -> None:
    import psycopg2

    wrong = cluster.url.replace(cluster.password, "not-the-password")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        postgres_query(wrong, "SELECT 1")


def test_queries_are_read_only_and_keep_percent_literals(cluster: PostgresCluster) -> None:
    import psycopg2

    assert postgres_query(cluster.url, "SELECT 'a%b' LIKE ?", ("a%",)) == [(True,)]
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        postgres_query(cluster.url, "CREATE TABLE written (id int)")


def test_deployment_on_postgres_queries_through_psycopg2(cluster: PostgresCluster, tmp_path: Path) -> None:
    deployment = AirflowDeployment(home=tmp_path / "home", dags_folder=tmp_path / "dags")
    assert deployment.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    deployment.use_database(cluster.url)
    assert deployment.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == cluster.url
    assert deployment.query("SELECT ? + 1", (41,)) == [(42,)]
    assert not (tmp_path / "home" / "airflow.db").exists()


def test_stop_removes_the_server_and_its_files() -> None:
    try:
        cluster = PostgresCluster().start()
    except PostgresUnavailable as err:
        pytest.skip(str(err))
    root, port = cluster.root, cluster.port
    assert root is not None
    assert root.is_dir()
    cluster.stop()
    assert not root.exists()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    cluster.stop()  # a second stop is harmless


def test_missing_server_without_root_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_module, "find_server_bin", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PostgresUnavailable, match="'postgresql' package"):
        pg_module.ensure_server_bin()
