"""FireRedEditOperator through real Airflow (``dag.test()``) against the emulator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_provider_firered.emulator import Emulator
from airflow_provider_firered.operators.firered import FireRedOutputLink
from tests.conftest import DAGS_FOLDER, TEST_KEY, conn_uri_json, run_dag_source, without_masker_registration
from tests.hostile import Answer, HostileServer

pytestmark = pytest.mark.usefixtures("airflow_db")

V10 = "firered-image-edit"
V11 = "firered-image-edit-v1-1"


DAG_TEMPLATE = """
import json
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator

KWARGS = json.loads({kwargs!r})
if "retry_delay" in KWARGS:
    KWARGS["retry_delay"] = timedelta(seconds=KWARGS["retry_delay"])

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    FireRedEditOperator(task_id="edit", **KWARGS)
"""


def run_dag(dag_id: str, **operator_kwargs: Any) -> Any:
    """Write a one-task DAG file into the dags folder, run it with dag.test(); return (run, ti)."""
    run = run_dag_source(dag_id, DAG_TEMPLATE.format(kwargs=json.dumps(operator_kwargs), dag_id=dag_id))
    (ti,) = [t for t in run.get_task_instances() if t.task_id == "edit"]
    return run, ti


def in_log(text: str, out: str) -> bool:
    """Whether ``text`` is in ``out``, ignoring line wrapping (Airflow 3.0 draws tracebacks in boxes)."""
    return re.sub(r"[\s│]+", "", text) in re.sub(r"[\s│]+", "", out)


def xcom(ti: Any, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        value = (
            session.query(XComModel.value)
            .filter_by(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, key=key)
            .scalar()
        )
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@pytest.mark.parametrize("model", [V10, V11])
@pytest.mark.parametrize("deferrable", [True, False])
@pytest.mark.usefixtures("firered_conn")
def test_edit_with_outputs(firered_emulator: Emulator, tmp_path: Path, model: str, deferrable: bool) -> None:
    parameters = {"output_format": "png"} if model == V10 else {"num_images": 2, "output_format": "jpeg"}
    run, ti = run_dag(
        f"edit_{model}_{deferrable}".replace("-", "_"),
        prompt="Make the {{ 'background' }} red",
        images=firered_emulator.sample_images[:1],
        model=model,
        parameters=parameters,
        deferrable=deferrable,
        poll_interval=1,
        output_dir=str(tmp_path / "{{ ds }}"),
    )
    assert ti.state == "success", ti.state
    result = xcom(ti)
    assert set(result) == {"request_id", "model_id", "status", "media_urls", "media_type", "output_paths"}
    assert result["status"] == "COMPLETED"
    assert result["model_id"] == model
    assert len(result["media_urls"]) == len(result["output_paths"]) == parameters.get("num_images", 1)
    assert xcom(ti, "request_id") == result["request_id"]
    assert xcom(ti, FireRedOutputLink().xcom_key) == result["media_urls"][0]  # the extra link
    for index, path in enumerate(result["output_paths"]):
        assert Path(path).name == f"{result['request_id']}_{index}{'.png' if model == V10 else '.jpg'}"
        assert Path(path).parent.name == run.logical_date.strftime("%Y-%m-%d") if run.logical_date else True
        with Image.open(path) as img:
            assert img.format == ("PNG" if model == V10 else "JPEG")
    (post,) = firered_emulator.submissions()
    assert post.body["prompt"] == "Make the background red"


@pytest.mark.usefixtures("firered_conn")
def test_without_output_dir(firered_emulator: Emulator) -> None:
    _, ti = run_dag(
        "edit_no_output",
        prompt="blue",
        images=firered_emulator.sample_images[:1],
        deferrable=True,
        poll_interval=1,
    )
    result = xcom(ti)
    assert ti.state == "success"
    assert result["output_paths"] == []
    assert len(result["media_urls"]) == 1


@pytest.mark.usefixtures("firered_conn")
def test_waiting_starts_from_the_submit_answer(firered_emulator: Emulator) -> None:
    # The job is done long before the first poll: one status read is all the edit needs, none is
    # spent right after the submit on what its answer (QUEUED) already said.
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=0.05)
    _, ti = run_dag(
        "edit_first_status",
        prompt="x",
        images=firered_emulator.sample_images[:1],
        deferrable=False,
        poll_interval=1,
    )
    assert ti.state == "success"
    reads = [r for r in firered_emulator.requests if r.method == "GET" and "/status/" in r.path]
    assert len(reads) == 1
    assert reads[0].time - firered_emulator.submissions()[0].time >= 0.9


def test_a_submit_answer_that_says_completed_is_read_back(
    firered_emulator: Emulator, firered_conn: str
) -> None:
    from airflow_provider_firered.emulator import Fault
    from airflow_provider_firered.hooks.firered import FireRedHook

    done = FireRedHook(firered_conn).submit_edit(V11, "earlier", firered_emulator.sample_images[:1])
    deadline = time.monotonic() + 20
    while firered_emulator.job(done.request_id)["status"] != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    firered_emulator.inject(
        Fault(
            target="submit",
            kind="status",
            status_code=202,
            body={"request_id": done.request_id, "status": "COMPLETED"},
        )
    )
    before = len(firered_emulator.requests)
    _, ti = run_dag("edit_submit_says_completed", prompt="x", images=firered_emulator.sample_images[:1])
    assert ti.state == "success"
    assert xcom(ti)["media_urls"] == firered_emulator.job(done.request_id)["output"]["media_url"]
    status_reads = [
        r for r in firered_emulator.requests[before:] if r.method == "GET" and "/status/" in r.path
    ]
    assert len(status_reads) == 1  # read back once, not trusted blindly


@pytest.mark.usefixtures("firered_conn")
def test_no_wait(firered_emulator: Emulator) -> None:
    firered_emulator.set_timings(processing_seconds=30)
    _, ti = run_dag(
        "edit_no_wait", prompt="x", images=firered_emulator.sample_images[:1], wait_for_completion=False
    )
    result = xcom(ti)
    assert ti.state == "success"
    assert result["status"] == "QUEUED"
    assert result["media_urls"] == []
    (_post,) = firered_emulator.submissions()
    assert result["request_id"].startswith("firered-image-edit-v1-1_")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": "  "}, "prompt"),
        ({"images": []}, "images"),
        ({"images": ["file:///etc/passwd"]}, "images[0]"),
        ({"parameters": {"num_images": "{{ 2 }}"}}, "parameters.num_images"),
        ({"parameters": {"seed": 1}}, "parameters.seed"),
        ({"model": "other"}, "model"),
        ({"webhook_url": "http://hooks.test/x"}, "webhook_url"),
        ({"timeout": 0}, "timeout"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": 0.5}, "poll_interval"),
        ({"poll_interval": float("nan")}, "poll_interval"),
        ({"resubmit_on_error": -1}, "resubmit_on_error"),
        ({"resubmit_on_error": 11}, "resubmit_on_error"),
    ],
)
@pytest.mark.usefixtures("firered_conn")
def test_bad_input_fails_without_requests(
    firered_emulator: Emulator,
    kwargs: dict[str, Any],
    field: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    args: dict[str, Any] = {
        "prompt": "p",
        "images": firered_emulator.sample_images[:1],
        "retries": 3,
        **kwargs,
    }
    _, ti = run_dag("edit_bad_input", **args)
    assert ti.state == "failed"
    assert ti.try_number == 1  # AirflowFailException: no retries
    assert f"Invalid input: {field}:" in capfd.readouterr().out
    assert firered_emulator.requests == []


@pytest.mark.parametrize(("outcome", "text"), [("FAILED", "NSFW content"), ("ERROR", "GPU lost")])
@pytest.mark.parametrize("deferrable", [True, False])
@pytest.mark.usefixtures("firered_conn")
def test_job_failure_fails_the_task(
    firered_emulator: Emulator,
    outcome: str,
    text: str,
    deferrable: bool,
    capfd: pytest.CaptureFixture[str],
) -> None:
    firered_emulator.set_next_outcome(outcome, text)
    _, ti = run_dag(
        "edit_job_fails",
        prompt="x",
        images=firered_emulator.sample_images[:1],
        deferrable=deferrable,
        poll_interval=1,
    )
    out = capfd.readouterr().out
    assert ti.state == "failed"
    request_id = firered_emulator.submissions()[0]
    assert f"ended {outcome}: {text}" in out
    assert request_id


@pytest.mark.parametrize("deferrable", [True, False])
@pytest.mark.usefixtures("firered_conn")
def test_error_job_is_resubmitted_when_asked(
    firered_emulator: Emulator, deferrable: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    firered_emulator.set_next_outcome("ERROR", "GPU lost")
    _, ti = run_dag(
        "edit_resubmit",
        prompt="x",
        images=firered_emulator.sample_images[:1],
        deferrable=deferrable,
        poll_interval=1,
        resubmit_on_error=2,
    )
    assert ti.state == "success"
    first, second = (p.body["prompt"] for p in firered_emulator.submissions())
    assert first == second == "x"
    assert "ended ERROR (GPU lost), which the gateway does not charge: submitting the edit again" in (
        capfd.readouterr().out
    )
    assert xcom(ti, "request_id") == xcom(ti)["request_id"]  # the XCom names the request that finished


@pytest.mark.parametrize(
    ("outcome", "count", "resubmits", "posts"),
    [("ERROR", 2, 1, 2), ("FAILED", 1, 3, 1)],
    ids=["error-beyond-the-allowance", "failed-is-never-resubmitted"],
)
@pytest.mark.usefixtures("firered_conn")
def test_resubmission_limits(
    firered_emulator: Emulator, outcome: str, count: int, resubmits: int, posts: int
) -> None:
    firered_emulator.set_next_outcome(outcome, "broken", count=count)
    _, ti = run_dag(
        "edit_resubmit_limits",
        prompt="x",
        images=firered_emulator.sample_images[:1],
        deferrable=True,
        poll_interval=1,
        resubmit_on_error=resubmits,
    )
    assert ti.state == "failed"
    assert len(firered_emulator.submissions()) == posts


def test_gateway_402_fails_without_retries(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    with Emulator(balance=0).start() as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(emulator.gateway_url))
        _, ti = run_dag("edit_402", prompt="x", images=emulator.sample_images[:1], retries=2)
    assert ti.state == "failed"
    assert ti.try_number == 1
    out = without_masker_registration(capfd.readouterr().out)
    assert "HTTP 402" in out
    assert "Your wallet does not have enough balance." in out
    assert TEST_KEY not in out


@pytest.mark.usefixtures("firered_conn")
def test_timeout_names_the_request(firered_emulator: Emulator, capfd: pytest.CaptureFixture[str]) -> None:
    firered_emulator.set_timings(processing_seconds=30)
    _, ti = run_dag(
        "edit_timeout",
        prompt="x",
        images=firered_emulator.sample_images[:1],
        deferrable=True,
        poll_interval=1,
        timeout=0.5,
    )
    assert ti.state == "failed"
    (_post,) = firered_emulator.submissions()
    assert "did not finish within 0.5s" in capfd.readouterr().out


@pytest.mark.usefixtures("firered_conn")
def test_key_not_in_trigger_kwargs_or_logs(
    firered_emulator: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    _, ti = run_dag(
        "edit_secret",
        prompt="x",
        images=firered_emulator.sample_images[:1],
        deferrable=True,
        poll_interval=1,
    )
    assert ti.state == "success"
    out = capfd.readouterr()
    assert TEST_KEY not in without_masker_registration(out.out + out.err)
    assert TEST_KEY not in json.dumps(xcom(ti))
    assert firered_emulator.cdn_key_violations == []


@pytest.mark.skipif(
    "not __import__('airflow').__version__.startswith('3.3')", reason="task_state_store needs Airflow 3.3+"
)
@pytest.mark.parametrize(
    ("retry_delay", "path_taken"),
    [(0, "instead of posting again"), (3, "already COMPLETED: collecting it without posting again")],
    ids=["resume-running", "collect-completed"],
)
@pytest.mark.usefixtures("firered_conn")
def test_pay_once_retry_reuses_the_request(
    firered_emulator: Emulator,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    retry_delay: int,
    path_taken: str,
) -> None:
    # The first try times out before the job ends; the retry picks the same request up again.
    firered_emulator.set_timings(processing_seconds=2.0)
    _, ti = run_dag(
        f"edit_pay_once_{retry_delay}",
        prompt="x",
        images=firered_emulator.sample_images[:1],
        deferrable=True,
        poll_interval=1,
        timeout=0.8,
        # dag.test() counts the resume after a deferral as a try, so one real retry needs retries=2.
        retries=2,
        retry_delay=retry_delay,
        output_dir=str(tmp_path),
    )
    out = capfd.readouterr().out
    assert ti.state == "success"
    assert "did not finish within 0.8s" in out  # the first try did end on the timeout
    assert path_taken in out
    (post,) = firered_emulator.submissions()
    request_id = xcom(ti)["request_id"]
    assert xcom(ti, "request_id") == request_id  # pushed on the resuming try too
    assert post.path.startswith("/firered-image-edit-v1-1/")
    assert [p.name for p in tmp_path.iterdir()] == [f"{request_id}_0.png"]


@pytest.mark.parametrize("model", [V10, V11])
@pytest.mark.usefixtures("firered_conn")
def test_airflow_dags_test_cli(firered_emulator: Emulator, tmp_path: Path, model: str) -> None:
    # The acceptance run: `airflow dags test` defers, completes and leaves images behind.
    dag_id = f"cli_{model}".replace("-", "_")
    kwargs = {
        "prompt": "Make it green",
        "images": firered_emulator.sample_images[:2],
        "model": model,
        "deferrable": True,
        "poll_interval": 1,
        "output_dir": str(tmp_path),
    }
    (Path(DAGS_FOLDER) / f"{dag_id}.py").write_text(
        DAG_TEMPLATE.format(kwargs=json.dumps(kwargs), dag_id=dag_id)
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "dags", "test", dag_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "DEFERRED" in output.upper()
    (image,) = tmp_path.iterdir()
    with Image.open(image) as img:
        assert img.format == ("WEBP" if model == V10 else "PNG")
    assert TEST_KEY not in without_masker_registration(output)


FLAKY_XCOM_TEMPLATE = """
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator


class _PushFails:
    # The first try's task instance, whose XCom push of the request id fails (a database hiccup).
    def __init__(self, ti):
        self._ti = ti

    def __getattr__(self, name):
        return getattr(self._ti, name)

    def xcom_push(self, key, value):
        if key == "request_id":
            raise RuntimeError("XCom backend unavailable")
        return self._ti.xcom_push(key, value)


class FlakyXComEdit(FireRedEditOperator):
    def execute(self, context):
        if context["ti"].try_number == 1:
            context["ti"] = _PushFails(context["ti"])
        return super().execute(context)


with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    FlakyXComEdit(
        task_id="edit",
        prompt="x",
        images={images!r},
        deferrable=False,
        poll_interval=1,
        retries=2,
        retry_delay=timedelta(seconds=0),
    )
"""


@pytest.mark.skipif(
    "not __import__('airflow').__version__.startswith('3.3')", reason="task_state_store needs Airflow 3.3+"
)
@pytest.mark.usefixtures("firered_conn")
def test_failed_xcom_push_after_submit_still_resumes(
    firered_emulator: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    # The request id is kept in task_state_store before the XCom push: the push failing after the
    # paid submit leaves a request the retry finds and resumes, with no second POST.
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=1.5)
    dag_id = "edit_xcom_push_fails"
    run = run_dag_source(
        dag_id, FLAKY_XCOM_TEMPLATE.format(dag_id=dag_id, images=firered_emulator.sample_images[:1])
    )
    (ti,) = run.get_task_instances()
    out = capfd.readouterr().out
    assert "XCom backend unavailable" in out  # the first try did fail on the push
    assert ti.state == "success"
    assert ti.try_number == 2
    (post,) = firered_emulator.submit_attempts()
    assert post.status == 202
    assert "instead of posting again" in out or "without posting again" in out
    assert xcom(ti, "request_id") == xcom(ti)["request_id"]


@pytest.mark.parametrize(
    ("url", "link"),
    [
        ("https://cdn.test/out.png", "https://cdn.test/out.png"),
        ("http://127.0.0.1:8080/v1/x/output.png", "http://127.0.0.1:8080/v1/x/output.png"),
        ("javascript:alert(document.cookie)", ""),
        ("JaVaScRiPt:alert(1)", ""),
        ("data:text/html,<script>alert(1)</script>", ""),
        ("file:///etc/passwd", ""),
        ("file://localhost/x", ""),
        ("ftp://cdn.test/out.png", ""),
        ("https:///no-host", ""),
        ("https://cdn.test/a b", ""),
        ("\x00https://cdn.test/out.png", ""),
        ("", ""),
        (None, ""),
        (["https://cdn.test/out.png"], ""),
    ],
)
def test_output_link_is_http_or_https_only(url: Any, link: str) -> None:
    from airflow_provider_firered.operators.links import web_link

    assert web_link(url) == link


STORED_LINK_TEMPLATE = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered import FireRedEditOperator, FireRedOutputLink


class StoredLinkEdit(FireRedEditOperator):
    # Stands for a link value written by anything but this version's checks (an older provider).
    def execute(self, context):
        context["ti"].xcom_push(key=FireRedOutputLink().xcom_key, value={url!r})
        return None


with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    StoredLinkEdit(task_id="edit", prompt="x", images=["https://images.test/in.png"])
"""


@pytest.mark.parametrize(
    ("url", "link"),
    [("javascript:alert(document.cookie)", ""), ("https://cdn.test/out.png", "https://cdn.test/out.png")],
    ids=["javascript", "https"],
)
def test_output_link_shown_by_airflow_is_http_or_https_only(url: str, link: str) -> None:
    # Airflow stores what get_link returns as the link the UI shows, when the task ends.
    dag_id = f"edit_stored_link_{url.split(':', 1)[0]}"
    (ti,) = run_dag_source(dag_id, STORED_LINK_TEMPLATE.format(dag_id=dag_id, url=url)).get_task_instances()
    assert ti.state == "success"
    assert xcom(ti, FireRedOutputLink().xcom_key) == link


ROTATED_KEY = "sk-firered-ROTATED-fedcba9876543210"


@pytest.mark.usefixtures("firered_conn")
def test_key_refused_during_a_wait_resumes_on_retry(
    firered_emulator: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    # The key is rotated at the gateway during the wait, and in the connection only after the wait
    # gave up: the retry resumes the same request with the new key, without a second POST.
    has_store = __import__("airflow").__version__.startswith("3.3")
    firered_emulator.keys = {TEST_KEY}
    # Long enough that the job still runs when the key is rotated, on a loaded machine too.
    firered_emulator.set_timings(queued_seconds=0, processing_seconds=10)
    done = threading.Event()

    def status_codes() -> list[int]:
        return [r.status for r in firered_emulator.requests if "/status/" in r.path]

    def rotate() -> None:
        deadline = time.monotonic() + 30
        while 200 not in status_codes():
            if done.wait(0.02) or time.monotonic() > deadline:
                return
        firered_emulator.keys = {ROTATED_KEY}
        while status_codes().count(401) < 2:
            if done.wait(0.02) or time.monotonic() > deadline:
                return
        os.environ["AIRFLOW_CONN_FIRERED_DEFAULT"] = conn_uri_json(firered_emulator.gateway_url, ROTATED_KEY)

    rotator = threading.Thread(target=rotate, daemon=True)
    rotator.start()
    try:
        _, ti = run_dag(
            "edit_key_rotated",
            prompt="x",
            images=firered_emulator.sample_images[:1],
            deferrable=True,
            poll_interval=1,
            retries=2,
            retry_delay=1,
        )
    finally:
        done.set()
        rotator.join(5)
    out = capfd.readouterr().out
    (_post,) = firered_emulator.submit_attempts()  # never posted twice
    assert in_log("was refused again after the connection was looked up afresh", out)
    assert TEST_KEY not in without_masker_registration(out)
    assert ROTATED_KEY not in without_masker_registration(out)
    if has_store:
        assert ti.state == "success"
        assert "instead of posting again" in out
        assert xcom(ti)["request_id"] == xcom(ti, "request_id")
    else:
        # No task_state_store: a retry would post the edit again, so the task fails for good.
        assert ti.state == "failed"
        assert in_log("a retry would submit the edit again: not retried", out)


@pytest.mark.parametrize(("parameters", "listed"), [({}, 2), ({"num_images": 2}, 3)])
def test_more_outputs_than_the_edit_asked_for_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, parameters: dict[str, Any], listed: int
) -> None:
    # A COMPLETED answer listing more media URLs than num_images (else 1): nothing is downloaded.
    hostile = HostileServer().start()
    request_id = "firered-image-edit-v1-1_0123456789abcdef"
    json_type = {"Content-Type": "application/json"}
    hostile.route(
        "/firered-image-edit-v1-1/",
        Answer(202, json_type, json.dumps({"request_id": request_id, "status": "QUEUED"}).encode()),
    )
    status = {
        "request_id": request_id,
        "status": "COMPLETED",
        "model_id": V11,
        "output": {
            "media_url": [f"{hostile.url}/media/{index}.png" for index in range(listed)],
            "media_type": "image/png",
        },
    }
    hostile.route("/v2/requests/status/", Answer(200, json_type, json.dumps(status).encode()))
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(hostile.url))
    try:
        _, ti = run_dag(
            f"edit_too_many_outputs_{listed}",
            prompt="x",
            images=["https://images.test/in.png"],
            parameters=parameters,
            poll_interval=1,
            output_dir=str(tmp_path),
            retries=2,
            retry_delay=0,
        )
    finally:
        hostile.stop()
    assert ti.state == "failed"
    assert ti.try_number == 1  # the same answer would be read again: no retry
    assert hostile.posts() == 1
    assert not [s for s in hostile.seen if s.path.startswith("/media/")]
    assert list(tmp_path.iterdir()) == []


# -- a saturated gateway: the submit waits in the triggerer, not on the worker -----------------------


def saturate(emulator: Emulator) -> None:
    """Fill the gateway's one job slot with another client's long job (the task's own job is short)."""
    from airflow_provider_firered.hooks.firered import FireRedHook

    emulator.max_concurrent_jobs = 1
    emulator.set_timings(queued_seconds=0, processing_seconds=600)
    FireRedHook().submit_edit(V11, "another client's edit", emulator.sample_images[:1])
    emulator.set_timings(processing_seconds=0.5)


def free_capacity_after_the_first_refusal(emulator: Emulator, prompt: str) -> threading.Thread:
    """
    Once the gateway has refused the task (429), let it take one more job a second later, as when
    the other client's job ends. The task's start takes a varying time: this does not race with it.
    """

    def watch() -> None:
        for _ in range(1200):  # at most about 120 s
            if any(r.status == 429 and r.body["prompt"] == prompt for r in emulator.submit_attempts()):
                time.sleep(1)
                emulator.max_concurrent_jobs = 2
                return
            time.sleep(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("firered_conn")
def test_a_saturated_gateway_defers_the_submit_and_the_same_try_succeeds(
    firered_emulator: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    saturate(firered_emulator)
    watcher = free_capacity_after_the_first_refusal(firered_emulator, "Make it teal")
    _, ti = run_dag(
        "edit_saturated",
        prompt="Make it teal",
        images=firered_emulator.sample_images[:1],
        deferrable=True,
        poll_interval=1,
        timeout=120,
        retries=0,
    )
    watcher.join(timeout=1)
    out = capfd.readouterr().out
    assert ti.state == "success"
    assert ti.try_number == 1
    ours = [r for r in firered_emulator.submit_attempts() if r.body["prompt"] == "Make it teal"]
    assert [r.status for r in ours if r.status != 429] == [202]  # paid once
    assert any(r.status == 429 for r in ours)  # the gateway did refuse the task at first
    assert in_log("The gateway is saturated (HTTP 429 to submit #1", out)
    assert in_log("Deferring", out)
    assert xcom(ti)["status"] == "COMPLETED"


@pytest.mark.usefixtures("firered_conn")
def test_a_saturated_submit_gives_up_at_the_timeout(
    firered_emulator: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    saturate(firered_emulator)
    _, ti = run_dag(
        "edit_saturated_timeout",
        prompt="Make it teal",
        images=firered_emulator.sample_images[:1],
        deferrable=True,
        poll_interval=1,
        timeout=2,
        retries=0,
    )
    out = capfd.readouterr().out
    assert ti.state == "failed"
    ours = [r for r in firered_emulator.submit_attempts() if r.body["prompt"] == "Make it teal"]
    assert len(ours) >= 2
    assert all(r.status == 429 for r in ours)  # nothing accepted, nothing paid
    assert in_log("answered HTTP 429 (saturated: too many jobs at once) to all 2 submits", out)
