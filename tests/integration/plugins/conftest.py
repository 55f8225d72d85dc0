"""
The plugin's app on a real Airflow metadata database: batches run with ``dag.test()``, then read.

One DAG runs once per module: a batch (three SKUs edited by the emulator, one refused as invalid), a
mapped batch (two task instances, each with its own output root), a batch that fails (no return
value: its sheet comes from its rendered ``output_root``) and a scratch batch whose manifest tests
rewrite. The app is mounted as the api-server mounts it, under ``/firered`` on an app whose auth
manager is a real one: :class:`~tests.integration.plugins.auth_manager.OneDagDeniedAuthManager`
(the simple auth manager, except that one user may not read this DAG).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import conn_uri_json, run_dag_source
from tests.integration.plugins.auth_manager import DENIED_DAGS_VAR, OUTSIDER

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from fastapi.testclient import TestClient

    from airflow_provider_firered.emulator import Emulator

DAG_ID = "firered_contact_sheet"
AUTH_MANAGER = "tests.integration.plugins.auth_manager.OneDagDeniedAuthManager"

DAG_SOURCE = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

COMMON = {{"poll_interval": 1, "deferrable": False}}

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    FireRedBatchEditOperator(task_id="batch", edits={edits!r}, output_root={root!r}, max_failed=1, **COMMON)
    FireRedBatchEditOperator.partial(task_id="mapped", **COMMON).expand_kwargs({mapped!r})
    FireRedBatchEditOperator(task_id="failing", edits={invalid!r}, output_root={failing!r}, **COMMON)
    FireRedBatchEditOperator(
        task_id="scratch", edits={invalid!r}, output_root={scratch!r}, max_failed=1, **COMMON
    )
"""


@dataclass
class BatchRun:
    """The module's DAG run: its ids and each task's output root."""

    run_id: str
    roots: dict[str, Path]
    sample_image: str

    def root(self, task_id: str) -> Path:
        return self.roots[task_id]


def edit(key: str, image: str, prompt: str | None = None) -> dict[str, Any]:
    """One item; a blank ``prompt`` makes it invalid (refused before anything is sent)."""
    text = f"A white studio background for {key}" if prompt is None else prompt
    return {"key": key, "prompt": text, "images": [image]}


@pytest.fixture(scope="module")
def batch_run(
    airflow_db: None,  # noqa: ARG001  the metadata database, migrated
    firered_emulator_session: Emulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> BatchRun:
    """Run the module's DAG once against the emulator; its task instances stay in the database."""
    emulator = firered_emulator_session
    emulator.reset()
    emulator.set_timings(queued_seconds=0.1, processing_seconds=0.2)
    base = tmp_path_factory.mktemp("contact-sheet")
    image = emulator.sample_images[0]
    roots = {name: base / name for name in ("batch", "mapped-0", "mapped-1", "failing", "scratch")}
    source = DAG_SOURCE.format(
        dag_id=DAG_ID,
        edits=[*(edit(f"SKU-{n}", image) for n in (1, 2, 3)), edit("SKU-BAD", image, prompt=" ")],
        root=str(roots["batch"]),
        mapped=[
            {"edits": [edit("MAP-A", image)], "output_root": str(roots["mapped-0"])},
            {"edits": [edit("MAP-B", image)], "output_root": str(roots["mapped-1"])},
        ],
        invalid=[edit("NOPE", image, prompt=" ")],
        failing=str(roots["failing"]),
        scratch=str(roots["scratch"]),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(emulator.gateway_url))
        run = run_dag_source(DAG_ID, source)
    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert states == {
        ("batch", -1): "success",
        ("mapped", 0): "success",
        ("mapped", 1): "success",
        ("failing", -1): "failed",
        ("scratch", -1): "success",
    }, states
    return BatchRun(run_id=run.run_id, roots=roots, sample_image=image)


@dataclass
class Api:
    """The app as the api-server serves it, and a token per user."""

    client: TestClient
    tokens: dict[str, str]

    def headers(self, user: str | None = "reader") -> dict[str, str]:
        return {} if user is None else {"Authorization": f"Bearer {self.tokens[user]}"}

    def get(self, url: str, user: str | None = "reader", **kwargs: Any) -> Any:
        headers = {**self.headers(user), **kwargs.pop("headers", {})}
        return self.client.get(url, headers=headers, follow_redirects=False, **kwargs)


def _auth_manager_state() -> tuple[Any, str]:
    """Where this Airflow keeps its auth manager singleton: (holder, attribute)."""
    import airflow.api_fastapi.app as api_app

    holder = getattr(api_app, "_AuthManagerState", None)  # 3.1+
    return (holder, "instance") if holder is not None else (api_app, "auth_manager")


@pytest.fixture(scope="module")
def api(batch_run: BatchRun) -> Iterator[Api]:  # noqa: ARG001  the runs the app reads
    """Mount the plugin's app under /firered beside a real auth manager; tokens for two users."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__CORE__AUTH_MANAGER", AUTH_MANAGER)
        patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_hex(32))
        # Airflow 3.0 signs tokens with an issuer that newer PyJWT requires to be a string.
        patch.setenv("AIRFLOW__API_AUTH__JWT_ISSUER", "airflow")
        patch.setenv(DENIED_DAGS_VAR, DAG_ID)
        from airflow.api_fastapi.app import init_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        from airflow_provider_firered.plugins.app import SHEETS
        from airflow_provider_firered.plugins.firered import contact_sheet_app
        from airflow_provider_firered.plugins.links import URL_PREFIX

        holder, attribute = _auth_manager_state()
        before = getattr(holder, attribute)
        root = FastAPI()
        manager = init_auth_manager(root)
        root.mount(URL_PREFIX, contact_sheet_app)  # as the api-server mounts the plugin's app
        tokens = {
            user: manager.generate_jwt(SimpleAuthManagerUser(username=user, role="viewer"))
            for user in ("reader", OUTSIDER)
        }
        try:
            with TestClient(root) as client:
                yield Api(client, tokens)
        finally:
            SHEETS.clear()
            setattr(holder, attribute, before)


def xcom_value(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
    """The return value a task instance left in the database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key == "return_value",
            )
        )
    return json.loads(value) if isinstance(value, str) else value
