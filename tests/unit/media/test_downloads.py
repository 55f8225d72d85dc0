"""Download checks that need no server: output names, targets, media host classification and refusal."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_firered.exceptions import (
    FireRedDownloadError,
    FireRedResponseError,
    FireRedValidationError,
)
from airflow_provider_firered.gateway.connection import GatewaySettings
from airflow_provider_firered.gateway.options import MAX_NUM_IMAGES
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.media import downloads, output_paths
from airflow_provider_firered.media import hosts as media_hosts
from airflow_provider_firered.utils.retry import RetryPolicy
from tests.conftest import TEST_KEY, conn_uri_json

#: No connection leaves the host in this module (see tests.hostile.connects).
pytestmark = pytest.mark.usefixtures("connects")

PUBLIC_GATEWAY = "https://gateway.example.test"
RID = "firered-image-edit-v1-1_019d0000-0000-0000-0000-000000000001"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def settings(base_url: str = PUBLIC_GATEWAY, **fields: Any) -> GatewaySettings:
    return GatewaySettings(base_url=base_url, api_key=TEST_KEY, retry=RetryPolicy(max_attempts=3), **fields)


# -- output names and targets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "name"),
    [
        ("image/png", f"{RID}_0.png"),
        ("image/jpeg", f"{RID}_0.jpg"),
        ("IMAGE/WEBP", f"{RID}_0.webp"),
        ("image/gif; charset=binary", f"{RID}_0.gif"),
        ("application/octet-stream", f"{RID}_0.bin"),
        ("image/svg+xml", f"{RID}_0.bin"),
        ("text/x-python", f"{RID}_0.bin"),
        (None, f"{RID}_0.bin"),
    ],
)
def test_output_name_uses_the_id_the_index_and_a_fixed_extension(media_type: str | None, name: str) -> None:
    assert output_paths.output_name(RID, 0, media_type) == name


@pytest.mark.parametrize("request_id", ["../../x", "/etc/cron.d/x", "a/b", "a\\b", "", ".hidden", "x\0y", 7])
def test_output_name_refuses_an_id_that_is_not_a_plain_gateway_id(request_id: Any) -> None:
    with pytest.raises(FireRedValidationError) as info:
        output_paths.output_name(request_id, 0, "image/png")
    assert info.value.field == "request_id"


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        ("file://localhost/srv/out/a.png", "/srv/out/a.png"),
        ("file://LOCALHOST/srv/out", "/srv/out"),
        ("file:///srv/out/a%20b.png", "/srv/out/a b.png"),
        ("/srv/out/a.png", "/srv/out/a.png"),
        ("relative/out", "relative/out"),
    ],
)
def test_local_targets(destination: str, expected: str) -> None:
    assert output_paths.as_target(destination) == Path(expected)


@pytest.mark.parametrize("destination", ["file://fileserver/share/out", "file://127.0.0.1/srv/out"])
def test_file_url_naming_another_host_is_refused(destination: str) -> None:
    with pytest.raises(FireRedValidationError, match="no host or localhost") as info:
        output_paths.as_target(destination, field_name="output_dir")
    assert info.value.field == "output_dir"


def test_target_inside_a_local_output_dir(tmp_path: Path) -> None:
    base = tmp_path / "out"
    base.mkdir()
    output_paths.check_inside(base / "x_0.png", base)
    with pytest.raises(FireRedValidationError, match="not inside"):
        output_paths.check_inside(base / ".." / "x_0.py", base)
    with pytest.raises(FireRedValidationError, match="not inside"):
        output_paths.check_inside(Path("/etc/x_0.png"), base)
    (base / "link_0.png").symlink_to(tmp_path / "elsewhere.png")  # a planted link out of the folder
    with pytest.raises(FireRedValidationError, match="not inside"):
        output_paths.check_inside(base / "link_0.png", base)


def test_target_inside_an_object_storage_output_dir() -> None:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    try:
        base = ObjectStoragePath("memory://bucket/edits/run")
    except TypeError as err:  # Airflow 3.0's ObjectStoragePath with universal-pathlib 0.3
        pytest.skip(f"this Airflow cannot build a memory:// ObjectStoragePath: {err}")
    output_paths.check_inside(base / "x_0.png", base)
    for escaped in (base / ".." / "x_0.png", base / "../../other/x_0.png", ObjectStoragePath("memory://b/x")):
        with pytest.raises(FireRedValidationError, match="not inside"):
            output_paths.check_inside(escaped, base)


# -- media hosts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.170.2", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "reserved"),
        ("100.64.0.1", "reserved"),
        ("224.0.0.1", "reserved"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "reserved"),
    ],
)
def test_address_kind(address: str, kind: str | None) -> None:
    assert media_hosts.address_kind(address) == kind


@pytest.mark.parametrize(
    ("base_url", "allow_private", "local", "private"),
    [
        (PUBLIC_GATEWAY, False, False, False),
        (PUBLIC_GATEWAY, True, False, True),
        ("http://127.0.0.1:8080", False, True, False),
        ("http://localhost:8080", False, True, False),
        ("https://[::1]:8443", False, True, False),
        ("https://10.0.0.5", False, True, False),
        ("https://169.254.169.254", False, False, False),  # a metadata "gateway" allows nothing
    ],
)
def test_media_host_policy_follows_the_gateway_and_the_extra(
    base_url: str, allow_private: bool, local: bool, private: bool
) -> None:
    policy = media_hosts.MediaHostPolicy.for_settings(
        settings(base_url, allow_private_media_hosts=allow_private)
    )
    assert (policy.allow_local, policy.allow_private) == (local, private)


REFUSED = [
    ("http://169.254.169.254/latest/meta-data/iam", PUBLIC_GATEWAY, False, "cloud metadata"),
    ("http://169.254.169.254/latest/meta-data/iam", PUBLIC_GATEWAY, True, "cloud metadata"),
    ("http://169.254.169.254/latest/meta-data/iam", "http://127.0.0.1:1", False, "cloud metadata"),
    ("http://[fd00:ec2::254]/latest", PUBLIC_GATEWAY, True, "cloud metadata"),
    ("http://10.0.0.1/a.png", PUBLIC_GATEWAY, False, "private"),
    ("http://127.0.0.1:9/a.png", PUBLIC_GATEWAY, False, "loopback"),
    ("http://[::1]:9/a.png", PUBLIC_GATEWAY, False, "loopback"),
    ("http://localhost:9/a.png", PUBLIC_GATEWAY, False, "loopback"),
    ("http://169.254.1.1/a.png", "http://127.0.0.1:1", False, "link-local"),
    ("http://0.0.0.0:9/a.png", PUBLIC_GATEWAY, False, "reserved"),
]


@pytest.mark.parametrize(("url", "gateway", "allow_private", "kind"), REFUSED)
def test_refused_media_host_fails_for_good_without_connecting(
    connects: list[Any], tmp_path: Path, url: str, gateway: str, allow_private: bool, kind: str
) -> None:
    conf = settings(gateway, allow_private_media_hosts=allow_private)
    with pytest.raises(FireRedDownloadError, match=f"refused media host .*a {kind} address") as info:
        downloads.download(media_hosts.new_media_session(), conf, url, tmp_path / "out.png")
    assert not info.value.retryable
    assert connects == []
    assert list(tmp_path.iterdir()) == []


def test_media_session_takes_nothing_from_the_environment() -> None:
    session = media_hosts.new_media_session()
    assert session.trust_env is False
    assert session.headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize(
    ("head", "suffix"),
    [
        (PNG, ".png"),
        (b"\xff\xd8\xff\xe0\0\x10JFIF\0", ".jpg"),
        (b"RIFF\x24\0\0\0WEBPVP8 ", ".webp"),
        (b"GIF89a\x01\0\x01\0\0\0", ".gif"),
        (b"GIF87a\x01\0\x01\0\0\0", ".gif"),
        (b"<html><body>", None),
        (b"#!/usr/bin/env python", None),
        (b"RIFF\x24\0\0\0WAVEfmt ", None),
        (b"", None),
    ],
)
def test_image_signatures(head: bytes, suffix: str | None) -> None:
    assert downloads.image_suffix(head) == suffix


# -- download_outputs: what the answer may ask for ------------------------------------------------


@pytest.fixture
def public_hook(monkeypatch: pytest.MonkeyPatch) -> FireRedHook:
    """A hook on a public https gateway that is never contacted (the tests fail before any request)."""
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_DEFAULT", conn_uri_json(PUBLIC_GATEWAY))
    return FireRedHook()


def result(
    request_id: str = RID, count: int = 1, url: str = "https://cdn.example.test/o.png"
) -> dict[str, Any]:
    return {"request_id": request_id, "media_urls": [f"{url}?{i}" for i in range(count)], "media_type": None}


@pytest.mark.parametrize("output_dir", [None, "out"])
def test_more_media_urls_than_asked_for_is_a_bad_answer(
    public_hook: FireRedHook, connects: list[Any], tmp_path: Path, output_dir: str | None
) -> None:
    target = str(tmp_path / output_dir) if output_dir else None
    with pytest.raises(FireRedResponseError, match=f"lists {MAX_NUM_IMAGES + 1} media URLs") as info:
        public_hook.download_outputs(result(count=MAX_NUM_IMAGES + 1), target)
    assert not info.value.retryable
    with pytest.raises(FireRedResponseError, match="more than the 2 the edit asked for"):
        public_hook.download_outputs(result(count=3), target, max_outputs=2)
    assert connects == []
    assert list(tmp_path.iterdir()) == []


def test_no_bound_when_max_outputs_is_none(public_hook: FireRedHook) -> None:
    assert public_hook.download_outputs(result(count=20), None, max_outputs=None) == []


@pytest.mark.parametrize("request_id", ["../../dags/x", "/tmp/x", "..", "a/../../b"])
def test_a_path_in_the_request_id_writes_nothing(
    public_hook: FireRedHook, connects: list[Any], tmp_path: Path, request_id: str
) -> None:
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(FireRedValidationError, match="request_id"):
        public_hook.download_outputs(result(request_id, url="https://cdn.example.test/x.py"), out)
    assert connects == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# -- writing a download -------------------------------------------------------------------------------


def test_a_download_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victims: list[Path] = []
    for planted in (f"{RID}_0.bin", f"{RID}_0.png", f".{RID}_0.bin.part"):
        victims.append(tmp_path / f"victim{len(victims)}")
        victims[-1].write_text("precious")
        (out / planted).symlink_to(victims[-1])
    stale = out / f".{RID}_0.png.k1ll3d.part"  # as a try killed mid-download leaves it
    stale.write_bytes(b"\x89PNG half")
    seen: list[Path] = []

    def fetch(part: Any) -> str:
        part.write(b"half a first try")  # a retry starts the file again (_fetch_to_file truncates)
        part.seek(0)
        part.truncate()
        part.write(PNG)
        seen.extend(p for p in out.iterdir() if p.name.endswith(".part") and not p.is_symlink())
        return ".png"

    written = downloads._download_local(fetch, out / f"{RID}_0.bin", suffix_from_content=True)

    assert written == str(out / f"{RID}_0.png")
    assert [victim.read_text() for victim in victims] == ["precious"] * 3
    assert (out / f"{RID}_0.png").read_bytes() == PNG
    assert not (out / f"{RID}_0.png").is_symlink()
    assert (out / f"{RID}_0.png").stat().st_mode & 0o777 == 0o666 & ~_umask()
    # The temporary file had the `.<name>.<random>.part` form, and the stale part is gone.
    assert any(re.fullmatch(rf"\.{re.escape(RID)}_0\.bin\.\w+\.part", p.name) for p in seen)
    assert not stale.exists()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
