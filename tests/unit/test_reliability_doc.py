"""docs/reliability.md names the tests behind each case: every one exists, and README counts them."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
NODE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_every_named_test_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    named = NODE.findall(text)
    assert len(named) > 50, "the matrix names too few tests"
    missing = []
    for path, name in set(named):
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if name not in defined:
            missing.append(f"{path}::{name}")
    assert missing == []


def test_every_row_names_a_test() -> None:
    rows = [
        line
        for line in DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and not line.startswith(("| case ", "|---"))
    ]
    assert rows
    assert [row for row in rows if not NODE.search(row)] == []


def _rows() -> list[str]:
    return [
        line
        for line in DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and not line.startswith(("| case ", "|---"))
    ]


def _readme_count(label: str) -> int:
    found = re.search(rf"\*\*([\d,]+) {label}\*\*", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert found, f"README names no count of {label}"
    return int(found.group(1).replace(",", ""))


def test_readme_counts_the_cases_of_the_matrix() -> None:
    assert _readme_count("cases") == len(_rows())


def test_readme_counts_the_test_cases_behind_the_matrix() -> None:
    named = sorted({f"{path}::{name}" for path, name in NODE.findall(DOC.read_text(encoding="utf-8"))})
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *named],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert _readme_count("test cases") == len(ids)
