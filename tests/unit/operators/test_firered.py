"""
The operator's branches, fast: ``execute`` and ``execute_complete`` called directly, without
``dag.test()``, against a gateway on loopback (``tests.hostile``) that counts the POSTs.

Airflow's side of a try (its task instance's XCom, ``task_state_store``) is a small in-memory stand-in;
the gateway side is real HTTP.
"""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException, TaskDeferred

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedJobEndedError,
    FireRedJobErroredError,
    FireRedJobFailedError,
)
from airflow_provider_firered.operators.firered import (
    REQUEST_ID_STATE_KEY,
    REQUEST_ID_XCOM_KEY,
    RESUBMISSIONS_XCOM_KEY,
    SATURATION_XCOM_KEY,
    FireRedEditOperator,
)
from airflow_provider_firered.sensors.firered import FireRedStatusSensor
from airflow_provider_firered.triggers.firered import FireRedStatusTrigger
from airflow_provider_firered.triggers.polling import DEFER_SLACK
from tests.conftest import conn_uri_json
from tests.hostile import Answer, HostileServer, Seen, serving

if TYPE_CHECKING:
    from collections.abc import Iterator

V11 = "firered-image-edit-v1-1"
JSON = {"Content-Type": "application/json"}


def rid(number: int) -> str:
    return f"{V11}_{number:016x}"


class Gateway:
    """
    A gateway whose n-th submit is answered with ``submits[n]`` as its status (then ``QUEUED``), and
    whose status reads answer ``statuses[request_id]`` (404 for an id it does not know).
    """

    def __init__(self, server: HostileServer, submits: list[str] | None = None) -> None:
        self.server = server
        self.submits = list(submits or [])
        self.statuses: dict[str, str] = {}
        self._ids = itertools.count(100)
        server.route(f"/{V11}/", self._submit)
        server.route("/v2/requests/status/", self._status)

    def _submit(self, _seen: Seen) -> Answer:
        request_id = rid(next(self._ids))
        status = self.submits.pop(0) if self.submits else "QUEUED"
        self.statuses[request_id] = status
        return Answer(202, JSON, json.dumps({"request_id": request_id, "status": status}).encode())

    def _status(self, seen: Seen) -> Answer:
        request_id = seen.path.rsplit("/", 1)[-1]
        if request_id not in self.statuses:
            return Answer(404, JSON, json.dumps({"error": "Not Found", "message": "unknown"}).encode())
        status = self.statuses[request_id]
        body: dict[str, Any] = {"request_id": request_id, "status": status, "model_id": V11}
        if status == "COMPLETED":
            body["output"] = {
                "media_url": [f"{self.server.url}/media/{request_id}.png"],
                "media_type": "image/png",
            }
        if status in ("FAILED", "ERROR"):
            body["error"] = "went wrong"
        return Answer(200, JSON, json.dumps(body).encode())

    def status_reads(self) -> int:
        return sum(1 for s in self.server.seen if s.path.startswith("/v2/requests/status/"))


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    with serving() as server:
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(server.url))
        yield Gateway(server)


class TaskInstance:
    """What the operator uses of Airflow's task instance: its XCom, within one try."""

    def __init__(self, max_tries: int = 3) -> None:
        self.task_id = "edit"
        self.map_index = -1
        self.max_tries = max_tries
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    # Called with Airflow's keyword arguments; XComs here are told apart by key alone.
    def xcom_pull(self, task_ids: str, map_indexes: int, key: str) -> Any:  # noqa: ARG002
        return self.xcom.get(key)


class StateStore(dict[str, Any]):
    """Airflow 3.3's ``task_state_store``: what a try leaves for the next."""

    def set(self, key: str, value: Any) -> None:
        self[key] = value


def context(ti: TaskInstance, store: StateStore | None) -> Any:
    return cast("Any", {"ti": ti, "task_state_store": store})


def edit(**kwargs: Any) -> FireRedEditOperator:
    args: dict[str, Any] = {"prompt": "x", "images": ["https://images.test/in.png"], "poll_interval": 1}
    return FireRedEditOperator(task_id="edit", **{**args, **kwargs})


# -- a retry resumes, a clear submits afresh ---------------------------------------------------------


def test_a_retry_resumes_the_stored_request_without_posting(gateway: Gateway) -> None:
    gateway.statuses[rid(1)] = "PROCESSING"
    ti, store = (
        TaskInstance(max_tries=3),
        StateStore({REQUEST_ID_STATE_KEY: {"request_id": rid(1), "max_tries": 3}}),
    )
    with pytest.raises(TaskDeferred) as deferred:
        edit(deferrable=True, timeout=30).execute(context(ti, store))
    assert gateway.server.posts() == 0
    trigger = deferred.value.trigger
    assert isinstance(trigger, FireRedStatusTrigger)
    assert trigger.request_id == rid(1)
    assert ti.xcom[REQUEST_ID_XCOM_KEY] == rid(1)
    assert deferred.value.timeout == timedelta(seconds=30 + DEFER_SLACK)


def test_a_clear_submits_a_fresh_edit(gateway: Gateway) -> None:
    # max_tries changes only when the task is cleared: the stored request belongs to the run before.
    gateway.statuses[rid(1)] = "PROCESSING"
    ti, store = (
        TaskInstance(max_tries=6),
        StateStore({REQUEST_ID_STATE_KEY: {"request_id": rid(1), "max_tries": 3}}),
    )
    with pytest.raises(TaskDeferred) as deferred:
        edit(deferrable=True).execute(context(ti, store))
    assert gateway.server.posts() == 1
    assert gateway.status_reads() == 0  # the stored request is not even read
    new = cast("FireRedStatusTrigger", deferred.value.trigger).request_id
    assert new != rid(1)
    assert store[REQUEST_ID_STATE_KEY]["request_id"] == new
    assert store[REQUEST_ID_STATE_KEY]["max_tries"] == 6
    assert ti.xcom[REQUEST_ID_XCOM_KEY] == new


def stored_after_a_stop(operator: FireRedEditOperator, request_id: str, **changes: Any) -> StateStore:
    """What a try of ``operator`` stored before a user stopped it (``changes``: then the DAG changed)."""
    fingerprint = operator._edit_fingerprint()
    if changes:
        fingerprint = edit(wait_for_completion=operator.wait_for_completion, **changes)._edit_fingerprint()
    return StateStore({REQUEST_ID_STATE_KEY: {"request_id": request_id, "max_tries": 3, "edit": fingerprint}})


def test_a_clear_collects_a_job_of_the_same_edit_that_is_still_running(gateway: Gateway) -> None:
    # A user marked the deferred task failed (the job ran on: no cancel endpoint), then cleared it.
    gateway.statuses[rid(1)] = "PROCESSING"
    operator = edit(deferrable=True)
    store = stored_after_a_stop(operator, rid(1))
    ti = TaskInstance(max_tries=6)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context(ti, store))
    assert gateway.server.posts() == 0  # not paid again
    assert cast("FireRedStatusTrigger", deferred.value.trigger).request_id == rid(1)
    assert ti.xcom[REQUEST_ID_XCOM_KEY] == rid(1)


@pytest.mark.parametrize(
    ("status", "changes"),
    [("COMPLETED", {}), ("ERROR", {}), ("PROCESSING", {"prompt": "another prompt"})],
    ids=["job-ended", "job-errored", "edit-changed"],
)
def test_a_clear_submits_afresh_unless_the_same_edit_is_still_running(
    gateway: Gateway, status: str, changes: dict[str, Any]
) -> None:
    gateway.statuses[rid(1)] = status
    operator = edit(wait_for_completion=False)
    store = stored_after_a_stop(operator, rid(1), **changes)
    result = operator.execute(context(TaskInstance(max_tries=6), store))
    assert gateway.server.posts() == 1
    assert result["request_id"] != rid(1)


def test_a_stored_failed_request_fails_for_good_without_posting(gateway: Gateway) -> None:
    gateway.statuses[rid(1)] = "FAILED"
    store = StateStore({REQUEST_ID_STATE_KEY: {"request_id": rid(1), "max_tries": 3}})
    with pytest.raises(FireRedJobFailedError, match=f"FireRed job {rid(1)} ended FAILED") as info:
        edit().execute(context(TaskInstance(), store))
    assert isinstance(info.value, AirflowFailException)
    assert gateway.server.posts() == 0


def test_a_stored_completed_request_is_collected_even_without_waiting(gateway: Gateway) -> None:
    gateway.statuses[rid(1)] = "COMPLETED"
    store = StateStore({REQUEST_ID_STATE_KEY: {"request_id": rid(1), "max_tries": 3}})
    result = edit(wait_for_completion=False).execute(context(TaskInstance(), store))
    assert (result["request_id"], result["status"]) == (rid(1), "COMPLETED")
    assert gateway.server.posts() == 0


@pytest.mark.parametrize(
    ("stored_status", "posts"), [("ERROR", 1), (None, 1)], ids=["ended-error", "unknown"]
)
def test_a_stored_request_that_cannot_be_resumed_is_replaced(
    gateway: Gateway, stored_status: str | None, posts: int
) -> None:
    if stored_status:
        gateway.statuses[rid(1)] = stored_status  # else the gateway answers 404
    store = StateStore({REQUEST_ID_STATE_KEY: {"request_id": rid(1), "max_tries": 3}})
    result = edit(wait_for_completion=False).execute(context(TaskInstance(), store))
    assert gateway.server.posts() == posts
    assert result["request_id"] != rid(1)


def test_without_a_state_store_no_wait_posts_once_and_reads_nothing(gateway: Gateway) -> None:
    result = edit(wait_for_completion=False).execute(context(TaskInstance(), None))
    assert result["status"] == "QUEUED"
    assert (gateway.server.posts(), gateway.status_reads()) == (1, 0)


# -- a saturated gateway (429) -----------------------------------------------------------------------


def refuse_submits(gateway: Gateway, count: int, retry_after: str = "30") -> None:
    """The gateway answers the first ``count`` submits ``429`` (saturated), then takes them."""
    left = [count]
    accept = gateway._submit

    def submit(seen: Seen) -> Answer:
        if left[0] > 0:
            left[0] -= 1
            body = json.dumps({"error": "Too Many Requests", "message": "Too many concurrent jobs."})
            return Answer(429, {**JSON, "Retry-After": retry_after}, body.encode())
        return accept(seen)

    gateway.server.route(f"/{V11}/", submit)


def test_a_deferrable_submit_refused_with_429_defers_on_a_timer(gateway: Gateway) -> None:
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger

    refuse_submits(gateway, 1)
    ti, store = TaskInstance(), StateStore()
    operator = edit(deferrable=True, timeout=600)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context(ti, store))
    assert gateway.server.posts() == 1  # the hook did not sit through Retry-After on the worker
    assert isinstance(deferred.value.trigger, DateTimeTrigger)
    assert deferred.value.method_name == "execute_after_saturation"
    kwargs = deferred.value.kwargs or {}
    assert kwargs["refusals"] == 1
    assert ti.xcom[SATURATION_XCOM_KEY] == {"deadline": kwargs["saturation_deadline"], "refusals": 1}
    assert REQUEST_ID_STATE_KEY not in store  # a 429 created no job: nothing to resume
    # Resumed: the same try submits again and goes on to wait for the job.
    with pytest.raises(TaskDeferred) as waiting:
        operator.execute_after_saturation(context(ti, store), {"ignored": True}, **kwargs)
    assert gateway.server.posts() == 2
    job = cast("FireRedStatusTrigger", waiting.value.trigger).request_id
    assert store[REQUEST_ID_STATE_KEY]["request_id"] == job == ti.xcom[REQUEST_ID_XCOM_KEY]


def test_a_resumed_submit_past_its_deadline_fails_naming_the_429s(gateway: Gateway) -> None:
    refuse_submits(gateway, 5)
    ti = TaskInstance()
    with pytest.raises(FireRedApiError, match=r"HTTP 429 .* to all 3 submits of this edit") as info:
        edit(deferrable=True, timeout=60).execute_after_saturation(
            context(ti, StateStore()), None, saturation_deadline=1.0, refusals=2
        )
    assert info.value.retryable
    assert not isinstance(info.value, AirflowFailException)  # Airflow's retries apply
    assert gateway.server.posts() == 1


def test_a_worker_submit_still_waits_out_429_in_the_hook(gateway: Gateway) -> None:
    refuse_submits(gateway, 1, retry_after="0")
    result = edit(deferrable=False, wait_for_completion=False).execute(context(TaskInstance(), None))
    assert result["status"] == "QUEUED"
    assert gateway.server.posts() == 2


# -- resubmissions of ERROR jobs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("submits", "allowed", "posts", "succeeds"),
    [
        (["ERROR", "ERROR", "COMPLETED"], 2, 3, True),
        (["ERROR", "ERROR", "ERROR"], 2, 3, False),
        (["ERROR", "COMPLETED"], 0, 1, False),
        (["FAILED", "COMPLETED"], 3, 1, False),
    ],
    ids=["within-the-allowance", "beyond-the-allowance", "none-allowed", "failed-is-never-resubmitted"],
)
def test_resubmission_counts_on_the_worker(
    gateway: Gateway, submits: list[str], allowed: int, posts: int, succeeds: bool
) -> None:
    # Each submit answer states its end, so the operator reads it back at once: no poll sleeps.
    gateway.submits = list(submits)
    ti = TaskInstance()
    operator = edit(deferrable=False, resubmit_on_error=allowed)
    if succeeds:
        assert operator.execute(context(ti, StateStore()))["status"] == "COMPLETED"
    else:
        with pytest.raises(FireRedJobEndedError) as info:
            operator.execute(context(ti, StateStore()))
        # ERROR (not charged) keeps Airflow's retries; FAILED (charged) does not: each its own type.
        failed = submits[posts - 1] == "FAILED"
        assert isinstance(info.value, FireRedJobFailedError if failed else FireRedJobErroredError)
        assert isinstance(info.value, AirflowFailException) is failed
    assert gateway.server.posts() == posts
    assert ti.xcom.get(RESUBMISSIONS_XCOM_KEY, 0) == min(posts - 1, allowed)
    assert ti.xcom[REQUEST_ID_XCOM_KEY] == rid(100 + posts - 1)  # the XCom names the last request


def test_an_edit_is_validated_once_however_often_it_is_sent(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator validates the rendered edit before any request; the hook sends it as it is.
    import airflow_provider_firered.gateway.options as options
    import airflow_provider_firered.hooks.firered as hook_module
    import airflow_provider_firered.operators.firered as operator_module

    checks: list[tuple[Any, ...]] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        checks.append(args)
        return options.validate_edit(*args, **kwargs)

    monkeypatch.setattr(operator_module, "validate_edit", counted)
    monkeypatch.setattr(hook_module, "validate_edit", counted)
    gateway.submits = ["ERROR", "ERROR", "COMPLETED"]
    result = edit(deferrable=False, resubmit_on_error=2).execute(context(TaskInstance(), StateStore()))
    assert result["status"] == "COMPLETED"
    assert gateway.server.posts() == 3
    assert len(checks) == 1


def test_resubmission_counts_across_deferrals(gateway: Gateway) -> None:
    ti, store = TaskInstance(), StateStore()
    operator = edit(deferrable=True, resubmit_on_error=1)
    error_event = {"status": "error", "request_id": rid(1), "message": "GPU lost"}
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute_complete(context(ti, store), error_event)
    assert gateway.server.posts() == 1
    resubmitted = cast("FireRedStatusTrigger", deferred.value.trigger).request_id
    assert ti.xcom[RESUBMISSIONS_XCOM_KEY] == 1
    # The resubmitted job ends ERROR too: the allowance is spent, the task fails (retries apply).
    with pytest.raises(
        FireRedJobErroredError, match=f"FireRed job {resubmitted} ended ERROR: GPU lost"
    ) as info:
        operator.execute_complete(context(ti, store), {**error_event, "request_id": resubmitted})
    assert not isinstance(info.value, AirflowFailException)
    assert gateway.server.posts() == 1


# -- what the trigger reports ------------------------------------------------------------------------


@pytest.mark.parametrize(("has_store", "final"), [(True, False), (False, True)])
def test_a_key_refused_during_the_wait_is_retried_only_where_a_retry_resumes(
    gateway: Gateway, has_store: bool, final: bool
) -> None:
    event = {
        "status": "api_error",
        "request_id": rid(1),
        "message": "FireRed gateway answered HTTP 401",
        "retryable": True,
        "http_status": 401,
    }
    store = StateStore() if has_store else None
    with pytest.raises(FireRedApiError, match=r"HTTP 401 \(request_id=") as info:
        edit(deferrable=True).execute_complete(context(TaskInstance(), store), event)
    assert isinstance(info.value, AirflowFailException) is final
    assert ("a retry would submit the edit again: not retried" in str(info.value)) is final
    assert gateway.server.posts() == 0


@pytest.mark.usefixtures("gateway")
def test_a_success_event_is_collected() -> None:
    result = {
        "request_id": rid(1),
        "model_id": V11,
        "status": "COMPLETED",
        "media_urls": ["https://cdn.test/out.png"],
        "media_type": "image/png",
        "output_paths": [],
    }
    ti = TaskInstance()
    out = edit(deferrable=True).execute_complete(
        context(ti, StateStore()), {"status": "success", "request_id": rid(1), "result": result}
    )
    assert out == result
    assert ti.xcom["_link_FireRedOutputLink"] == "https://cdn.test/out.png"


# -- the sensor's deferral ---------------------------------------------------------------------------


def test_the_sensor_defers_with_the_same_slack_as_the_operator(gateway: Gateway) -> None:
    # Airflow's own deferral timeout must come after the trigger's deadline, whose event is clearer.
    gateway.statuses[rid(1)] = "PROCESSING"
    sensor = FireRedStatusSensor(
        task_id="sense", request_id=rid(1), deferrable=True, poke_interval=1, timeout=30
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context(TaskInstance(), None))
    assert deferred.value.timeout == timedelta(seconds=30 + DEFER_SLACK)
    trigger = cast("FireRedStatusTrigger", deferred.value.trigger)
    assert trigger.timeout == 30


@pytest.mark.parametrize(
    ("status", "kind", "final"),
    [("failed", FireRedJobFailedError, True), ("error", FireRedJobErroredError, False)],
)
def test_the_sensor_raises_the_job_failure_as_itself(
    status: str, kind: type[FireRedJobEndedError], final: bool
) -> None:
    sensor = FireRedStatusSensor(task_id="sense", request_id=rid(1), deferrable=True, poke_interval=1)
    event = {"status": status, "request_id": rid(1), "message": "went wrong"}
    with pytest.raises(kind, match=f"ended {status.upper()}: went wrong") as info:
        sensor.execute_complete(context(TaskInstance(), None), event)
    assert isinstance(info.value, AirflowFailException) is final


def test_the_sensors_soft_fail_skips_a_job_failure() -> None:
    sensor = FireRedStatusSensor(task_id="sense", request_id=rid(1), soft_fail=True, poke_interval=1)
    event = {"status": "failed", "request_id": rid(1), "message": "went wrong"}
    with pytest.raises(AirflowSkipException, match="Skipping due to soft_fail: FireRed job"):
        sensor.execute_complete(context(TaskInstance(), None), event)
