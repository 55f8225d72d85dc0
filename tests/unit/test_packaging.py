"""
What users install: the sdist and the wheel, built offline from this tree as a release would be.

The tree is copied without version control, virtualenvs and local outputs; the sdist is built from
the copy and the wheel from the unpacked sdist (what ``python -m build`` does), with the setuptools
of the ``test`` extra, in-process: no network, no build isolation. Both must hold the provider and its
licence, and nothing of the test rig (``devtools/``), the tests or the benchmarks.
"""

from __future__ import annotations

import configparser
import email
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "airflow_provider_firered"
#: Never part of a build: version control, virtualenvs, caches and what local runs leave behind.
LOCAL_ONLY = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "*.egg-info",
    "build",
    "dist",
    "__pycache__",
    ".*_cache",
    "demo-output",
    ".airflow-demo",
    "test-artifacts",
)
#: Folders that are development-only: none may appear at any depth of either distribution.
DEVELOPMENT_ONLY = {"devtools", "firered_devtools", "testing", "tests", "benchmarks", "scripts"}

BUILD = """
import sys
from setuptools import build_meta
out, kind = sys.argv[1:]
print((build_meta.build_sdist if kind == "sdist" else build_meta.build_wheel)(out))
"""


@dataclass(frozen=True)
class Dists:
    """The two distributions' file lists (the sdist's without its top folder) and the wheel's path."""

    sdist: list[str]
    wheel: list[str]
    wheel_path: Path


def _build(source: Path, out: Path, kind: str) -> Path:
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(out), kind],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"building the {kind} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    tmp = tmp_path_factory.mktemp("dists")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=LOCAL_ONLY)
    out = tmp / "dist"
    out.mkdir()
    sdist = _build(source, out, "sdist")
    unpacked = tmp / "unpacked"
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
        if hasattr(tarfile, "data_filter"):
            tar.extractall(unpacked, filter="data")
        else:  # Python before 3.10.12 / 3.11.4: the archive is our own, just built
            tar.extractall(unpacked)
    (top,) = {PurePosixPath(name).parts[0] for name in members}
    sdist_files = sorted(
        str(PurePosixPath(*PurePosixPath(name).parts[1:])) for name in members if (unpacked / name).is_file()
    )
    wheel = _build(unpacked / top, out, "wheel")
    with zipfile.ZipFile(wheel) as archive:
        wheel_files = sorted(archive.namelist())
    return Dists(sdist=sdist_files, wheel=wheel_files, wheel_path=wheel)


def _package_modules() -> set[str]:
    return {path.relative_to(ROOT).as_posix() for path in (ROOT / PACKAGE).rglob("*.py")}


def _dist_info(dists: Dists, name: str) -> str:
    (info,) = {PurePosixPath(file).parts[0] for file in dists.wheel} - {PACKAGE}
    with zipfile.ZipFile(dists.wheel_path) as archive:
        return archive.read(f"{info}/{name}").decode("utf-8")


def test_nothing_development_only_ships(dists: Dists) -> None:
    for kind, files in (("sdist", dists.sdist), ("wheel", dists.wheel)):
        shipped = [file for file in files if DEVELOPMENT_ONLY & set(PurePosixPath(file).parts)]
        assert not shipped, f"the {kind} ships development-only files: {shipped}"
    tops = {PurePosixPath(file).parts[0] for file in dists.wheel}
    assert {top for top in tops if not top.endswith(".dist-info")} == {PACKAGE}, tops


def test_the_wheel_holds_the_whole_provider_typed(dists: Dists) -> None:
    assert f"{PACKAGE}/py.typed" in dists.wheel
    assert _package_modules() <= set(dists.wheel), _package_modules() - set(dists.wheel)
    assert _package_modules() <= set(dists.sdist), _package_modules() - set(dists.sdist)


def test_both_ship_the_apache_licence(dists: Dists) -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "LICENSE" in dists.sdist
    assert any(file.endswith(".dist-info/licenses/LICENSE") for file in dists.wheel), dists.wheel
    assert _dist_info(dists, "licenses/LICENSE") == text
    metadata = email.message_from_string(_dist_info(dists, "METADATA"))
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]


def test_every_entry_point_names_a_shipped_module(dists: Dists) -> None:
    points = configparser.ConfigParser()
    points.read_string(_dist_info(dists, "entry_points.txt"))
    assert set(points) >= {"apache_airflow_provider", "pytest11", "console_scripts"}
    for group in ("apache_airflow_provider", "pytest11", "console_scripts"):
        for target in points[group].values():
            module = target.split(":")[0].replace(".", "/")
            assert {f"{module}.py", f"{module}/__init__.py"} & set(dists.wheel), (group, target)
