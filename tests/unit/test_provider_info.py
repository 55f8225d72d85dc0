"""
The provider as Airflow's providers manager reads it: ``get_provider_info()`` is valid for the installed
Airflow's schema and lists every module that defines a hook, an operator, a sensor or a trigger.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path
from typing import Any

import airflow
import jsonschema
from airflow.providers.common.compat.sdk import BaseHook, BaseOperator, BaseOperatorLink, BaseSensorOperator
from airflow.triggers.base import BaseTrigger

import airflow_provider_firered
from airflow_provider_firered.get_provider_info import get_provider_info

#: The emulator is an optional extra (Pillow) and defines nothing Airflow registers.
NOT_REGISTERED = ("airflow_provider_firered.emulator",)


def _kind(cls: type) -> str | None:
    """The provider-info section a class is registered in, or None."""
    if issubclass(cls, BaseSensorOperator):
        return "sensors"
    if issubclass(cls, BaseOperator):
        return "operators"
    if issubclass(cls, BaseTrigger):
        return "triggers"
    if issubclass(cls, BaseHook):
        return "hooks"
    return None


def _defined_modules() -> dict[str, set[str]]:
    """Each section's modules, found by importing the package: those defining a public class of it."""
    found: dict[str, set[str]] = {"hooks": set(), "operators": set(), "sensors": set(), "triggers": set()}
    for module_info in pkgutil.walk_packages(airflow_provider_firered.__path__, "airflow_provider_firered."):
        if module_info.name.startswith(NOT_REGISTERED):
            continue
        module = importlib.import_module(module_info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            kind = _kind(cls)
            if kind and cls.__module__ == module.__name__ and not name.startswith("_"):
                found[kind].add(module.__name__)
    return found


def _listed(info: dict[str, Any], section: str) -> set[str]:
    return {module for entry in info.get(section, []) for module in entry["python-modules"]}


def test_valid_for_the_installed_airflows_schema() -> None:
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(get_provider_info(), schema, cls=jsonschema.Draft7Validator)


def test_every_hook_operator_sensor_and_trigger_module_is_listed() -> None:
    info = get_provider_info()
    defined = _defined_modules()
    assert "airflow_provider_firered.operators.firered_batch" in defined["operators"]
    assert "airflow_provider_firered.triggers.firered_batch" in defined["triggers"]
    for section, modules in defined.items():
        assert _listed(info, section) == modules, section


def test_every_class_named_is_there() -> None:
    info = get_provider_info()
    integrations = {entry["integration-name"] for entry in info["integrations"]}
    for section in ("hooks", "operators", "sensors", "triggers"):
        assert {entry["integration-name"] for entry in info[section]} <= integrations, section
    for conn_type in info["connection-types"]:
        module, _, name = conn_type["hook-class-name"].rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), name), BaseHook)
    for link in info["extra-links"]:
        module, _, name = link.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), name), BaseOperatorLink)
