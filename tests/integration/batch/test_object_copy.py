"""
Reusing an earlier output on S3 (SeaweedFS, a real S3 server on loopback): within one store the
object is checked by its first bytes (the answer also gives its size) and copied server-side, pinned
to the version checked; between stores, or on a filesystem without a server-side copy, it is
streamed as before.

What the worker asks the store is seen through the S3 client's own events: every operation, and the
length of every object body it is sent (``GetObject``).
"""

from __future__ import annotations

import contextlib
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.batch.earlier_runs import EarlierBatch, NotReusable, copy_outputs
from airflow_provider_firered.batch.object_copy import SIGNATURE_BYTES
from tests.devtools.servers import started
from tests.unit.batch.conftest import memory_path, memory_store  # noqa: F401 (a fixture)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from airflow.providers.common.compat.sdk import ObjectStoragePath
    from firered_devtools.seaweedfs import SeaweedS3

pytestmark = pytest.mark.timeout(240)

BUCKET = "firered"
RID = "firered-image-edit-v1-1_019d0000-0000-0000-0000-000000000001"
PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff\xe0"
#: An output as large as a real one: the streaming copy moves all of it, the server-side one 12 bytes.
MEGABYTE = 1024 * 1024
#: The operations that carry an object's bytes from the worker to the store.
UPLOADS = frozenset({"PutObject", "UploadPart", "CreateMultipartUpload"})


def image(kind: bytes, size: int) -> bytes:
    """Return ``size`` bytes that start as an image of ``kind`` (random after the signature)."""
    return kind + secrets.token_bytes(size - len(kind))


@dataclass(frozen=True)
class Item:
    """An earlier item, as :func:`copy_outputs` reads a manifest entry."""

    key: str
    request_id: str | None
    outputs: Sequence[str]


@dataclass
class Traffic:
    """What one S3 filesystem asked the store: its operations, and the body bytes it was sent."""

    calls: list[str] = field(default_factory=list)
    downloaded: int = 0

    def before(self, event_name: str, **_: Any) -> None:
        self.calls.append(event_name.rsplit(".", 1)[-1])

    def after_get(self, parsed: dict[str, Any], **_: Any) -> None:
        self.downloaded += int(parsed.get("ContentLength") or 0)


@contextlib.contextmanager
def watched(fs: Any) -> Iterator[Traffic]:
    """Count what ``fs`` (an ``s3fs`` filesystem) asks its store while the block runs."""
    fs.connect()
    events = fs.s3.meta.events
    traffic = Traffic()
    events.register("before-call.s3", traffic.before, unique_id="firered-traffic-before")
    events.register("after-call.s3.GetObject", traffic.after_get, unique_id="firered-traffic-get")
    try:
        yield traffic
    finally:
        events.unregister("before-call.s3", unique_id="firered-traffic-before")
        events.unregister("after-call.s3.GetObject", unique_id="firered-traffic-get")


@contextlib.contextmanager
def before(fs: Any, operation: str, act: Callable[[], object]) -> Iterator[None]:
    """Run ``act`` once, just before ``fs`` next sends ``operation`` to its store."""
    done: list[bool] = []

    def hook(**_: Any) -> None:
        if not done:
            done.append(True)
            act()

    unique_id = f"firered-before-{operation}"
    fs.connect()
    fs.s3.meta.events.register(f"before-call.s3.{operation}", hook, unique_id=unique_id)
    try:
        yield
    finally:
        fs.s3.meta.events.unregister(f"before-call.s3.{operation}", unique_id=unique_id)
    assert done, f"{operation} was never sent"


@dataclass
class S3:
    """The running store, and two connections to it (two stores, as far as Airflow can tell)."""

    server: SeaweedS3
    conn: str
    other_conn: str

    def path(self, key: str, conn: str | None = None) -> ObjectStoragePath:
        from airflow.providers.common.compat.sdk import ObjectStoragePath

        return ObjectStoragePath(f"s3://{conn or self.conn}@{BUCKET}/{key}")

    def put(self, key: str, body: bytes) -> str:
        self.server.client().put_object(Bucket=BUCKET, Key=key, Body=body)
        return str(self.path(key))

    def get(self, key: str) -> bytes:
        return bytes(self.server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def keys(self, prefix: str) -> list[str]:
        return sorted(self.server.keys(BUCKET, prefix))


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """One SeaweedFS server for the module (loopback, free ports), stopped with its files at the end."""
    pytest.importorskip("airflow.providers.amazon", reason="apache-airflow-providers-amazon is not installed")
    pytest.importorskip("s3fs", reason="s3fs (apache-airflow-providers-amazon[s3fs]) is not installed")
    from firered_devtools.seaweedfs import SeaweedS3, SeaweedUnavailable

    server = started(lambda: SeaweedS3(buckets=(BUCKET,), timeout=60), SeaweedUnavailable, "SeaweedFS")
    # Fresh connection ids: Airflow keeps one filesystem per connection id for the whole process.
    suffix = secrets.token_hex(4)
    conns = (f"firered_copy_{suffix}", f"firered_copy_other_{suffix}")
    try:
        with pytest.MonkeyPatch.context() as patch:
            for conn in conns:
                patch.setenv(f"AIRFLOW_CONN_{conn.upper()}", server.connection())
            yield S3(server, *conns)
    finally:
        server.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """Each test's own prefix in the bucket."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:80] + "-" + secrets.token_hex(3)


@pytest.mark.newest
def test_a_reuse_on_s3_is_copied_server_side_reading_only_the_signature(s3: S3, prefix: str) -> None:
    png, jpeg = image(PNG, MEGABYTE), image(JPEG, 3000)
    outputs = [s3.put(f"{prefix}/night1/A/old_0.webp", png), s3.put(f"{prefix}/night1/A/old_1", jpeg)]
    target_dir = s3.path(f"{prefix}/night2/A")
    with watched(target_dir.fs) as traffic:
        copies = copy_outputs(
            Item("A", RID, outputs), EarlierBatch(s3.path(f"{prefix}/night1")), target_dir, max_bytes=MEGABYTE
        )
    # Named by this run's output name, byte for byte the earlier outputs, nothing else written.
    assert copies == [str(target_dir / f"{RID}_0.png"), str(target_dir / f"{RID}_1.jpg")]
    assert s3.keys(f"{prefix}/night2/") == [
        f"{prefix}/night2/A/{RID}_0.png",
        f"{prefix}/night2/A/{RID}_1.jpg",
    ]
    assert s3.get(f"{prefix}/night2/A/{RID}_0.png") == png
    assert s3.get(f"{prefix}/night2/A/{RID}_1.jpg") == jpeg
    # The store copied them: the worker was sent only their signatures and uploaded nothing.
    assert 0 < traffic.downloaded <= 2 * SIGNATURE_BYTES, traffic.downloaded
    assert not UPLOADS & set(traffic.calls), traffic.calls
    # Two requests per output: its first bytes (with its size and ETag), then the copy.
    assert sorted(traffic.calls) == ["CopyObject", "CopyObject", "GetObject", "GetObject"], traffic.calls


def _refused(s3: S3, prefix: str, case: str) -> tuple[list[str], int, str]:
    """Lay out an earlier item that cannot be reused; return its outputs, the byte limit and why."""
    good = s3.put(f"{prefix}/night1/A/good.png", image(PNG, 4000))
    if case == "too large":
        return [s3.put(f"{prefix}/night1/A/big.png", image(PNG, 5000))], 4999, "larger than the 4999-byte"
    if case == "not an image":
        page = s3.put(f"{prefix}/night1/A/page.png", b"<html><script>alert(1)</script></html>")
        return [page], MEGABYTE, "is not a PNG, JPEG, WebP or GIF image"
    if case == "another item's":
        return [s3.put(f"{prefix}/night1/B/other.png", image(PNG, 100))], MEGABYTE, "is not a file of"
    if case == "a folder":
        s3.put(f"{prefix}/night1/A/sub/x.png", image(PNG, 100))
        # Only a prefix of other objects: no object by that name (nothing to read, nothing copied).
        return [str(s3.path(f"{prefix}/night1/A/sub"))], MEGABYTE, "key does not exist"
    if case == "empty":
        return [s3.put(f"{prefix}/night1/A/empty.png", b"")], MEGABYTE, "empty.png"
    if case == "missing":
        return [str(s3.path(f"{prefix}/night1/A/gone.png"))], MEGABYTE, "gone.png"
    assert case == "the second of two"
    return [good, s3.put(f"{prefix}/night1/A/big.png", image(PNG, 5000))], 4999, "larger than the 4999-byte"


@pytest.mark.newest
@pytest.mark.parametrize(
    "case",
    ["too large", "not an image", "another item's", "a folder", "empty", "missing", "the second of two"],
)
def test_an_output_refused_on_s3_leaves_nothing_behind(s3: S3, prefix: str, case: str) -> None:
    outputs, max_bytes, why = _refused(s3, prefix, case)
    target_dir = s3.path(f"{prefix}/night2/A")
    with watched(target_dir.fs) as traffic, pytest.raises(NotReusable, match=re.escape(why)):
        copy_outputs(
            Item("A", RID, outputs),
            EarlierBatch(s3.path(f"{prefix}/night1")),
            target_dir,
            max_bytes=max_bytes,
        )
    assert s3.keys(f"{prefix}/night2/") == []
    assert not UPLOADS & set(traffic.calls), traffic.calls
    assert traffic.downloaded <= len(outputs) * SIGNATURE_BYTES, traffic.downloaded


@pytest.mark.newest
def test_an_object_replaced_after_its_check_is_not_copied(s3: S3, prefix: str) -> None:
    # Replaced by another image of the same size between the read of its first bytes and the copy:
    # the store refuses the copy, pinned to the version checked.
    checked, replacement = image(PNG, 2000), image(PNG, 2000)
    output = s3.put(f"{prefix}/night1/A/old.png", checked)
    target_dir = s3.path(f"{prefix}/night2/A")
    with (
        before(target_dir.fs, "CopyObject", lambda: s3.put(f"{prefix}/night1/A/old.png", replacement)),
        pytest.raises(NotReusable, match=r"was not copied as checked .*replaced since"),
    ):
        copy_outputs(
            Item("A", RID, [output]),
            EarlierBatch(s3.path(f"{prefix}/night1")),
            target_dir,
            max_bytes=MEGABYTE,
        )
    assert s3.keys(f"{prefix}/night2/") == []
    assert s3.get(f"{prefix}/night1/A/old.png") == replacement


@pytest.mark.newest
def test_the_version_checked_is_the_version_copied(s3: S3, prefix: str) -> None:
    # Replaced before its first bytes are read: the replacement is what is checked, so it is what
    # is copied (a non-image replacement is refused as any non-image is).
    output = s3.put(f"{prefix}/night1/A/old.png", image(PNG, 2000))
    replacement = image(JPEG, 3000)
    target_dir = s3.path(f"{prefix}/night2/A")
    with before(target_dir.fs, "GetObject", lambda: s3.put(f"{prefix}/night1/A/old.png", replacement)):
        copies = copy_outputs(
            Item("A", RID, [output]),
            EarlierBatch(s3.path(f"{prefix}/night1")),
            target_dir,
            max_bytes=MEGABYTE,
        )
    assert copies == [str(target_dir / f"{RID}_0.jpg")]
    assert s3.get(f"{prefix}/night2/A/{RID}_0.jpg") == replacement
    page = b"<html><script>alert(1)</script></html>"
    with (
        before(target_dir.fs, "GetObject", lambda: s3.put(f"{prefix}/night1/A/old.png", page)),
        pytest.raises(NotReusable, match="is not a PNG, JPEG, WebP or GIF image"),
    ):
        copy_outputs(
            Item("A", RID, [output]),
            EarlierBatch(s3.path(f"{prefix}/night1")),
            s3.path(f"{prefix}/night3/A"),
            max_bytes=MEGABYTE,
        )
    assert s3.keys(f"{prefix}/night3/") == []


@pytest.mark.newest
def test_between_two_stores_the_output_is_streamed(s3: S3, prefix: str, tmp_path: Path) -> None:
    # Two connections to one server are two stores to Airflow: the output passes through the worker,
    # and the counting sees all of it (what the server-side copy is measured against).
    png = image(PNG, MEGABYTE)
    output = s3.put(f"{prefix}/night1/A/old.png", png)
    root = s3.path(f"{prefix}/night1")
    earlier = EarlierBatch(root)
    target_dir = s3.path(f"{prefix}/night2/A", conn=s3.other_conn)
    assert root.fs is not target_dir.fs
    with watched(root.fs) as read, watched(target_dir.fs) as written:
        copies = copy_outputs(Item("A", RID, [output]), earlier, target_dir, max_bytes=MEGABYTE)
    assert copies == [str(target_dir / f"{RID}_0.png")]
    assert s3.get(f"{prefix}/night2/A/{RID}_0.png") == png
    assert read.downloaded >= len(png), read.downloaded
    assert "CopyObject" not in read.calls + written.calls
    assert UPLOADS & set(written.calls), written.calls
    # To a local folder: streamed too.
    local = copy_outputs(Item("A", RID, [output]), earlier, tmp_path / "A", max_bytes=MEGABYTE)
    assert local == [str(tmp_path / "A" / f"{RID}_0.png")]
    assert (tmp_path / "A" / f"{RID}_0.png").read_bytes() == png
    # A stream over the limit is refused as before, and leaves nothing.
    with pytest.raises(NotReusable, match="larger than the 1000-byte max_download_bytes"):
        copy_outputs(
            Item("A", RID, [output]), earlier, s3.path(f"{prefix}/night3/A", s3.other_conn), max_bytes=1000
        )
    assert s3.keys(f"{prefix}/night3/") == []


@pytest.mark.usefixtures("memory_store")
def test_a_filesystem_without_a_server_side_copy_streams() -> None:
    # fsspec's in-memory filesystem is one store, but not S3: the copy goes through the worker.
    root = memory_path("memory://catalogue/night1")
    (root / "A").mkdir(parents=True, exist_ok=True)
    png = image(PNG, 5000)
    (root / "A" / "old.webp").write_bytes(png)
    target_dir = memory_path("memory://catalogue/night2/A")
    copies = copy_outputs(
        Item("A", RID, [str(root / "A" / "old.webp")]), EarlierBatch(root), target_dir, max_bytes=5000
    )
    assert copies == [str(target_dir / f"{RID}_0.png")]
    assert (target_dir / f"{RID}_0.png").read_bytes() == png
    with pytest.raises(NotReusable, match="larger than the 4999-byte"):
        copy_outputs(
            Item("A", RID, [str(root / "A" / "old.webp")]),
            EarlierBatch(root),
            memory_path("memory://catalogue/night3/A"),
            max_bytes=4999,
        )
    night3 = memory_path("memory://catalogue/night3/A")
    assert not night3.exists() or not list(night3.iterdir())


@pytest.mark.newest
def test_a_write_to_s3_that_fails_halfway_publishes_nothing(s3: S3, prefix: str) -> None:
    # Every file the package writes on object storage (manifest, summary, contact sheet, outputs)
    # goes through atomic_writer: a failure while writing must leave no object, nor a partial one.
    from airflow_provider_firered.utils.atomic_files import atomic_writer, write_atomic

    target = s3.path(f"{prefix}/_manifest.jsonl")

    def fail_after(data: bytes) -> None:
        with atomic_writer(target) as out:
            out.write(data)
            raise RuntimeError("the worker failed halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        fail_after(b'{"key": "A"}\n' * 1000)
    assert s3.keys(prefix) == []
    write_atomic(target, '{"key": "B"}\n')
    assert s3.get(f"{prefix}/_manifest.jsonl") == b'{"key": "B"}\n'
    with pytest.raises(RuntimeError, match="halfway"):
        fail_after(b"partial")
    assert s3.get(f"{prefix}/_manifest.jsonl") == b'{"key": "B"}\n'  # the earlier file stays whole
