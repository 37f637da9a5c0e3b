"""One lock per environment (scripts/lock): the venv installs locks/dev.txt, each image its
family's lock, and every lock agrees with pyproject.toml's pins and with the venv's versions, so
an image built later installs what the tests ran."""

from __future__ import annotations

import importlib.metadata
import tomllib

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from locks import FAMILIES, LOCKS, lock_file, requirements, versions

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RUNTIMES = {"onnx": "onnxruntime", "keras": "tensorflow-cpu", "openvino": "openvino"}


def _pins(*extras: str) -> dict[str, str]:
    declared = [*PROJECT["dependencies"]]
    declared += [pin for extra in extras for pin in PROJECT["optional-dependencies"][extra]]
    pins = {}
    for line in declared:
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_the_venv_installed_exactly_its_lock():
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
    }
    installed.pop("image-services")  # the project itself (pip install --no-deps -e .)
    assert installed == versions(LOCKS / "dev.txt"), "run scripts/setup (or scripts/lock)"


def test_the_venv_lock_holds_every_pin_of_pyproject():
    pins = _pins(*PROJECT["optional-dependencies"])
    locked = versions(LOCKS / "dev.txt")
    assert {name: locked.get(name) for name in pins} == pins, "run scripts/lock"


@pytest.mark.parametrize("family", [None, *FAMILIES])
def test_each_image_lock_is_its_pins_at_the_venvs_versions(family):
    lock = lock_file(family)
    pins = _pins(family) if family else _pins()
    locked = versions(lock)
    assert {name: locked.get(name) for name in pins} == pins, "run scripts/lock"
    # the same lines as the venv's lock (versions and markers): what the tests ran
    venv = {str(requirement) for requirement in requirements(LOCKS / "dev.txt")}
    assert {str(requirement) for requirement in requirements(lock)} <= venv
    # and no other family's runtime, no test tool
    others = {RUNTIMES[other] for other in FAMILIES if other != family}
    assert not others & set(locked)
    assert not {"pytest", "ruff", "tensorflow-cpu" if family != "keras" else "pytest"} & set(locked)


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_the_locks_are_universal_for_the_pythons_the_client_supports(python):
    environment = {"python_version": python, "python_full_version": f"{python}.0"}
    for family in (None, *FAMILIES):
        assert versions(lock_file(family), environment)["bentoml"] == _pins()["bentoml"]
