"""
The fault matrix of docs/reliability.md that the other suites do not already cover: lost and slow
answers, missing fields, undocumented statuses, an unreachable gateway, and every bad input, each
against the emulator on loopback.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.emulator import Emulator, Fault
from airflow_provider_firered.exceptions import (
    FireRedConnectionError,
    FireRedDownloadError,
    FireRedError,
    FireRedSubmitUncertainError,
    FireRedValidationError,
)
from airflow_provider_firered.gateway.results import JobStatus
from airflow_provider_firered.hooks.firered import FireRedHook
from tests.conftest import conn_uri_json
from tests.integration.hooks.test_firered import wait_done
from tests.unit.gateway.test_options import BAD_IMAGES, BAD_PROMPTS, BAD_WEBHOOKS, CASES

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

V10 = "firered-image-edit"
V11 = "firered-image-edit-v1-1"
#: Seconds a slow answer takes, against a connection that allows SHORT_TIMEOUT per exchange.
SHORT_TIMEOUT = 0.5
SLOW = 1.5


@pytest.fixture
def short_timeout_conn(firered_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FIRERED_DEFAULT",
        conn_uri_json(firered_emulator.gateway_url, request_timeout=SHORT_TIMEOUT),
    )
    return "firered_default"


def eventually(check: Callable[[], bool], limit: float = 5) -> bool:
    """Whether ``check`` holds within ``limit`` seconds (polled)."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def status_reads(emulator: Emulator) -> int:
    return len([r for r in emulator.requests if r.path.startswith("/v2/requests/status/")])


# -- bad input: refused before any request ----------------------------------------------------------


def _bad_inputs() -> list[Any]:
    cases: list[Any] = []
    for model, option, _good, bad in CASES:
        for value in bad:
            cases.append(
                pytest.param(
                    {"model": model, "parameters": {option: value}},
                    f"parameters.{option}",
                    id=f"{model}:{option}={value!r}",
                )
            )
    cases += [pytest.param({"prompt": p}, "prompt", id=f"prompt:{why}") for p, why in BAD_PROMPTS]
    cases += [pytest.param({"images": i}, field, id=f"images:{why}:{field}") for i, field, why in BAD_IMAGES]
    cases += [
        pytest.param({"webhook_url": url, "webhook_mode": mode}, field, id=f"webhook:{url}:{mode}")
        for url, mode, field in BAD_WEBHOOKS
    ]
    cases += [
        pytest.param({"parameters": {"strength": 0.5}}, "parameters.strength", id="unknown-option"),
        pytest.param(
            {"parameters": {"num_images": "{{ 2 }}"}}, "parameters.num_images", id="unrendered-template"
        ),
        pytest.param({"model": "dall-e"}, "model", id="unknown-model"),
    ]
    return cases


@pytest.mark.parametrize(("change", "field"), _bad_inputs())
def test_bad_input_is_refused_before_any_request(
    firered_emulator: Emulator, firered_conn: str, change: dict[str, Any], field: str
) -> None:
    args: dict[str, Any] = {
        "model": V11,
        "prompt": "p",
        "images": firered_emulator.sample_images[:1],
        **change,
    }
    with pytest.raises(FireRedValidationError) as info:
        FireRedHook(firered_conn).submit_edit(
            args.pop("model"), args.pop("prompt"), args.pop("images"), args.pop("parameters", None), **args
        )
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")
    assert firered_emulator.requests == []


# -- network faults ---------------------------------------------------------------------------------


def test_unreachable_gateway_is_retried_then_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(f"http://127.0.0.1:{port}"))
    with pytest.raises(FireRedConnectionError, match=r"request to 127\.0\.0\.1: ConnectionError") as info:
        FireRedHook().submit_edit(V11, "p", ["https://img.example.test/a.png"])
    assert info.value.retryable  # nothing was sent: Airflow's retries may post it


@pytest.mark.parametrize(
    ("fault", "failures"),
    [
        ({"kind": "delay", "delay_seconds": SLOW}, 1),
        ({"kind": "reset_mid_body"}, 1),
        ({"kind": "drop"}, 1),
        ({"kind": "missing_fields", "count": 2}, 2),
        ({"kind": "malformed_json", "count": 2}, 2),
    ],
    ids=["slower-than-timeout", "reset-mid-answer", "dropped", "missing-fields", "malformed-json"],
)
def test_status_faults_recover(
    firered_emulator: Emulator, short_timeout_conn: str, fault: dict[str, Any], failures: int
) -> None:
    hook = FireRedHook(short_timeout_conn)
    request_id = hook.submit_edit(V11, "p", firered_emulator.sample_images[:1]).request_id
    firered_emulator.inject(Fault(target="status", **fault))
    assert hook.get_status(request_id).request_id == request_id
    # A slow answer is recorded when the emulator finishes it, after the client gave up on it.
    assert eventually(lambda: status_reads(firered_emulator) == failures + 1)


@pytest.mark.parametrize(
    "fault",
    [{"kind": "delay", "delay_seconds": SLOW}, {"kind": "reset_mid_body"}, {"kind": "drop"}],
    ids=["slower-than-timeout", "reset-mid-answer", "dropped"],
)
def test_lost_submit_answer_is_never_posted_again(
    firered_emulator: Emulator, short_timeout_conn: str, fault: dict[str, Any]
) -> None:
    firered_emulator.inject(Fault(target="submit", **fault))
    with pytest.raises(FireRedSubmitUncertainError, match="may have accepted the edit") as info:
        FireRedHook(short_timeout_conn).submit_edit(V11, "p", firered_emulator.sample_images[:1])
    assert not info.value.retryable
    assert eventually(lambda: len(firered_emulator.submit_attempts()) == 1)
    time.sleep(SLOW)  # nothing else arrives later either
    assert len(firered_emulator.submit_attempts()) == 1


def test_submit_answer_missing_fields_fails_once(firered_emulator: Emulator, firered_conn: str) -> None:
    firered_emulator.inject(Fault(target="submit", kind="missing_fields"))
    with pytest.raises(FireRedSubmitUncertainError, match="request_id") as info:
        FireRedHook(firered_conn).submit_edit(V11, "p", firered_emulator.sample_images[:1])
    assert not info.value.retryable  # a 2xx: the edit may have been accepted
    assert len(firered_emulator.submit_attempts()) == 1


def test_undocumented_status_keeps_waiting(firered_emulator: Emulator, firered_conn: str) -> None:
    hook = FireRedHook(firered_conn)
    request_id = hook.submit_edit(V11, "p", firered_emulator.sample_images[:1]).request_id
    firered_emulator.inject(Fault(target="status", kind="status_value", status_value="PAUSED", count=3))
    first = hook.get_status(request_id)
    assert (first.status, first.raw_status, first.status.is_terminal) == (JobStatus.UNKNOWN, "PAUSED", False)
    assert wait_done(hook, request_id).status is JobStatus.COMPLETED


def test_slow_media_download_fails_and_leaves_no_file(
    firered_emulator: Emulator, short_timeout_conn: str, tmp_path: Path
) -> None:
    hook = FireRedHook(short_timeout_conn)
    done = wait_done(hook, hook.submit_edit(V11, "p", firered_emulator.sample_images[:1]).request_id)
    firered_emulator.inject(Fault(target="cdn", kind="delay", delay_seconds=SLOW, count=10))
    with pytest.raises(FireRedError) as info:
        hook.download(done.media_urls[0], tmp_path / "out.png")
    assert isinstance(info.value, (FireRedDownloadError, FireRedConnectionError))
    assert "127.0.0.1" in str(info.value)
    assert list(tmp_path.iterdir()) == []
