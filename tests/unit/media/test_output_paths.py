"""Output names always fit a file name, whatever request id the gateway answers with."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_firered.exceptions import FireRedValidationError
from airflow_provider_firered.hooks.firered import FireRedHook
from airflow_provider_firered.media.output_paths import (
    MAX_ID_IN_NAME,
    MAX_OUTPUT_INDEX,
    SHORT_ID_PREFIX,
    output_name,
)
from tests.conftest import conn_uri_json
from tests.hostile import Answer, HostileServer

if TYPE_CHECKING:
    from pathlib import Path

V11 = "firered-image-edit-v1-1"
SUBMIT = f"/{V11}/v1/{V11}-request"
#: A gateway id as long as the id check allows (255), and one of 240: both once broke the file name.
LONGEST_ID = (V11 + "_" + "0123456789abcdef" * 16)[:255]
LONG_ID = LONGEST_ID[:240]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
#: The most bytes a file name may have on the usual local file systems (ext4, xfs, APFS, NTFS).
NAME_MAX = 255


def shortened(request_id: str) -> str:
    return f"{request_id[:SHORT_ID_PREFIX]}~{hashlib.sha256(request_id.encode()).hexdigest()[:16]}"


@pytest.mark.parametrize("length", [1, 60, MAX_ID_IN_NAME])
def test_an_id_up_to_the_limit_is_kept_whole(length: int) -> None:
    request_id = (V11 + "_" + "a" * 255)[:length]
    assert output_name(request_id, 3, "image/png") == f"{request_id}_3.png"


@pytest.mark.parametrize("length", [MAX_ID_IN_NAME + 1, 240, 255])
def test_a_longer_id_is_shortened_with_a_hash(length: int) -> None:
    assert len(LONGEST_ID) == 255  # the longest id the id check allows
    request_id = LONGEST_ID[:length]
    name = output_name(request_id, 0, "image/webp")
    assert name == f"{shortened(request_id)}_0.webp"
    assert name.startswith(V11 + "_")  # still readable: the model and the start of the id
    assert output_name(request_id, 0, "image/webp") == name  # the same id, the same name, every run


def test_long_ids_that_share_a_prefix_get_different_names() -> None:
    one, two = LONG_ID[:-1] + "a", LONG_ID[:-1] + "b"
    assert output_name(one, 0, "image/png") != output_name(two, 0, "image/png")


def test_a_shortened_id_cannot_be_taken_for_a_whole_one() -> None:
    # '~' is never part of a gateway id: no id kept whole can name the file of a shortened one.
    short = output_name(LONG_ID, 0, "image/png").removesuffix("_0.png")
    with pytest.raises(FireRedValidationError):
        output_name(short, 0, "image/png")


@pytest.mark.parametrize("media_type", ["image/webp", "image/png", None])
def test_every_name_and_its_temporary_name_fit(media_type: str | None) -> None:
    name = output_name(LONGEST_ID, MAX_OUTPUT_INDEX, media_type)
    temporary = f".{name}.0123456789.part"  # what a download or a copy writes first
    assert len(name.encode()) <= 90
    assert len(temporary.encode()) < 120 < NAME_MAX


@pytest.mark.parametrize(
    "index", [-1, MAX_OUTPUT_INDEX + 1, 10**5000, True, 1.0], ids=["-1", "past", "huge", "bool", "float"]
)
def test_an_index_out_of_range_is_refused_and_shown_clipped(index: Any) -> None:
    with pytest.raises(FireRedValidationError) as info:
        output_name(LONG_ID, index, "image/png")
    assert info.value.field == "index"
    assert f"from 0 to {MAX_OUTPUT_INDEX}" in info.value.message
    assert len(info.value.message) < 200


def test_a_240_character_id_is_downloaded_end_to_end(
    hostile: HostileServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A gateway (on loopback, so its own media host is allowed) that answers with a 240-character id.
    status = {
        "request_id": LONG_ID,
        "status": "COMPLETED",
        "model_id": V11,
        "error": None,
        "output": {"media_url": [f"{hostile.url}/out.png"], "media_type": "image/png"},
    }
    json_headers = {"Content-Type": "application/json"}
    hostile.route(
        SUBMIT, Answer(202, json_headers, json.dumps({"request_id": LONG_ID, "status": "QUEUED"}).encode())
    )
    hostile.route("/v2/requests/status/", Answer(200, json_headers, json.dumps(status).encode()))
    hostile.route("/out.png", Answer(200, {"Content-Type": "image/png"}, PNG))
    monkeypatch.setenv("AIRFLOW_CONN_FIRERED_LONG", conn_uri_json(hostile.url))
    hook = FireRedHook("firered_long")

    submitted = hook.submit_edit(V11, "Make it blue", ["https://img.example.test/a.png"])
    assert submitted.request_id == LONG_ID
    result = hook.get_status(LONG_ID).to_dict()
    (path,) = hook.download_outputs(result, tmp_path)

    assert path == str(tmp_path / f"{shortened(LONG_ID)}_0.png")
    assert [p.name for p in tmp_path.iterdir()] == [f"{shortened(LONG_ID)}_0.png"]  # no .part left
    assert (tmp_path / f"{shortened(LONG_ID)}_0.png").read_bytes() == PNG
    assert hostile.posts() == 1
