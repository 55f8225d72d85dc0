"""
FireRedHook against a gateway that answers badly on purpose (``tests/gateway.py`` on loopback): forged
ids and media lists, answers too large or too slow, a key echoed back, a TLS handshake that fails.
Nothing a gateway sends is trusted, and nothing that may have been paid for is posted twice.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.exceptions import (
    FireRedApiError,
    FireRedConnectionError,
    FireRedError,
    FireRedResponseError,
    FireRedSubmitUncertainError,
)
from airflow_provider_firered.gateway.options import MAX_NUM_IMAGES
from airflow_provider_firered.gateway.results import MAX_ANSWER_BYTES, JobStatus
from airflow_provider_firered.hooks.firered import FireRedHook
from tests.conftest import TEST_KEY, conn_uri_json
from tests.hostile import Answer, HostileServer, Seen, serving

if TYPE_CHECKING:
    from collections.abc import Iterator

V11 = "firered-image-edit-v1-1"
RID = "firered-image-edit-v1-1_0123456789abcdef"
SUBMIT = "/firered-image-edit-v1-1/v1/firered-image-edit-v1-1-request"
STATUS = f"/v2/requests/status/{RID}"
IMAGE = "https://img.example.test/a.png"
JSON = {"Content-Type": "application/json"}


def status_body(status: str = "PROCESSING", **fields: Any) -> dict[str, Any]:
    return {"request_id": RID, "status": status, "model_id": V11, "error": None, **fields}


def completed(urls: list[str]) -> dict[str, Any]:
    return status_body("COMPLETED", output={"media_url": urls, "media_type": "image/png"})


def json_answer(body: Any, status: int = 200) -> Answer:
    return Answer(status, JSON, json.dumps(body).encode())


def sequence(*answers: Answer) -> Any:
    """A route answering with ``answers`` in turn, the last one for ever after."""
    given = iter(answers)
    last = [answers[-1]]

    def route(_seen: Seen) -> Answer:
        last[0] = next(given, last[0])
        return last[0]

    return route


def gets(server: HostileServer, path: str = STATUS) -> int:
    return sum(1 for s in list(server.seen) if s.method == "GET" and s.path == path)


@pytest.fixture
def gateway() -> Iterator[HostileServer]:
    """A gateway that answers as each test says, on loopback."""
    with serving() as server:
        yield server


@pytest.fixture
def conn(gateway: HostileServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """``firered_default`` pointed at the hostile gateway (4 fast tries, 5 s per exchange)."""
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(gateway.url))
    return "firered_default"


# -- the id asked for is the only id used ---------------------------------------------------------


@pytest.mark.parametrize("forged", ["../../x", "/etc/cron.d/x", "firered-image-edit-v1-1_other", "", 7])
def test_an_answer_naming_another_request_id_is_read_again(
    gateway: HostileServer, conn: str, forged: Any
) -> None:
    gateway.route(STATUS, sequence(json_answer(status_body(request_id=forged)), json_answer(status_body())))
    result = FireRedHook(conn).get_status(RID)
    assert result.request_id == RID
    assert gets(gateway) == 2  # the forged answer was retried like a 503, not trusted


async def test_a_forged_request_id_is_never_trusted_by_the_async_path(
    gateway: HostileServer, conn: str
) -> None:
    gateway.route(
        STATUS, json_answer(completed(["https://cdn.example.test/x.py"]) | {"request_id": "../../x"})
    )
    with pytest.raises(FireRedResponseError, match="another request_id") as info:
        async with FireRedHook(conn) as hook:
            await hook.aget_status(RID)
    assert info.value.retryable
    assert gets(gateway) == 4  # every try refused it


@pytest.mark.parametrize(
    ("urls", "match"),
    [
        ([f"https://cdn.example.test/{i}.png" for i in range(MAX_NUM_IMAGES + 1)], "at most"),
        ([f"https://cdn.example.test/{i}.png" for i in range(10_000)], "at most"),
        (["file:///etc/passwd"], "not an http"),
        (["https://cdn.example.test/a.png", 3], "not an http"),
        (["javascript:alert(1)"], "not an http"),
        ({"a": "https://cdn.example.test/a.png"}, "no URL"),
    ],
    ids=["one-too-many", "ten-thousand", "file-url", "not-a-string", "javascript", "not-a-list"],
)
def test_a_completed_answer_with_bad_media_urls_is_read_again(
    gateway: HostileServer, conn: str, urls: Any, match: str
) -> None:
    good = ["https://cdn.example.test/0.png"]
    gateway.route(STATUS, sequence(json_answer(completed(urls)), json_answer(completed(good))))
    result = FireRedHook(conn).get_status(RID)
    assert (result.status, result.media_urls) == (JobStatus.COMPLETED, good)
    assert gets(gateway) == 2
    gateway.route(STATUS, json_answer(completed(urls)))
    with pytest.raises(FireRedResponseError, match=match):
        FireRedHook(conn).get_status(RID)


def test_kept_text_fields_are_bounded_and_on_one_line(gateway: HostileServer, conn: str) -> None:
    gateway.route(
        STATUS,
        json_answer(status_body("FAILED", error="bad\nFAKE LOG LINE " + "e" * 100_000, model_id="m" * 5000)),
    )
    result = FireRedHook(conn).get_status(RID)
    assert result.error is not None
    assert result.model_id is not None
    assert "\n" not in result.error
    assert len(result.error) <= 2000
    assert len(result.model_id) <= 128


# -- pay once: a submit is sent again only when the gateway surely did not take it ----------------


def test_a_429_submit_is_posted_again(gateway: HostileServer, conn: str) -> None:
    gateway.route(
        SUBMIT,
        sequence(
            json_answer({"error": "Too Many Requests"}, 429),
            json_answer({"request_id": RID, "status": "QUEUED"}, 202),
        ),
    )
    assert FireRedHook(conn).submit_edit(V11, "p", [IMAGE]).request_id == RID
    assert gateway.posts() == 2


@pytest.mark.parametrize(
    "answer",
    [
        json_answer({"error": "Internal Server Error"}, 500),
        Answer(502, {"Content-Type": "text/html"}, b"<html>Bad Gateway</html>"),
        json_answer({"error": "Service Unavailable"}, 503),
        json_answer({"message": "timeout"}, 504),
        json_answer({"error": "Request Timeout"}, 408),
        Answer(202, JSON, b"{not json"),
        json_answer({"request_id": "../../x", "status": "QUEUED"}, 202),
        Answer(202, {**JSON, "Content-Length": str(MAX_ANSWER_BYTES + 1)}, [b"{}"]),
    ],
    ids=["500", "502-html", "503", "504", "408", "malformed-2xx", "forged-id-2xx", "oversized-2xx"],
)
def test_a_submit_that_may_have_been_taken_is_never_posted_again(
    gateway: HostileServer, conn: str, answer: Answer
) -> None:
    gateway.route(SUBMIT, answer)
    with pytest.raises(FireRedSubmitUncertainError, match="may have accepted the edit") as info:
        FireRedHook(conn).submit_edit(V11, "p", [IMAGE])
    assert not info.value.retryable
    assert "Check the gateway" in str(info.value)
    assert gateway.posts() == 1


# -- answers bounded in size ----------------------------------------------------------------------


def huge_body(total: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    yield b'{"status": "PROCESSING", "pad": "'
    for _ in range(total // chunk):
        yield b"x" * chunk
    yield b'"}'


def test_an_announced_huge_answer_is_refused_before_reading(gateway: HostileServer, conn: str) -> None:
    size = 200 * 1024 * 1024
    # A route function: each try gets a fresh body (a generator is read once).
    gateway.route(
        STATUS, lambda _seen: Answer(200, {**JSON, "Content-Length": str(size)}, huge_body(size), drip=0.01)
    )
    started = time.monotonic()
    with pytest.raises(FireRedResponseError, match="larger than") as info:
        FireRedHook(conn).get_status(RID)
    # Reading 200 MiB at 64 KiB per 10 ms would take half a minute per try.
    assert time.monotonic() - started < 5
    assert info.value.retryable
    assert gets(gateway) == 4


async def test_a_huge_answer_is_cut_off_while_reading(gateway: HostileServer, conn: str) -> None:
    # No Content-Length (the body ends when the connection closes): refused once past the cap.
    gateway.route(STATUS, lambda _seen: Answer(200, JSON, huge_body(8 * MAX_ANSWER_BYTES)))
    with pytest.raises(FireRedResponseError, match="larger than"):
        FireRedHook(conn).get_status(RID)
    with pytest.raises(FireRedResponseError, match="larger than"):
        async with FireRedHook(conn) as hook:
            await hook.aget_status(RID)
    gateway.route(STATUS, Answer(200, {**JSON, "Content-Length": str(8 * MAX_ANSWER_BYTES)}, [b"{}"]))
    with pytest.raises(FireRedResponseError, match="larger than"):
        async with FireRedHook(conn) as hook:
            await hook.aget_status(RID)


# -- answers bounded in wall-clock time -----------------------------------------------------------


@pytest.fixture
def one_second_conn(gateway: HostileServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """One try, one second per exchange."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(gateway.url, request_timeout=1, retry_max_attempts=1)
    )
    return "firered_default"


def drip_answer(body: dict[str, Any], status: int = 200) -> Answer:
    """The body one byte every 0.2 s (about 15 s in all): each read is quick, the exchange is not."""
    data = json.dumps(body).encode().ljust(75)
    return Answer(status, {**JSON, "Content-Length": str(len(data))}, [bytes([b]) for b in data], drip=0.2)


def test_a_dripping_status_answer_is_cut_off_at_the_timeout(
    gateway: HostileServer, one_second_conn: str
) -> None:
    gateway.route(STATUS, drip_answer(status_body()))
    started = time.monotonic()
    with pytest.raises(FireRedConnectionError, match=r"within 1s") as info:
        FireRedHook(one_second_conn).get_status(RID)
    assert 0.9 < time.monotonic() - started < 4
    assert info.value.retryable


async def test_a_dripping_status_answer_is_cut_off_at_the_timeout_async(
    gateway: HostileServer, one_second_conn: str
) -> None:
    gateway.route(STATUS, drip_answer(status_body()))
    started = time.monotonic()
    with pytest.raises(FireRedConnectionError) as info:
        async with FireRedHook(one_second_conn) as hook:
            await hook.aget_status(RID)
    assert 0.9 < time.monotonic() - started < 4
    assert info.value.retryable


def test_a_dripping_submit_answer_is_not_posted_again(gateway: HostileServer, one_second_conn: str) -> None:
    gateway.route(SUBMIT, drip_answer({"request_id": RID, "status": "QUEUED"}, 202))
    started = time.monotonic()
    with pytest.raises(FireRedSubmitUncertainError, match="within 1s"):
        FireRedHook(one_second_conn).submit_edit(V11, "p", [IMAGE])
    assert time.monotonic() - started < 4
    assert gateway.posts() == 1


# -- the key is scrubbed from every text taken from an answer -------------------------------------


ECHOES = [
    json_answer({"error": f"Invalid subscription key {TEST_KEY}", "message": "denied"}, 401),
    json_answer({"error": "Unauthorized", "message": f"Access denied for key '{TEST_KEY}'."}, 401),
    Answer(401, {"Content-Type": "text/plain"}, f"Invalid subscription key {TEST_KEY}".encode()),
    Answer(503, {"Content-Type": "text/html"}, f"<p>upstream saw {TEST_KEY}</p>".encode()),
    # The key written with JSON escapes: found only once the body is decoded.
    Answer(403, JSON, b'{"message": "k=' + TEST_KEY.replace("-", "\\u002d").encode() + b'"}'),
    Answer(200, JSON, f"not json {TEST_KEY}".encode()),
]
ECHO_IDS = ["error", "message", "plain-text", "html-503", "json-escaped", "malformed-200"]


def assert_clean(*texts: str, replaced: bool = True) -> None:
    for text in texts:
        assert TEST_KEY not in text
    assert not replaced or any("***" in text for text in texts)


@pytest.mark.parametrize("answer", ECHOES, ids=ECHO_IDS)
def test_a_key_echoed_by_the_gateway_is_scrubbed(gateway: HostileServer, conn: str, answer: Answer) -> None:
    gateway.route("/", answer)
    errors: list[FireRedError] = []
    for call in (
        lambda: FireRedHook(conn).get_status(RID),
        lambda: FireRedHook(conn).submit_edit(V11, "p", [IMAGE]),
    ):
        with pytest.raises(FireRedError) as info:
            call()
        errors.append(info.value)
    ok, message = FireRedHook(conn).test_connection()
    assert not ok
    assert_clean(message, replaced=False)
    for err in errors:
        assert_clean(str(err), repr(err), *(str(v) for v in vars(err).values()))


@pytest.mark.parametrize("answer", ECHOES, ids=ECHO_IDS)
async def test_a_key_echoed_by_the_gateway_is_scrubbed_async(
    gateway: HostileServer, conn: str, answer: Answer
) -> None:
    gateway.route("/", answer)
    with pytest.raises(FireRedError) as info:
        async with FireRedHook(conn) as hook:
            await hook.aget_status(RID)
    assert_clean(str(info.value), repr(info.value), *(str(v) for v in vars(info.value).values()))


async def test_a_key_echoed_in_a_job_error_is_scrubbed(gateway: HostileServer, conn: str) -> None:
    gateway.route(STATUS, json_answer(status_body("FAILED", error=f"Bad input for key {TEST_KEY}")))
    sync_result = FireRedHook(conn).get_status(RID)
    async with FireRedHook(conn) as hook:
        async_result = await hook.aget_status(RID)
    for result in (sync_result, async_result):
        assert result.error == "Bad input for key ***"
        assert_clean(json.dumps(result.to_dict()), repr(result))


# -- a failed TLS handshake is never a sent submit ---------------------------------------------------


class PlainTcpServer:
    """Accepts connections, answers every one in plain HTTP (no TLS) and closes it; counts them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(65536))
                    conn.sendall(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_a_failed_tls_handshake_is_retried_as_never_sent(
    gateway: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hostile gateway speaks plain HTTP: the client's TLS handshake with it fails.
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(f"https://127.0.0.1:{gateway.port}"))
    with pytest.raises(FireRedConnectionError) as info:
        FireRedHook().submit_edit(V11, "p", [IMAGE])
    assert info.value.retryable  # nothing was sent: retried, and Airflow's retries may post it
    assert gateway.posts() == 0

    server = PlainTcpServer()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(f"https://127.0.0.1:{server.port}"))
        with pytest.raises(FireRedConnectionError):
            FireRedHook().submit_edit(V11, "p", [IMAGE])
    finally:
        server.stop()
    assert len(server.received) == 4  # every try of the policy, as for a refused connection
    for first in server.received:
        assert first[:1] == b"\x16"  # a TLS ClientHello, never an HTTP request
        assert b"POST" not in first
        assert TEST_KEY.encode() not in first


def test_a_submit_refused_for_good_is_not_uncertain(gateway: HostileServer, conn: str) -> None:
    gateway.route(SUBMIT, json_answer({"error": "Insufficient Balance", "message": "No balance."}, 402))
    with pytest.raises(FireRedApiError) as info:
        FireRedHook(conn).submit_edit(V11, "p", [IMAGE])
    assert not isinstance(info.value, FireRedSubmitUncertainError)
    assert (info.value.status_code, info.value.retryable) == (402, False)
    assert gateway.posts() == 1
