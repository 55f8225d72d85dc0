"""OpenLineage datasets and the run facet: the naming spec, no secret in a name, nothing needed at install."""

from __future__ import annotations

import ast
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_firered.utils import lineage
from airflow_provider_firered.utils.lineage import (
    RUN_FACET_CLASS_NAME,
    RUN_FACET_KEY,
    RUN_FACET_SCHEMA_URL,
    dataset_name,
)
from tests.conftest import TEST_KEY

needs_openlineage = pytest.mark.skipif(
    not lineage.openlineage_available(),
    reason="the OpenLineage provider is not installed (pip install 'airflow-provider-firered[openlineage]')",
)


# -- naming, without OpenLineage installed ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://cdn.example.com/products/shoe.png", ("https://cdn.example.com", "/products/shoe.png")),
        ("http://127.0.0.1:8080/img/a.png", ("http://127.0.0.1:8080", "/img/a.png")),
        ("HTTPS://CDN.Example.COM/A.png", ("https://cdn.example.com", "/A.png")),
        # The scheme's default port says nothing: the same image has one name.
        ("https://cdn.example.com:443/a.png", ("https://cdn.example.com", "/a.png")),
        ("http://cdn.example.com:80/a.png", ("http://cdn.example.com", "/a.png")),
        ("https://cdn.example.com:8443/a.png", ("https://cdn.example.com:8443", "/a.png")),
        ("https://[::1]:9000/a.png", ("https://[::1]:9000", "/a.png")),
        ("https://cdn.example.com", ("https://cdn.example.com", "/")),
        ("https://cdn.example.com/a%20b.png", ("https://cdn.example.com", "/a%20b.png")),
    ],
)
def test_http_images_are_named_scheme_host_and_path(url: str, expected: tuple[str, str]) -> None:
    assert dataset_name(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        f"https://user:{TEST_KEY}@cdn.example.com/a.png",
        f"https://cdn.example.com/a.png?X-Amz-Signature={TEST_KEY}&X-Amz-Credential=AKIA",
        f"https://cdn.example.com/a.png?token={TEST_KEY}#{TEST_KEY}",
        f"https://cdn.example.com/a.png;jsessionid={TEST_KEY}",
        f"https://{TEST_KEY}@cdn.example.com/a.png",
    ],
)
def test_no_secret_of_a_url_reaches_a_dataset_name(url: str) -> None:
    assert dataset_name(url) == ("https://cdn.example.com", "/a.png")


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/data/out/shoe.png", ("file", "/data/out/shoe.png")),
        ("/data/out/../out/shoe.png", ("file", "/data/out/shoe.png")),
        (Path("/data/out"), ("file", "/data/out")),
        ("file:///data/out/a%20b.png", ("file", "/data/out/a b.png")),
        ("file://localhost/data/out/a.png", ("file", "/data/out/a.png")),
        ("file://nas1/data/out/a.png", ("file://nas1", "/data/out/a.png")),
        ("s3://bucket/catalogue/2024/shoe.png", ("s3://bucket", "catalogue/2024/shoe.png")),
        ("s3://aws_default@bucket/catalogue/", ("s3://bucket", "catalogue/")),
        ("s3a://bucket/key", ("s3://bucket", "key")),
        ("s3://bucket", ("s3://bucket", "/")),
        ("gcs://bucket/a/b.png", ("gs://bucket", "a/b.png")),
        ("gs://bucket/a%2Fb.png", ("gs://bucket", "a/b.png")),
        ("hdfs://namenode:8020/out/a.png", ("hdfs://namenode:8020", "/out/a.png")),
    ],
)
def test_outputs_are_named_per_the_naming_spec(location: object, expected: tuple[str, str]) -> None:
    assert dataset_name(location) == expected


def test_a_relative_path_is_named_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert dataset_name("out/shoe.png") == ("file", str(tmp_path / "out" / "shoe.png"))


def test_an_object_storage_path_is_named_without_its_connection_id(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    # Building the path builds its filesystem from the connection: give it one, so that the AWS SDK
    # never looks for credentials on the network (the instance metadata address).
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        '{"conn_type": "aws", "login": "test-key", "password": "test-secret",'
        ' "extra": {"region_name": "us-east-1", "endpoint_url": "http://127.0.0.1:9"}}',
    )

    try:
        path = ObjectStoragePath("s3://aws_default@bucket/catalogue/shoe.png")
    except Exception as error:  # an Airflow without the s3 filesystem cannot even build one
        pytest.skip(f"this Airflow cannot build an s3 ObjectStoragePath: {error}")

    assert dataset_name(path) == ("s3://bucket", "catalogue/shoe.png")
    assert dataset_name(ObjectStoragePath("file:///data/out/x.png")) == ("file", "/data/out/x.png")


@pytest.mark.parametrize(
    "location",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "mailto:someone@example.com",
        "https://",
        "https:///a.png",
        "https://cdn.example.com:99999/a.png",
        "https://cdn.example.com:port/a.png",
        "s3:///key",
        "https://cdn.example.com/a\n.png",
        "https://cdn.example.com/" + "a" * 5000,
        "",
        None,
        42,
        b"/data/out",
    ],
)
def test_what_names_no_dataset_gives_none(location: object) -> None:
    assert dataset_name(location) is None


def test_the_module_imports_nothing_of_openlineage_at_the_top() -> None:
    tree = ast.parse(Path(lineage.__file__).read_text())
    for node in tree.body:
        if isinstance(node, ast.If):  # the TYPE_CHECKING block: for the type checker only
            continue
        if isinstance(node, ast.Import):
            assert not any("openlineage" in alias.name for alias in node.names)
        if isinstance(node, ast.ImportFrom):
            assert "openlineage" not in (node.module or "")


def test_without_openlineage_naming_works_and_availability_says_no(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("openlineage.client.generated.base", "airflow.providers.openlineage.extractors"):
        monkeypatch.setitem(sys.modules, name, None)  # import of it raises ImportError

    assert lineage.openlineage_available() is False
    assert dataset_name("https://cdn.example.com/a.png") == ("https://cdn.example.com", "/a.png")
    with pytest.raises(ImportError):
        lineage.input_datasets(["https://cdn.example.com/a.png"])


# -- with the OpenLineage provider ----------------------------------------------------------------


@needs_openlineage
def test_input_datasets_are_openlineage_datasets_once_each_in_order() -> None:
    from openlineage.client.event_v2 import Dataset

    datasets = lineage.input_datasets(
        [
            "https://cdn.example.com/b.png",
            "https://cdn.example.com/a.png?sig=1",
            "https://cdn.example.com/b.png",
            "data:image/png;base64,AAAA",
            "https://cdn.example.com/a.png?sig=2",
        ]
    )

    assert datasets == [
        Dataset(namespace="https://cdn.example.com", name="/b.png"),
        Dataset(namespace="https://cdn.example.com", name="/a.png"),
    ]
    assert lineage.input_datasets([]) == []


@needs_openlineage
def test_output_datasets_for_files_and_an_output_root() -> None:
    from openlineage.client.event_v2 import Dataset

    datasets = lineage.output_datasets(
        ["/data/out/a.png", "s3://conn@bucket/night/", Path("/data/out/a.png")]
    )

    assert datasets == [
        Dataset(namespace="file", name="/data/out/a.png"),
        Dataset(namespace="s3://bucket", name="night/"),
    ]


@needs_openlineage
def test_run_facet_is_a_run_facet_with_producer_and_schema_url() -> None:
    from openlineage.client.generated.base import RunFacet

    facet = lineage.run_facet(request_ids_count=7, paid=5, reused=2, failed=1, model=" firered-image-edit ")

    assert isinstance(facet, RunFacet)
    assert type(facet).__name__ == RUN_FACET_CLASS_NAME
    assert RUN_FACET_CLASS_NAME.endswith("RunFacet")
    assert RUN_FACET_KEY.split("_")[0] == "fireRed"
    data = _to_dict(facet)
    assert data == {
        "_producer": data["_producer"],
        "_schemaURL": RUN_FACET_SCHEMA_URL,
        "requestIdsCount": 7,
        "paid": 5,
        "reused": 2,
        "failed": 1,
        "model": "firered-image-edit",
    }
    assert data["_producer"].startswith("https://")
    assert RUN_FACET_SCHEMA_URL.endswith(f"#/$defs/{RUN_FACET_CLASS_NAME}")


@needs_openlineage
def test_run_facet_takes_the_producer_airflow_sets() -> None:
    from openlineage.client.generated import base

    before = base.PRODUCER
    base.set_producer("https://example.com/producer/1.0")
    try:
        facet = lineage.run_facet(1, 1, 0, 0, "m")
    finally:
        base.set_producer(before)

    assert _to_dict(facet)["_producer"] == "https://example.com/producer/1.0"


@needs_openlineage
def test_run_facet_counts_are_whole_and_never_negative_and_the_model_optional() -> None:
    data = _to_dict(lineage.run_facet(request_ids_count=-1, paid=0, reused=3, failed=-2, model=None))

    assert (data["requestIdsCount"], data["paid"], data["reused"], data["failed"]) == (0, 0, 3, 0)
    assert data.get("model") is None
    assert _to_dict(lineage.run_facet(0, 0, 0, 0, "   ")).get("model") is None


@needs_openlineage
def test_run_facet_class_is_one_class_importable_and_picklable() -> None:
    facet = lineage.run_facet(3, 2, 1, 0, "m")

    assert lineage.run_facet_class() is type(facet)
    from airflow_provider_firered.utils.lineage import FireRedEditsRunFacet

    assert FireRedEditsRunFacet is type(facet)
    assert pickle.loads(pickle.dumps(facet)) == facet
    with pytest.raises(AttributeError):
        lineage.NoSuchName  # noqa: B018


@needs_openlineage
def test_operator_lineage_carries_the_datasets_and_the_facet_under_its_key() -> None:
    from airflow.providers.openlineage.extractors import OperatorLineage

    inputs = lineage.input_datasets(["https://cdn.example.com/a.png"])
    outputs = lineage.output_datasets(["/data/out"])
    facet = lineage.run_facet(1, 1, 0, 0, "m")

    result = lineage.operator_lineage(inputs, outputs, facet)

    assert isinstance(result, OperatorLineage)
    assert result.inputs == inputs
    assert result.outputs == outputs
    assert result.run_facets == {RUN_FACET_KEY: facet}
    assert result.job_facets == {}
    assert lineage.operator_lineage([], [], None).run_facets == {}


@needs_openlineage
def test_a_whole_event_serialises_and_survives_airflow_redaction_without_the_key() -> None:
    """What the OpenLineage listener does with the operator's lineage: redact, then serialise."""
    from airflow.providers.openlineage.utils.utils import OpenLineageRedactor
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.serde import Serde

    urls = [f"https://alice:{TEST_KEY}@cdn.example.com/a.png?token={TEST_KEY}"]
    facet = lineage.run_facet(1, 1, 0, 0, "firered-image-edit")
    result = lineage.operator_lineage(lineage.input_datasets(urls), lineage.output_datasets(["/out"]), facet)
    event = RunEvent(
        eventType=RunState.COMPLETE,
        eventTime="2024-01-01T00:00:00Z",
        run=Run(runId="01890000-0000-7000-8000-000000000000", facets=result.run_facets),
        job=Job(namespace="default", name="dag.task"),
        # The listener sends an operator's plain datasets as they are, as inputs and outputs.
        inputs=result.inputs,  # type: ignore[arg-type]
        outputs=result.outputs,  # type: ignore[arg-type]
    )
    redactor = OpenLineageRedactor()
    redactor.add_mask(TEST_KEY)

    text = Serde.to_json(redactor.redact(event, max_depth=20))

    assert TEST_KEY not in text
    assert "alice" not in text
    data = json.loads(text)
    assert data["inputs"] == [{"namespace": "https://cdn.example.com", "name": "/a.png", "facets": {}}]
    assert data["outputs"] == [{"namespace": "file", "name": "/out", "facets": {}}]
    run_facet = data["run"]["facets"][RUN_FACET_KEY]
    assert {k: run_facet[k] for k in ("requestIdsCount", "paid", "reused", "failed", "model")} == {
        "requestIdsCount": 1,
        "paid": 1,
        "reused": 0,
        "failed": 0,
        "model": "firered-image-edit",
    }


def _to_dict(facet: Any) -> dict[str, Any]:
    from openlineage.client.serde import Serde

    data: dict[str, Any] = Serde.to_dict(facet)
    return data


def test_naming_does_not_depend_on_the_working_directory_for_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert dataset_name(os.sep + "data") == ("file", "/data")


# -- a batch's inputs: bounded -----------------------------------------------------------------------


@needs_openlineage
def test_a_batch_lists_each_distinct_image_up_to_the_cap() -> None:
    urls = [f"https://cdn.example.com/p/{n % 3}.png?sig={TEST_KEY}" for n in range(9)]

    found = lineage.bounded_input_datasets([*urls, "data:image/png;base64,AA"], limit=3)

    assert [(d.namespace, d.name) for d in found] == [
        ("https://cdn.example.com", f"/p/{n}.png") for n in range(3)
    ]


@needs_openlineage
def test_past_the_cap_a_batch_lists_the_images_folders_then_their_hosts() -> None:
    urls = [f"https://cdn.example.com/{folder}/{n}.png" for folder in ("shoes", "mugs") for n in range(5)]
    urls.append("s3://bucket/shoes/x.png")

    by_folder = lineage.bounded_input_datasets(urls, limit=3)
    by_host = lineage.bounded_input_datasets(urls, limit=2)
    one = lineage.bounded_input_datasets(urls, limit=1)

    assert [(d.namespace, d.name) for d in by_folder] == [
        ("https://cdn.example.com", "/shoes/"),
        ("https://cdn.example.com", "/mugs/"),
        ("s3://bucket", "shoes/"),
    ]
    assert [(d.namespace, d.name) for d in by_host] == [
        ("https://cdn.example.com", "/"),
        ("s3://bucket", "/"),
    ]
    assert [(d.namespace, d.name) for d in one] == [("https://cdn.example.com", "/")]
    assert lineage.MAX_INPUT_DATASETS == 1000
