"""Media downloads from a CDN that answers badly on purpose (``tests/hostile.py`` on loopback)."""

from __future__ import annotations

import gzip
import socket
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.exceptions import FireRedDownloadError, FireRedError, FireRedValidationError
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.media.downloads import MAX_REDIRECTS
from tests.conftest import conn_uri_json
from tests.hostile import Answer, HostileServer, Seen, serving

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: No connection leaves the host in this module (see tests.hostile.connects).
pytestmark = pytest.mark.usefixtures("connects")

RID = "firered-image-edit-v1-1_019d0000-0000-0000-0000-0000000000aa"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
PNG_HEADERS = {"Content-Type": "image/png"}


def make_hook(monkeypatch: pytest.MonkeyPatch, gateway: str, **extras: Any) -> FireRedHook:
    """A hook whose gateway is ``gateway`` (never contacted here: only media is downloaded)."""
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(gateway, **extras))
    return FireRedHook()


@pytest.fixture
def cdn() -> Iterator[HostileServer]:
    """A fresh hostile CDN on loopback for one test."""
    with serving() as server:
        yield server


@pytest.fixture
def hook(cdn: HostileServer, monkeypatch: pytest.MonkeyPatch) -> FireRedHook:
    """A hook whose gateway is on loopback, like the cdn CDN."""
    return make_hook(monkeypatch, cdn.url, retry_max_attempts=2)


def gets(server: HostileServer, prefix: str = "/") -> list[Seen]:
    return [s for s in server.seen if s.method == "GET" and s.path.startswith(prefix)]


# -- wall-clock limit ------------------------------------------------------------------------------


def test_dripping_cdn_is_cut_off_at_request_timeout(
    cdn: HostileServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stop = time.monotonic() + 8  # bounds the test even if nothing cuts the drip

    def drip() -> Iterator[bytes]:
        yield PNG[:16]
        while time.monotonic() < stop:
            yield b"x"

    cdn.route("/slow.png", Answer(200, PNG_HEADERS, drip(), drip=0.25))
    slow = make_hook(monkeypatch, cdn.url, request_timeout=1.5, retry_max_attempts=1)
    started = time.monotonic()
    with pytest.raises(FireRedDownloadError, match=r"longer than the 1\.5s request_timeout") as info:
        slow.download(f"{cdn.url}/slow.png", tmp_path / "out.png")
    assert time.monotonic() - started < 4
    assert info.value.retryable  # a slow CDN may be quicker next time
    assert list(tmp_path.iterdir()) == []


# -- encodings and content -----------------------------------------------------------------------


def test_compressed_body_is_counted_consistently(
    hook: FireRedHook, cdn: HostileServer, tmp_path: Path
) -> None:
    packed = gzip.compress(PNG)
    # A CDN that compresses whatever it is asked: Content-Length is the compressed size.
    cdn.route("/gz.png", Answer(200, {**PNG_HEADERS, "Content-Encoding": "gzip"}, packed))
    hook.download(f"{cdn.url}/gz.png", tmp_path / "out.png", max_bytes=len(PNG))
    assert (tmp_path / "out.png").read_bytes() == PNG
    (request,) = gets(cdn)
    assert {k.lower(): v for k, v in request.headers.items()}["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/octet-stream", b"#!/usr/bin/env python\nimport os\n"),
        ("application/octet-stream", b"<html>Access denied</html>"),
        ("image/png", b"<?php system($_GET['c']); ?>"),
        ("image/svg+xml", b"<svg onload='alert(1)'/>  "),
    ],
)
def test_a_body_that_is_not_an_image_is_refused_for_good(
    hook: FireRedHook, cdn: HostileServer, tmp_path: Path, content_type: str, body: bytes
) -> None:
    cdn.route("/o", Answer(200, {"Content-Type": content_type}, body))
    with pytest.raises(FireRedDownloadError, match="not a PNG, JPEG, WebP or GIF image") as info:
        hook.download(f"{cdn.url}/o", tmp_path / "out.png")
    assert not info.value.retryable
    assert len(gets(cdn)) == 1
    assert list(tmp_path.iterdir()) == []


def test_octet_stream_image_is_saved_with_its_real_extension(
    hook: FireRedHook, cdn: HostileServer, tmp_path: Path
) -> None:
    cdn.route("/evil.py", Answer(200, {"Content-Type": "application/octet-stream"}, PNG))
    result = {
        "request_id": RID,
        "media_urls": [f"{cdn.url}/evil.py"],
        "media_type": "application/octet-stream",
    }
    (path,) = hook.download_outputs(result, str(tmp_path / "out"), max_outputs=1)
    assert path == str(tmp_path / "out" / f"{RID}_0.png")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{RID}_0.png"]


def test_outputs_to_object_storage_get_checked_names(
    cdn: HostileServer, hook: FireRedHook, tmp_path: Path
) -> None:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    try:
        base = ObjectStoragePath(f"file://{tmp_path}/store")
    except TypeError as err:  # Airflow 3.0's ObjectStoragePath with universal-pathlib 0.3
        pytest.skip(f"this Airflow cannot build a file:// ObjectStoragePath: {err}")
    cdn.route("/o", Answer(200, {"Content-Type": "application/octet-stream"}, PNG))
    result = {"request_id": RID, "media_urls": [f"{cdn.url}/o"], "media_type": "application/octet-stream"}
    (path,) = hook.download_outputs(result, base, max_outputs=1)
    assert path == str(base / f"{RID}_0.png")
    assert (tmp_path / "store" / f"{RID}_0.png").read_bytes() == PNG


def test_a_path_in_the_request_id_is_never_written(
    hook: FireRedHook, cdn: HostileServer, tmp_path: Path
) -> None:
    cdn.route("/x.py", Answer(200, {"Content-Type": "image/png"}, PNG))
    out = tmp_path / "dags" / "out"
    result = {"request_id": "../../x", "media_urls": [f"{cdn.url}/x.py"], "media_type": None}
    with pytest.raises(FireRedValidationError, match="request_id"):
        hook.download_outputs(result, str(out))
    assert gets(cdn) == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_more_media_urls_than_asked_for_downloads_nothing(
    hook: FireRedHook, cdn: HostileServer, tmp_path: Path
) -> None:
    cdn.route("/", Answer(200, PNG_HEADERS, PNG))
    urls = [f"{cdn.url}/{i}.png" for i in range(3)]
    with pytest.raises(FireRedError, match="lists 3 media URLs, more than the 2"):
        hook.download_outputs(
            {"request_id": RID, "media_urls": urls, "media_type": "image/png"}, tmp_path, max_outputs=2
        )
    assert gets(cdn) == []
    assert list(tmp_path.iterdir()) == []


# -- which hosts ------------------------------------------------------------------------------------


def test_media_on_loopback_is_refused_when_the_gateway_is_public(
    cdn: HostileServer, monkeypatch: pytest.MonkeyPatch, connects: list[Any], tmp_path: Path
) -> None:
    cdn.route("/o.png", Answer(200, PNG_HEADERS, PNG))
    public = make_hook(monkeypatch, "https://gateway.example.test")
    with pytest.raises(
        FireRedDownloadError, match="a loopback address: media is downloaded from public"
    ) as info:
        public.download(f"{cdn.url}/o.png", tmp_path / "out.png")
    assert not info.value.retryable
    assert cdn.seen == []
    assert connects == []

    opted_in = make_hook(monkeypatch, "https://gateway.example.test", allow_private_media_hosts=True)
    opted_in.download(f"{cdn.url}/o.png", tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes() == PNG


def test_redirect_on_loopback_is_followed_when_the_gateway_is_local(
    hook: FireRedHook, cdn: HostileServer, tmp_path: Path
) -> None:
    cdn.route("/a", Answer(302, {"Location": "/b/o.png"}))
    cdn.route("/b/", Answer(200, PNG_HEADERS, PNG))
    hook.download(f"{cdn.url}/a", tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes() == PNG
    assert [s.path for s in gets(cdn)] == ["/a", "/b/o.png"]


def test_redirect_to_cloud_metadata_is_refused_without_connecting(
    hook: FireRedHook, cdn: HostileServer, connects: list[Any], tmp_path: Path
) -> None:
    cdn.route("/a", Answer(302, {"Location": "http://169.254.169.254/latest/meta-data/"}))
    with pytest.raises(FireRedDownloadError, match=r"169\.254\.169\.254, a cloud metadata address") as info:
        hook.download(f"{cdn.url}/a", tmp_path / "out.png")
    assert not info.value.retryable
    assert [s.path for s in gets(cdn)] == ["/a"]  # refused for good: not tried again
    assert [a for a in connects if a[0] != "127.0.0.1"] == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("location", "match"),
    [
        ("/loop", f"more than {MAX_REDIRECTS} redirects"),
        ("file:///etc/passwd", "non-http"),
        ("gopher://127.0.0.1:1/x", "non-http"),
    ],
)
def test_bad_redirects_fail_for_good(
    hook: FireRedHook, cdn: HostileServer, tmp_path: Path, location: str, match: str
) -> None:
    cdn.route("/loop", Answer(301, {"Location": location}))
    with pytest.raises(FireRedDownloadError, match=match) as info:
        hook.download(f"{cdn.url}/loop", tmp_path / "out.png")
    assert not info.value.retryable
    assert len(gets(cdn)) == (MAX_REDIRECTS + 1 if location == "/loop" else 1)
    assert list(tmp_path.iterdir()) == []


# -- the environment and state ----------------------------------------------------------------------


def test_netrc_and_proxy_variables_are_not_used(
    hook: FireRedHook, cdn: HostileServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password s3cret-from-netrc\n")
    netrc.chmod(0o600)
    with socket.socket() as probe:  # a port with nothing listening: a proxy there fails every request
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    cdn.route("/o.png", Answer(200, PNG_HEADERS, PNG))
    hook.download(f"{cdn.url}/o.png", tmp_path / "out.png")
    (request,) = gets(cdn)
    assert "authorization" not in {k.lower() for k in request.headers}
    assert request.path == "/o.png"  # asked directly, not as a proxy's absolute URL


def test_cdn_cookies_are_not_kept(hook: FireRedHook, cdn: HostileServer, tmp_path: Path) -> None:
    cdn.route("/a.png", Answer(200, {**PNG_HEADERS, "Set-Cookie": "track=1; Path=/"}, PNG))
    hook.download(f"{cdn.url}/a.png", tmp_path / "a.png")
    hook.download(f"{cdn.url}/a.png", tmp_path / "b.png")
    assert ["cookie" in {k.lower() for k in s.headers} for s in gets(cdn)] == [False, False]


# -- what is worth another try ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (403, False),
        (404, False),
        (410, False),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
    ],
)
def test_cdn_statuses(
    hook: FireRedHook, cdn: HostileServer, tmp_path: Path, status: int, retryable: bool
) -> None:
    cdn.route("/o.png", Answer(status, {"Content-Type": "text/plain"}, b"no"))
    with pytest.raises(FireRedDownloadError, match=f"HTTP {status}") as info:
        hook.download(f"{cdn.url}/o.png", tmp_path / "out.png")
    assert info.value.retryable is retryable
    assert len(gets(cdn)) == (2 if retryable else 1)  # the connection allows 2 attempts


def test_a_truncated_body_stays_retryable(hook: FireRedHook, cdn: HostileServer, tmp_path: Path) -> None:
    headers = {**PNG_HEADERS, "Content-Length": str(len(PNG) + 1000), "Connection": "close"}
    cdn.route("/o.png", Answer(200, headers, [PNG]))
    with pytest.raises(FireRedDownloadError, match="truncated") as info:
        hook.download(f"{cdn.url}/o.png", tmp_path / "out.png")
    assert info.value.retryable
    assert len(gets(cdn)) == 2
    assert list(tmp_path.iterdir()) == []


# -- https: the socket goes to the checked address, the certificate is checked against the name -----


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` only (no IP address in it), and its key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_cdn(tmp_path: Path) -> Iterator[tuple[HostileServer, Path]]:
    """The hostile CDN over TLS on 127.0.0.1, with a certificate for ``localhost``."""
    import ssl

    cert, key = self_signed(tmp_path, "localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = HostileServer()
    server._httpd.socket = context.wrap_socket(server._httpd.socket, server_side=True)
    server.start()
    try:
        yield server, cert
    finally:
        server.stop()


def test_https_media_keeps_the_host_name_for_the_certificate(
    tls_cdn: tuple[HostileServer, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server, cert = tls_cdn
    server.route("/o.png", Answer(200, PNG_HEADERS, PNG))
    hook = make_hook(monkeypatch, "http://127.0.0.1:1", retry_max_attempts=1)
    hook._media_session.verify = str(cert)  # trust the test certificate, still checking the name
    hook.download(f"https://localhost:{server.port}/o.png", tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes() == PNG
    # The certificate names localhost only: asked by address, the name check fails.
    with pytest.raises(FireRedDownloadError, match="SSLError"):
        hook.download(f"https://127.0.0.1:{server.port}/o.png", tmp_path / "other.png")
    assert not (tmp_path / "other.png").exists()


def test_dripping_cdn_over_tls_is_cut_off_at_request_timeout(
    tls_cdn: tuple[HostileServer, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server, cert = tls_cdn
    stop = time.monotonic() + 8  # bounds the test even if nothing cuts the drip

    def drip() -> Iterator[bytes]:
        yield PNG[:16]
        while time.monotonic() < stop:
            yield b"x"

    server.route("/slow.png", Answer(200, PNG_HEADERS, drip(), drip=0.25))
    hook = make_hook(monkeypatch, "http://127.0.0.1:1", request_timeout=1.5, retry_max_attempts=1)
    hook._media_session.verify = str(cert)
    started = time.monotonic()
    with pytest.raises(FireRedDownloadError, match=r"longer than the 1\.5s request_timeout"):
        hook.download(f"https://localhost:{server.port}/slow.png", tmp_path / "out" / "out.png")
    assert time.monotonic() - started < 4
    assert list((tmp_path / "out").iterdir()) == []
