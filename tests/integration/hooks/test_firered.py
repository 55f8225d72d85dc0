"""FireRedHook against the emulator on loopback: paths, headers, bodies, retries, downloads, secrets."""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from airflow_provider_firered.emulator import Emulator, Fault
from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedDownloadError,
    FireRedError,
    FireRedSubmitUncertainError,
    FireRedValidationError,
)
from airflow_provider_firered.gateway.results import JobStatus, JobStatusResult
from airflow_provider_firered.hooks.firered import KEY_HEADER, FireRedHook
from tests.conftest import TEST_KEY, conn_uri_json
from tests.hostile import Answer, HostileServer, Seen

if TYPE_CHECKING:
    from pathlib import Path

V10 = "firered-image-edit"
V11 = "firered-image-edit-v1-1"
SUBMIT_PATHS = {
    V10: "/firered-image-edit/v1/firered-image-edit/generate",
    V11: "/firered-image-edit-v1-1/v1/firered-image-edit-v1-1-request",
}


def status_reads(emulator: Emulator) -> int:
    return len([r for r in emulator.requests if r.path.startswith("/v2/requests/status/")])


def wait_done(hook: FireRedHook, request_id: str, limit: float = 20) -> JobStatusResult:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        result = hook.get_status(request_id)
        if result.status.is_terminal:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{request_id} did not finish within {limit}s")


def header(recorded: Any, name: str) -> str | None:
    return {k.lower(): v for k, v in recorded.headers.items()}.get(name.lower())


@pytest.mark.parametrize(
    ("model", "parameters", "fmt"),
    [
        (V10, {"output_format": "png", "output_quality": 100, "aspect_ratio": "16:9", "seed": 7}, "PNG"),
        (V11, {"output_format": "jpeg", "num_images": 2, "acceleration": "fast"}, "JPEG"),
    ],
)
def test_submit_status_download(
    firered_emulator: Emulator,
    firered_conn: str,
    tmp_path: Path,
    model: str,
    parameters: dict[str, Any],
    fmt: str,
) -> None:
    hook = FireRedHook(firered_conn)
    image = firered_emulator.sample_images[0]
    submitted = hook.submit_edit(model, "Make the background red", [image], parameters)
    assert submitted.request_id.startswith(model)
    assert submitted.status is JobStatus.QUEUED

    (post,) = firered_emulator.submissions()
    assert (post.method, post.path) == ("POST", SUBMIT_PATHS[model])
    assert header(post, "Content-Type") == "application/json"
    assert header(post, "Cache-Control") == "no-cache"
    assert header(post, KEY_HEADER) == TEST_KEY
    image_field = "image" if model == V10 else "image_urls"
    assert post.body == {"prompt": "Make the background red", image_field: [image], **parameters}

    done = wait_done(hook, submitted.request_id)
    assert done.status is JobStatus.COMPLETED
    assert done.model_id == model
    assert len(done.media_urls) == parameters.get("num_images", 1)
    status_reads = [r for r in firered_emulator.requests if r.path.startswith("/v2/requests/status/")]
    assert all(header(r, KEY_HEADER) == TEST_KEY for r in status_reads)

    for index, url in enumerate(done.media_urls):
        target = tmp_path / "out" / f"{index}.img"
        assert hook.download(url, target) == str(target)
        with Image.open(target) as img:
            assert img.format == fmt
            if model == V10:
                assert img.width / img.height == pytest.approx(16 / 9, rel=0.02)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{i}.img" for i in range(len(done.media_urls))
    ]
    cdn = [r for r in firered_emulator.requests if r.origin == "cdn"]
    assert cdn
    assert all(header(r, KEY_HEADER) is None for r in cdn)
    assert firered_emulator.cdn_key_violations == []


def test_download_to_object_storage_path(
    firered_emulator: Emulator, firered_conn: str, tmp_path: Path
) -> None:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    hook = FireRedHook(firered_conn)
    done = wait_done(hook, hook.submit_edit(V11, "blue", firered_emulator.sample_images[:1]).request_id)
    try:
        target = ObjectStoragePath(f"file://{tmp_path}/store/edit.png")
    except TypeError as err:  # Airflow 3.0's ObjectStoragePath with universal-pathlib 0.3
        pytest.skip(f"this Airflow cannot build a file:// ObjectStoragePath: {err}")
    hook.download(done.media_urls[0], target)
    with Image.open(tmp_path / "store" / "edit.png") as img:
        assert img.format == "PNG"


async def test_async_status_with_one_session(
    firered_emulator: Emulator, firered_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted = FireRedHook(firered_conn).submit_edit(V11, "green", firered_emulator.sample_images[:1])
    sessions: list[Any] = []
    original = FireRedHook._get_async_session

    def spy(self: FireRedHook) -> Any:
        sessions.append(original(self))
        return sessions[-1]

    monkeypatch.setattr(FireRedHook, "_get_async_session", spy)
    async with FireRedHook(firered_conn) as hook:
        deadline = time.monotonic() + 20
        result = await hook.aget_status(submitted.request_id)
        while not result.status.is_terminal and time.monotonic() < deadline:
            result = await hook.aget_status(submitted.request_id)
    assert result.status is JobStatus.COMPLETED
    assert len(sessions) > 1
    assert all(session is sessions[0] for session in sessions)  # one session for the hook's life
    assert sessions[0].closed  # given back on exit


def test_test_connection_good_key_submits_nothing(firered_emulator: Emulator, firered_conn: str) -> None:
    ok, message = FireRedHook(firered_conn).test_connection()
    assert ok, message
    assert "accepted the API key" in message
    assert firered_emulator.submit_attempts() == []


@pytest.mark.parametrize(("key", "status"), [("wrong-key", 401), ("disabled-key", 403)])
def test_test_connection_rejected_key(monkeypatch: pytest.MonkeyPatch, key: str, status: int) -> None:
    with Emulator(keys=[TEST_KEY, "disabled-key"], disabled_keys=["disabled-key"]).start() as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(emulator.gateway_url, key=key))
        ok, message = FireRedHook().test_connection()
    assert not ok
    assert f"HTTP {status}" in message
    assert "rejected the API key" in message
    assert key not in message


def test_test_connection_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(f"http://127.0.0.1:{port}"))
    ok, message = FireRedHook().test_connection()
    assert not ok
    assert "Cannot use the gateway" in message
    assert "127.0.0.1" in message


@pytest.mark.parametrize(
    "headers",
    [{"Retry-After": "0"}, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, {}],
    ids=["seconds", "http-date", "absent"],
)
def test_429_is_retried(firered_emulator: Emulator, firered_conn: str, headers: dict[str, str]) -> None:
    firered_emulator.inject(Fault(target="submit", kind="status", status_code=429, headers=headers, count=2))
    submitted = FireRedHook(firered_conn).submit_edit(V11, "retry me", firered_emulator.sample_images[:1])
    assert len(firered_emulator.submit_attempts()) == 3
    assert [s.body["prompt"] for s in firered_emulator.submissions()] == ["retry me"]
    assert submitted.request_id


def test_retry_after_is_honoured(firered_emulator: Emulator, firered_conn: str) -> None:
    # The test connection caps Retry-After at 0.5 s (retry_max_retry_after); the gap must reach it.
    firered_emulator.inject(
        Fault(target="status", kind="status", status_code=429, headers={"Retry-After": "3"})
    )
    hook = FireRedHook(firered_conn)
    request_id = hook.submit_edit(V11, "wait", firered_emulator.sample_images[:1]).request_id
    hook.get_status(request_id)
    first, second = [r for r in firered_emulator.requests if r.path.startswith("/v2/requests/status/")][:2]
    assert first.status == 429
    assert second.status == 200
    assert second.time - first.time >= 0.45


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_recovers(firered_emulator: Emulator, firered_conn: str, status: int) -> None:
    firered_emulator.inject(Fault(target="status", kind="status", status_code=status, count=2))
    hook = FireRedHook(firered_conn)
    request_id = hook.submit_edit(V11, "x", firered_emulator.sample_images[:1]).request_id
    assert hook.get_status(request_id).request_id == request_id


def test_dropped_connection_recovers(firered_emulator: Emulator, firered_conn: str) -> None:
    hook = FireRedHook(firered_conn)
    request_id = hook.submit_edit(V11, "x", firered_emulator.sample_images[:1]).request_id
    firered_emulator.inject(Fault(target="status", kind="drop", count=2))
    assert hook.get_status(request_id).request_id == request_id


def test_retries_run_out(firered_emulator: Emulator, firered_conn: str) -> None:
    hook = FireRedHook(firered_conn)
    request_id = hook.submit_edit(V11, "x", firered_emulator.sample_images[:1]).request_id
    firered_emulator.inject(Fault(target="status", kind="status", status_code=503, count=50))
    with pytest.raises(FireRedApiError, match="HTTP 503") as info:
        hook.get_status(request_id)
    assert info.value.retryable
    assert request_id in str(info.value)
    assert status_reads(firered_emulator) == 4  # retry_max_attempts of the test connection


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_submit_5xx_is_never_posted_again(firered_emulator: Emulator, firered_conn: str, status: int) -> None:
    firered_emulator.inject(Fault(target="submit", kind="status", status_code=status, count=10))
    with pytest.raises(FireRedSubmitUncertainError) as info:
        FireRedHook(firered_conn).submit_edit(V11, "x", firered_emulator.sample_images[:1])
    assert not info.value.retryable
    assert f"HTTP {status}" in str(info.value)
    assert "may have accepted the edit" in str(info.value)
    assert "before clearing the task" in str(info.value)
    assert len(firered_emulator.submit_attempts()) == 1


def test_submit_5xx_is_posted_again_when_the_connection_opts_in(
    firered_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FIRERED_DEFAULT",
        conn_uri_json(firered_emulator.gateway_url, resend_submit_on_5xx=True),
    )
    firered_emulator.inject(Fault(target="submit", kind="status", status_code=502, count=2))
    submitted = FireRedHook().submit_edit(V11, "again", firered_emulator.sample_images[:1])
    assert len(firered_emulator.submit_attempts()) == 3
    assert [s.body["prompt"] for s in firered_emulator.submissions()] == ["again"]
    assert submitted.request_id


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            400,
            {
                "error": "Model not found",
                "message": "Model 'firered-image-edit-v1-1' not found or is disabled",
            },
        ),
        (401, {"error": "Unauthorized", "message": "Access denied due to invalid subscription key."}),
        (402, {"error": "Insufficient Balance", "message": "Your wallet does not have enough balance."}),
        (403, {"error": "Forbidden", "message": "Subscription disabled"}),
        (404, {"error": "Not Found", "message": "Resource not found"}),
    ],
)
def test_4xx_is_not_retried(
    firered_emulator: Emulator, firered_conn: str, status: int, body: dict[str, str]
) -> None:
    firered_emulator.inject(Fault(target="submit", kind="status", status_code=status, body=body, count=5))
    with pytest.raises(FireRedApiError) as info:
        FireRedHook(firered_conn).submit_edit(V11, "x", firered_emulator.sample_images[:1])
    err = info.value
    assert (err.status_code, err.error, err.message) == (status, body["error"], body["message"])
    assert f"HTTP {status}" in str(err)
    assert body["message"] in str(err)
    assert len(firered_emulator.submit_attempts()) == 1


def test_real_402_when_balance_runs_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with Emulator(balance=1).start() as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(emulator.gateway_url))
        hook = FireRedHook()
        hook.submit_edit(V11, "first", emulator.sample_images[:1])
        with pytest.raises(FireRedApiError, match="Insufficient Balance") as info:
            hook.submit_edit(V11, "second", emulator.sample_images[:1])
    assert info.value.status_code == 402


def test_real_404_for_unknown_request(firered_conn: str) -> None:
    with pytest.raises(FireRedApiError) as info:
        FireRedHook(firered_conn).get_status("firered-image-edit-v1-1_does-not-exist")
    assert info.value.status_code == 404
    assert "firered-image-edit-v1-1_does-not-exist" in str(info.value)


def test_malformed_status_answer_is_retried(firered_emulator: Emulator, firered_conn: str) -> None:
    hook = FireRedHook(firered_conn)
    request_id = hook.submit_edit(V11, "x", firered_emulator.sample_images[:1]).request_id
    firered_emulator.inject(Fault(target="status", kind="malformed_json", count=1))
    assert hook.get_status(request_id).request_id == request_id


def test_malformed_submit_answer_is_not_posted_again(firered_emulator: Emulator, firered_conn: str) -> None:
    firered_emulator.inject(Fault(target="submit", kind="malformed_json", count=1))
    with pytest.raises(FireRedSubmitUncertainError, match="not JSON") as info:
        FireRedHook(firered_conn).submit_edit(V11, "x", firered_emulator.sample_images[:1])
    assert not info.value.retryable
    assert len(firered_emulator.submit_attempts()) == 1


def test_redirect_is_not_followed_with_the_key(firered_emulator: Emulator, firered_conn: str) -> None:
    hook = FireRedHook(firered_conn)
    request_id = hook.submit_edit(V11, "x", firered_emulator.sample_images[:1]).request_id
    location = f"{firered_emulator.cdn_url}/stolen"
    firered_emulator.inject(
        Fault(target="status", kind="status", status_code=302, headers={"Location": location})
    )
    with pytest.raises(FireRedApiError, match=r"redirected to 127\.0\.0\.1"):
        hook.get_status(request_id)
    assert not [r for r in firered_emulator.requests if r.path == "/stolen"]
    assert firered_emulator.cdn_key_violations == []


def test_foreign_polling_url_is_ignored(
    firered_emulator: Emulator,
    firered_conn: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    firered_emulator.inject(Fault(target="submit", kind="foreign_polling_url"))
    hook = FireRedHook(firered_conn)
    with caplog.at_level(logging.WARNING):
        submitted = hook.submit_edit(V11, "x", firered_emulator.sample_images[:1])
    assert submitted.polling_url
    assert "127.0.0.1" not in submitted.polling_url
    # Airflow 3.3 routes hook logs through structlog to stdout, older versions through logging.
    assert "Ignoring polling_url on another host" in caplog.text + capfd.readouterr().out
    wait_done(hook, submitted.request_id)  # status still read from the gateway itself


def test_validation_error_sends_nothing(firered_emulator: Emulator, firered_conn: str) -> None:
    with pytest.raises(FireRedValidationError, match=r"parameters\.num_images"):
        FireRedHook(firered_conn).submit_edit(V11, "x", firered_emulator.sample_images[:1], {"num_images": 0})
    assert firered_emulator.requests == []


@pytest.mark.parametrize(
    ("fault", "match", "max_bytes"),
    [
        (Fault(target="cdn", kind="status", status_code=404, count=10), "HTTP 404", None),
        (Fault(target="cdn", kind="wrong_content_type", count=10), "Content-Type", None),
        (Fault(target="cdn", kind="truncated", count=10), "truncated", None),
        (Fault(target="cdn", kind="oversized", size_bytes=4096, count=10), "limit", 2048),
    ],
    ids=["404", "content-type", "truncated", "oversized"],
)
def test_download_faults_leave_no_file(
    firered_emulator: Emulator,
    firered_conn: str,
    tmp_path: Path,
    fault: Fault,
    match: str,
    max_bytes: int | None,
) -> None:
    hook = FireRedHook(firered_conn)
    done = wait_done(hook, hook.submit_edit(V11, "x", firered_emulator.sample_images[:1]).request_id)
    firered_emulator.inject(fault)
    with pytest.raises(FireRedDownloadError, match=match):
        hook.download(done.media_urls[0], tmp_path / "out.png", max_bytes=max_bytes)
    assert list(tmp_path.iterdir()) == []


def test_a_completed_download_removes_what_a_killed_one_left(
    firered_emulator: Emulator, firered_conn: str, tmp_path: Path
) -> None:
    hook = FireRedHook(firered_conn)
    done = wait_done(hook, hook.submit_edit(V11, "x", firered_emulator.sample_images[:1]).request_id)
    stale = tmp_path / ".out.png.k1ll3d.part"  # as a try killed mid-download leaves it
    stale.write_bytes(b"\x89PNG half")
    other = tmp_path / ".other.png.x.part"  # another target's: not this download's business
    other.write_bytes(b"x")
    hook.download(done.media_urls[0], tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.png.x.part", "out.png"]


def test_key_never_logged_or_in_errors(
    firered_emulator: Emulator,
    firered_conn: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    hook = FireRedHook(firered_conn)
    errors: list[str] = []
    done = wait_done(hook, hook.submit_edit(V10, "x", firered_emulator.sample_images[:1]).request_id)
    hook.download(done.media_urls[0], tmp_path / "a.webp")
    for fault in (
        Fault(target="submit", kind="status", status_code=401, body={"error": "Unauthorized"}),
        Fault(target="status", kind="status", status_code=503, count=10),
        Fault(target="cdn", kind="status", status_code=500, count=10),
    ):
        firered_emulator.inject(fault)
        try:
            hook.submit_edit(V10, "x", firered_emulator.sample_images[:1])
            hook.get_status(done.request_id)
        except FireRedError as err:
            errors.append(f"{err!s} {err!r}")
        try:
            hook.download(done.media_urls[0], tmp_path / "b.webp")
        except FireRedError as err:
            errors.append(f"{err!s} {err!r}")
        firered_emulator.clear_faults()
    assert len(errors) == 3
    output = capfd.readouterr()
    for text in [
        caplog.text,
        output.out,
        output.err,
        *errors,
        json.dumps(done.to_dict()),
        repr(hook),
        repr(hook.settings),
    ]:
        assert TEST_KEY not in text
    assert firered_emulator.cdn_key_violations == []


def rotating_gateway(server: HostileServer, request_id: str, good_key: str) -> None:
    """Status reads succeed with ``good_key`` only, as after a key rotation."""
    body = json.dumps({"request_id": request_id, "status": "PROCESSING"}).encode()

    def status(seen: Seen) -> Answer:
        if header(seen, KEY_HEADER) == good_key:
            return Answer(200, {"Content-Type": "application/json"}, body)
        return Answer(401, {"Content-Type": "application/json"}, b'{"error": "Unauthorized"}')

    server.route("/v2/requests/status/", status)


def test_a_rotated_key_is_looked_up_again_once(monkeypatch: pytest.MonkeyPatch) -> None:
    request_id = "firered-image-edit-v1-1_rotated"
    server = HostileServer().start()
    try:
        rotating_gateway(server, request_id, good_key="rotated-key")
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(server.url))
        hook = FireRedHook()
        assert hook.settings.api_key == TEST_KEY  # the hook resolved the old key ...
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(server.url, key="rotated-key"))
        # ... the gateway refuses it: the connection is looked up afresh and the status read again.
        assert hook.get_status(request_id).status is JobStatus.PROCESSING
        assert hook.settings.api_key == "rotated-key"
        assert [header(s, KEY_HEADER) for s in server.seen] == [TEST_KEY, "rotated-key"]

        # A key refused although nothing changed: one read, no second one.
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(server.url, key="revoked-key"))
        hook = FireRedHook()
        hook.settings  # noqa: B018
        with pytest.raises(FireRedApiError) as info:
            hook.get_status(request_id)
        assert info.value.status_code == 401
        assert [header(s, KEY_HEADER) for s in server.seen[2:]] == ["revoked-key"]
    finally:
        server.stop()


@pytest.mark.parametrize(("level", "shown"), [(logging.INFO, True), (logging.DEBUG, False)])
def test_request_log_level_sets_the_per_request_lines(
    firered_emulator: Emulator,
    firered_conn: str,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    level: int,
    shown: bool,
) -> None:
    # A batch of thousands logs its submits and downloads at DEBUG; a single edit keeps them at INFO.
    hook = FireRedHook(firered_conn, request_log_level=level)
    with caplog.at_level(logging.INFO):
        submitted = hook.submit_edit(V11, "x", firered_emulator.sample_images[:1])
        done = wait_done(hook, submitted.request_id)
        hook.download(done.media_urls[0], tmp_path / "out.png")
    logged = caplog.text + capfd.readouterr().out
    for line in ("Submitting a firered-image-edit-v1-1 edit", "Submitted: request_id=", "Downloaded "):
        assert (line in logged) is shown
