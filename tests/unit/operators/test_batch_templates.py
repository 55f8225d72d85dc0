"""A batch's template fields: only strings with template syntax go through Jinja, as Airflow renders them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import jinja2
import pytest
from airflow.sdk import DAG

from airflow_provider_firered.operators.firered_batch import FireRedBatchEditOperator

IMAGE = "https://example.com/a.png"


def batch(edits: list[dict[str, Any]], **dag_kwargs: Any) -> FireRedBatchEditOperator:
    with DAG(
        "batch_templates", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), **dag_kwargs
    ):
        return FireRedBatchEditOperator(task_id="edit", edits=edits, output_root="/data/{{ ds }}")


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every string Jinja compiles as a template while the test runs."""
    seen: list[str] = []
    original = jinja2.Environment.from_string

    def counting(self: jinja2.Environment, source: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(source))
        return original(self, source, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "from_string", counting)
    return seen


def test_plain_strings_are_kept_and_never_compiled(compiled: list[str]) -> None:
    edits = [
        {"key": f"SKU-{n}", "prompt": f"Make it blue #{n}: {{keep}} the braces\n", "images": [IMAGE]}
        for n in range(500)
    ]
    op = batch(edits)
    op.render_template_fields({"ds": "2026-03-01"})
    assert op.edits == edits  # the trailing newline too (Jinja would drop it)
    assert op.output_root == "/data/2026-03-01"
    assert compiled == ["/data/{{ ds }}"]  # 1,500 strings of the edits, none compiled


def test_a_templated_prompt_is_rendered_as_airflow_renders_it(compiled: list[str]) -> None:
    op = batch([{"key": "A", "prompt": "Season {{ ds }}{# note #}", "images": [IMAGE]}])
    op.render_template_fields({"ds": "2026-03-01"})
    assert op.edits == [{"key": "A", "prompt": "Season 2026-03-01", "images": [IMAGE]}]
    assert "Season {{ ds }}{# note #}" in compiled


def test_a_dag_s_own_delimiters_are_the_ones_looked_for() -> None:
    op = batch(
        [{"key": "A", "prompt": "Season [[ ds ]] and {{ kept }}", "images": [IMAGE]}],
        jinja_environment_kwargs={"variable_start_string": "[[", "variable_end_string": "]]"},
    )
    op.render_template_fields({"ds": "2026-03-01"})
    assert op.edits[0]["prompt"] == "Season 2026-03-01 and {{ kept }}"


def test_a_line_statement_prefix_counts_as_template_syntax() -> None:
    op = batch(
        [{"key": "A", "prompt": "# for n in [1, 2]\n{{ n }}\n# endfor\n", "images": [IMAGE]}],
        jinja_environment_kwargs={"line_statement_prefix": "# "},
    )
    op.render_template_fields({"ds": "2026-03-01"})
    assert op.edits[0]["prompt"] == "1\n2\n"


def test_a_plain_string_stays_a_string_under_native_rendering() -> None:
    op = batch(
        [{"key": "123", "prompt": "{{ 2 + 3 }}", "images": [IMAGE]}],
        render_template_as_native_obj=True,
    )
    op.render_template_fields({"ds": "2026-03-01"})
    assert op.edits[0]["key"] == "123"  # no template syntax: kept as given, not made a number
    assert op.edits[0]["prompt"] == 5  # rendered natively, as Airflow renders it
