"""The container image of every Bento: BentoML's standard base without its build layer, with the
packages of its lock file (locks/, written by scripts/lock from `pyproject.toml`: every
transitive package at the version the venv and the tests ran).

BentoML adds `build-essential` and `git` to its Debian base for packages that compile from
source or install from git. Every package these services pin installs as a wheel, so the images
carry neither a compiler nor git (less to pull on a cold start, less attack surface); a test
builds each image and looks for them. BentoML would resolve the packages again when a Bento is
built (`lock_python_packages`), taking whatever PyPI holds that day: the lock is installed as it
is instead. Each Bento includes locks/, so this module reads the same lock wherever the service
is imported (at build, in the store, in the container).
"""

from __future__ import annotations

from pathlib import Path

import bentoml

PYTHON_VERSION = "3.11"
# BentoML's standard base for distro "debian"; `distro="none"` skips its apt-get layer.
STANDARD_BASE = f"python:{PYTHON_VERSION}-slim"
LOCKS = Path(__file__).resolve().parents[1] / "locks"
# Set in the image while uv installs the packages: no download cache left behind.
BUILD_ENVS = [{"name": "UV_NO_CACHE", "value": "1"}]


def lock_file(family: str | None = None) -> Path:
    """The lock of a classify image's runtime family (pyproject.toml's extra of that name), or
    of the base dependencies alone (the preprocess image)."""
    return LOCKS / f"{family or 'preprocess'}.txt"


def locked_packages(family: str | None = None) -> list[str]:
    """Each `name==version ; marker` line of the lock (uv's `# via` comments left out)."""
    lines = lock_file(family).read_text().splitlines()
    return [line.strip() for line in lines if line[:1].isalnum()]


def service_image(family: str | None = None) -> bentoml.images.Image:
    """The image of a Bento that serves with the base packages plus `family`'s extra, each
    package at its locked version (passed as lines: BentoML reads a requirements file only
    below the working directory, and a service is imported from several)."""
    return bentoml.images.Image(
        base_image=STANDARD_BASE,
        distro="none",
        python_version=PYTHON_VERSION,
        lock_python_packages=False,
    ).python_packages(*locked_packages(family))


def with_command(image: bentoml.images.Image, name: str, module: str) -> bentoml.images.Image:
    """`image` with a command `name` on the PATH that runs `python -m module` from the Bento's
    source (a Cloud Run job's `--command`; the project's console scripts are not installed in a
    Bento, only its packages)."""
    script = f'PYTHONPATH="$BENTO_PATH/src" exec python -m {module} "$@"'
    target = f"/usr/local/bin/{name}"
    return image.run(f"printf '%s\\n' '#!/bin/sh' '{script}' > {target} && chmod 755 {target}")
