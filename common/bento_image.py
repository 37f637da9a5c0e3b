"""The container image of every Bento: BentoML's standard base without its build layer, with the
packages `pyproject.toml` pins (declared there once, for the venv, the Bentos and the images).

BentoML adds `build-essential` and `git` to its Debian base for packages that compile from
source or install from git. Every package these services pin installs as a wheel, so the images
carry neither a compiler nor git (less to pull on a cold start, less attack surface); a test
builds each image and looks for them. Each Bento includes `pyproject.toml`, so this module reads
the same pins wherever the service is imported (at build, in the store, in the container).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import bentoml

PYTHON_VERSION = "3.11"
# BentoML's standard base for distro "debian"; `distro="none"` skips its apt-get layer.
STANDARD_BASE = f"python:{PYTHON_VERSION}-slim"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# Set in the image while uv installs the packages: no download cache left behind.
BUILD_ENVS = [{"name": "UV_NO_CACHE", "value": "1"}]


def pinned_packages(*extras: str) -> list[str]:
    """The base dependencies of pyproject.toml, then those of each named extra."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project["optional-dependencies"]
    return [*project["dependencies"], *(pin for extra in extras for pin in optional[extra])]


def service_image(*extras: str) -> bentoml.images.Image:
    """The image of a Bento that serves with the base packages plus `extras`."""
    return bentoml.images.Image(
        base_image=STANDARD_BASE, distro="none", python_version=PYTHON_VERSION
    ).python_packages(*pinned_packages(*extras))


def with_command(image: bentoml.images.Image, name: str, module: str) -> bentoml.images.Image:
    """`image` with a command `name` on the PATH that runs `python -m module` from the Bento's
    source (a Cloud Run job's `--command`; the project's console scripts are not installed in a
    Bento, only its packages)."""
    script = f'PYTHONPATH="$BENTO_PATH/src" exec python -m {module} "$@"'
    target = f"/usr/local/bin/{name}"
    return image.run(f"printf '%s\\n' '#!/bin/sh' '{script}' > {target} && chmod 755 {target}")
