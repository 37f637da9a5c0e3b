"""Reading the lock files (locks/, scripts/lock) in tests: which version of each package an
environment installs."""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from common.bento_image import LOCKS, lock_file

FAMILIES = ("onnx", "keras", "openvino")


def requirements(lock: Path) -> list[Requirement]:
    """Every `name==version ; marker` line of a lock (uv's `# via` comments aside)."""
    lines = lock.read_text().splitlines()
    return [Requirement(line) for line in lines if line[:1].isalnum()]


def versions(lock: Path, environment: dict[str, str] | None = None) -> dict[str, str]:
    """name -> version of what the lock installs where `environment`'s markers hold (this
    interpreter's by default)."""
    found = {}
    for requirement in requirements(lock):
        if requirement.marker is None or requirement.marker.evaluate(environment):
            (spec,) = requirement.specifier
            assert spec.operator == "==", requirement
            found[canonicalize_name(requirement.name)] = spec.version
    return found


__all__ = ["FAMILIES", "LOCKS", "lock_file", "requirements", "versions"]
