"""
FireRedBatchEditOperator reusing an earlier run's outputs, through real Airflow (``dag.test()``) and
the emulator, when that earlier run's folder was tampered with: only its own regular image files are
copied, within bounds, and anything else is edited (paid) instead. Every test counts the POSTs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from airflow_provider_firered.batch.manifest import MANIFEST_NAME, read_manifest
from tests.conftest import conn_uri_json, run_dag_source
from tests.integration.operators.test_firered import in_log, xcom

if TYPE_CHECKING:
    from airflow_provider_firered.emulator import Emulator

pytestmark = pytest.mark.usefixtures("airflow_db", "firered_conn")

BATCH_TEMPLATE = """
import json
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

KWARGS = json.loads({kwargs!r})

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    FireRedBatchEditOperator(task_id="batch", **KWARGS)
"""

#: The largest output the connection accepts in these tests (the emulator's images are far smaller).
MAX_DOWNLOAD_BYTES = 1_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_batch(dag_id: str, **kwargs: Any) -> Any:
    """Write a one-task batch DAG, run it with dag.test(); return its task instance."""
    (ti,) = run_dag_source(
        dag_id, BATCH_TEMPLATE.format(kwargs=json.dumps(kwargs), dag_id=dag_id)
    ).get_task_instances()
    return ti


def edits(emulator: Emulator, count: int) -> list[dict[str, Any]]:
    image = emulator.sample_images[0]
    return [{"key": f"SKU-{n:04d}", "prompt": f"Make it blue #{n}", "images": [image]} for n in range(count)]


def posts(emulator: Emulator) -> int:
    return len(emulator.submit_attempts())


@pytest.fixture
def small_downloads(firered_conn: str, firered_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection accepts outputs of at most :data:`MAX_DOWNLOAD_BYTES`."""
    monkeypatch.setenv(  # after firered_conn's, which it replaces
        firered_conn.upper().join(("AIRFLOW_CONN_", "")),
        conn_uri_json(firered_emulator.gateway_url, max_download_bytes=MAX_DOWNLOAD_BYTES),
    )


def night_one(emulator: Emulator, root: Path, count: int = 2) -> list[dict[str, Any]]:
    """Run the first night: every item edited (``count`` POSTs)."""
    items = edits(emulator, count)
    first = run_batch(
        f"reuse_{root.parent.name[-20:]}_n1", edits=items, output_root=str(root), poll_interval=1
    )
    assert first.state == "success"
    assert posts(emulator) == count
    return items


def rewrite_output(root: Path, key: str, output: str) -> None:
    """Point ``key``'s manifest line at ``output``, as someone with write access to the folder could."""
    manifest = root / MANIFEST_NAME
    lines = []
    for line in manifest.read_text().splitlines():
        record = json.loads(line)
        if record["key"] == key:
            record["outputs"] = [output]
        lines.append(json.dumps(record))
    manifest.write_text("\n".join(lines) + "\n")


def only_output(root: Path, key: str) -> Path:
    (entry,) = [e for e in read_manifest(root) or [] if e.key == key]
    (output,) = entry.outputs
    return Path(output)


def tamper(kind: str, n1: Path) -> None:
    """Tamper with SKU-0000's output in the earlier run ``n1``."""
    output = only_output(n1, "SKU-0000")
    if kind == "key folder linked to /etc":
        # The key folder replaced by a link to the system's configuration folder, and the manifest
        # pointing at the password file "in" it: realpath on both sides made it look inside.
        for child in output.parent.iterdir():
            child.unlink()
        output.parent.rmdir()
        output.parent.symlink_to("/etc")
        rewrite_output(n1, "SKU-0000", str(output.parent / "passwd"))
    elif kind == "output linked to /dev/zero":
        output.unlink()
        output.symlink_to("/dev/zero")  # copied without end before
    elif kind == "fifo":
        output.unlink()
        os.mkfifo(output)  # opening it blocked forever before
    elif kind == "html page":
        output.write_text("<html><script>alert(document.cookie)</script></html>")
    elif kind == "larger than max_download_bytes":
        output.write_bytes(PNG_SIGNATURE + b"\0" * (MAX_DOWNLOAD_BYTES + 1))
    else:
        raise AssertionError(kind)


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("small_downloads")
@pytest.mark.parametrize(
    "kind",
    [
        "key folder linked to /etc",
        "output linked to /dev/zero",
        "fifo",
        "html page",
        "larger than max_download_bytes",
    ],
)
def test_a_tampered_earlier_output_is_not_copied_and_its_item_is_edited(
    firered_emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str], kind: str
) -> None:
    n1, n2 = tmp_path / "n1", tmp_path / "n2"
    items = night_one(firered_emulator, n1)
    tamper(kind, n1)

    second = run_batch(
        f"reuse_{re.sub(r'[^a-z]+', '_', kind)}_n2",
        edits=items,
        output_root=str(n2),
        previous=str(n1),
        poll_interval=1,
    )

    out = capfd.readouterr().out
    assert second.state == "success"
    assert posts(firered_emulator) == 3  # the tampered item was paid for again, the other one reused
    assert (xcom(second)["edited"], xcom(second)["reused"]) == (1, 1)
    assert in_log("Item SKU-0000 cannot reuse its earlier outputs", out)
    entries = {e.key: e for e in read_manifest(n2) or []}
    assert entries["SKU-0000"].outcome == "edited"
    # Only the newly edited image is in the item's folder: nothing of the earlier one.
    (saved,) = (n2 / "SKU-0000").iterdir()
    assert [str(saved)] == entries["SKU-0000"].outputs
    assert saved.stat().st_size < MAX_DOWNLOAD_BYTES
    with Image.open(saved) as image:
        image.verify()
    assert entries["SKU-0001"].outcome == "reused"


def test_a_copy_gets_this_runs_own_output_name(firered_emulator: Emulator, tmp_path: Path) -> None:
    # The earlier file was renamed (an HTML extension, no request id in it) and its manifest line
    # follows: the copy is still an image of its own kind, named by the request id and position.
    n1, n2 = tmp_path / "n1", tmp_path / "n2"
    items = night_one(firered_emulator, n1, count=1)
    output = only_output(n1, "SKU-0000")
    request_id = output.name.rsplit("_", 1)[0]
    renamed = output.with_name("page.html")
    output.rename(renamed)
    rewrite_output(n1, "SKU-0000", str(renamed))

    second = run_batch(
        "reuse_renamed_n2", edits=items, output_root=str(n2), previous=str(n1), poll_interval=1
    )

    assert second.state == "success"
    assert posts(firered_emulator) == 1  # reused: nothing paid
    (saved,) = (n2 / "SKU-0000").iterdir()
    assert saved.name == f"{request_id}_0.png"
    assert saved.read_bytes() == renamed.read_bytes()
    assert only_output(n2, "SKU-0000") == saved


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["a line of 200,000 [", "a link to /dev/zero", "a fifo"])
def test_a_bad_earlier_manifest_means_nothing_to_reuse_not_a_failed_night(
    firered_emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    n1, n2 = tmp_path / "n1", tmp_path / "n2"
    items = night_one(firered_emulator, n1)
    manifest = n1 / MANIFEST_NAME
    if kind == "a line of 200,000 [":
        # One bad line among good ones: the good ones are still reused.
        manifest.write_text("[" * 200_000 + "\n" + manifest.read_text())
    else:
        manifest.unlink()
        if kind == "a fifo":
            os.mkfifo(manifest)
        else:
            manifest.symlink_to("/dev/zero")

    second = run_batch(
        f"reuse_bad_manifest_{re.sub(r'[^a-z0-9]+', '_', kind)}",
        edits=items,
        output_root=str(n2),
        previous=str(n1),
        poll_interval=1,
    )

    warnings = [r.getMessage() for r in caplog.records if r.name == "airflow_provider_firered.batch.manifest"]
    assert second.state == "success"
    if kind == "a line of 200,000 [":
        assert posts(firered_emulator) == 2
        assert xcom(second)["reused"] == 2
        assert warnings == [f"Earlier manifest {manifest}: 1 line(s) are not valid entries and were skipped"]
    else:
        assert posts(firered_emulator) == 4  # nothing reused: every item edited, the night not failed
        assert xcom(second)["edited"] == 2
        (warning,) = warnings  # once
        assert warning.startswith(f"Earlier manifest {manifest} cannot be read")
