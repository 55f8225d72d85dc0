"""Batch items are checked before anything is paid, and fingerprinted from what their outputs depend on."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.batch.items import BatchItem, check_items, fingerprint, source_identities
from airflow_provider_firered.gateway.connection import GatewaySettings
from airflow_provider_firered.utils.retry import RetryPolicy
from tests.conftest import TEST_KEY
from tests.hostile import Answer, HostileServer

if TYPE_CHECKING:
    from collections.abc import Iterator

IMAGE = "https://example.com/a.png"
V11 = "firered-image-edit-v1-1"


def item(**fields: Any) -> dict[str, Any]:
    return {"key": "SKU-1", "prompt": "Make it blue", "images": [IMAGE], **fields}


@pytest.mark.parametrize(
    ("edits", "reported", "message"),
    [
        ([item(key="../x")], "#0", "edits[0].key: must be a plain folder name"),
        ([item(key="a/b")], "#0", "edits[0].key: must be a plain folder name"),
        ([item(key="")], "#0", "edits[0].key: must be a plain folder name"),
        ([item(key=".hidden")], "#0", "edits[0].key: must be a plain folder name"),
        ([item(key="x" * 129)], "#0", "edits[0].key: must be a plain folder name"),
        ([item(key=7)], "#0", "edits[0].key: must be a plain folder name"),
        ([item(), item(prompt="again")], "#1", "edits[1].key: 'SKU-1' is used by an earlier item"),
        ([item(prompt="")], "SKU-1", "edits[0].prompt: "),
        ([item(images=["ftp://x/a.png"])], "SKU-1", "edits[0].images"),
        ([item(parameters={"num_images": 99})], "SKU-1", "edits[0].parameters.num_images"),
        ([item(model="no-such-model")], "SKU-1", "edits[0].model"),
        ([item(colour="red")], "SKU-1", "edits[0].colour: is not an item field"),
        (["SKU-1"], "#0", "edits[0]: must be a mapping"),
    ],
)
def test_each_bad_item_is_reported_naming_its_field(edits: list[Any], reported: str, message: str) -> None:
    items, invalid = check_items(edits, V11, None)
    (bad,) = invalid
    assert bad.key == reported
    assert message in bad.error
    assert len(items) == len(edits) - 1


@pytest.mark.parametrize("edits", ["SKU-1", {"key": "SKU-1"}, None, 3])
def test_edits_must_be_a_list(edits: Any) -> None:
    with pytest.raises(ValueError, match=r"^edits: must be a list of items"):
        check_items(edits, V11, None)


def test_an_item_may_override_the_model_and_parameters() -> None:
    (one, two), _ = check_items(
        [item(), item(key="SKU-2", model="firered-image-edit", parameters={"output_format": "png"})],
        V11,
        {"num_images": 2},
    )
    assert (one.model, dict(one.parameters)) == (V11, {"num_images": 2})
    assert (two.model, dict(two.parameters)) == ("firered-image-edit", {"output_format": "png"})


def built(**fields: Any) -> BatchItem:
    (one,), _ = check_items([item(**fields)], V11, None)
    return one


def test_the_fingerprint_covers_model_prompt_parameters_and_image_identity() -> None:
    identity = {IMAGE: {"url": IMAGE, "etag": '"v1"'}}
    base = fingerprint(built(), identity)
    assert base is not None
    assert fingerprint(built(), identity) == base
    assert fingerprint(built(key="OTHER"), identity) == base  # the key is where, not what
    assert fingerprint(built(prompt="Make it red"), identity) != base
    assert fingerprint(built(parameters={"num_images": 2}), identity) != base
    assert fingerprint(built(model="firered-image-edit"), identity) != base
    assert fingerprint(built(), {IMAGE: {"url": IMAGE, "etag": '"v2"'}}) != base
    assert fingerprint(built(), {IMAGE: None}) is None  # unknown identity: never taken for unchanged


def settings(base_url: str) -> GatewaySettings:
    return GatewaySettings(
        base_url=base_url, api_key=TEST_KEY, retry=RetryPolicy(max_attempts=2), request_timeout=2
    )


def test_source_identities_come_from_head_answers(hostile: HostileServer) -> None:
    hostile.route(
        "/etag.png",
        Answer(
            200, {"ETag": '"abc"', "Last-Modified": "Tue, 24 Nov 2026 10:00:00 GMT", "Content-Length": "42"}
        ),
    )
    hostile.route("/bare.png", Answer(200, {"Content-Length": "0"}))
    hostile.route("/gone.png", Answer(404))
    hostile.route("/moved.png", Answer(302, {"Location": "/etag.png"}))
    hostile.route("/meta.png", Answer(302, {"Location": "http://169.254.169.254/latest/"}))
    urls = [f"{hostile.url}/{name}" for name in ("etag.png", "bare.png", "gone.png", "moved.png", "meta.png")]
    found = source_identities([*urls, urls[0]], settings(hostile.url), threads=3)
    assert found[urls[0]] == {
        "url": urls[0],
        "etag": '"abc"',
        "last-modified": "Tue, 24 Nov 2026 10:00:00 GMT",
        "content-length": "42",
    }
    assert found[urls[1]] == {"url": urls[1], "content-length": "0"}  # no validators: the URL (and size)
    assert found[urls[2]] is None  # the source cannot tell: never reused
    first = found[urls[0]]
    assert first is not None
    assert found[urls[3]] == {**first, "url": urls[3]}  # checked redirects are followed
    assert found[urls[4]] is None  # a metadata address is refused, as for downloads
    heads = [seen for seen in hostile.seen if seen.method == "HEAD"]
    assert len([seen for seen in heads if seen.path == "/etag.png"]) == 2  # asked once, plus the redirect
    assert all("Ocp-Apim-Subscription-Key" not in seen.headers for seen in hostile.seen)
    assert hostile.posts() == 0


# -- the HEAD phase's deadline ----------------------------------------------------------------------------


class SilentHost:
    """A host on loopback that accepts every connection and never answers: a HEAD to it hangs."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read from or answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentHost]:
    host = SilentHost()
    try:
        yield host
    finally:
        host.close()


def slow_settings(base_url: str) -> GatewaySettings:
    # A 30 s request timeout: without the deadline, 32 silent HEADs in 8 threads take 2 minutes.
    return GatewaySettings(
        base_url=base_url, api_key=TEST_KEY, retry=RetryPolicy(max_attempts=1), request_timeout=30
    )


@pytest.mark.timeout(20)
def test_the_head_phase_ends_at_its_deadline_against_a_silent_host(silent: SilentHost) -> None:
    urls = [f"{silent.url}/sku-{n}.png" for n in range(32)]
    found = source_identities(urls, slow_settings(silent.url), threads=8, deadline=time.time() + 1)
    assert found == dict.fromkeys(urls)  # none identified: all counted as changed
    # One HEAD per thread started, cut at the deadline; none started after it.
    assert 1 <= len(silent.accepted) <= 8


@pytest.mark.timeout(20)
def test_heads_answered_before_the_deadline_are_kept(hostile: HostileServer, silent: SilentHost) -> None:
    hostile.route("/fast", Answer(200, {"ETag": '"v1"', "Content-Length": "0"}))
    fast = [f"{hostile.url}/fast-{n}.png" for n in range(4)]
    stuck = [f"{silent.url}/sku-{n}.png" for n in range(32)]
    found = source_identities(
        [*fast, *stuck], slow_settings(hostile.url), threads=8, deadline=time.time() + 2
    )
    assert [found[url] for url in fast] == [
        {"url": url, "etag": '"v1"', "content-length": "0"} for url in fast
    ]
    assert [found[url] for url in stuck] == [None] * len(stuck)
    assert 1 <= len(silent.accepted) <= 8


def test_no_head_is_sent_once_the_deadline_has_passed(hostile: HostileServer) -> None:
    hostile.route("/", Answer(200, {"ETag": '"v1"'}))
    urls = [f"{hostile.url}/sku-{n}.png" for n in range(4)]
    assert source_identities(urls, settings(hostile.url), deadline=time.time() - 1) == dict.fromkeys(urls)
    assert hostile.seen == []


def test_without_a_deadline_every_head_is_awaited(hostile: HostileServer) -> None:
    hostile.route("/", Answer(200, {"ETag": '"v1"'}))
    urls = [f"{hostile.url}/sku-{n}.png" for n in range(12)]
    found = source_identities(urls, settings(hostile.url), threads=3)
    assert all(found[url] == {"url": url, "etag": '"v1"', "content-length": "0"} for url in urls)
    assert len(hostile.seen) == 12
