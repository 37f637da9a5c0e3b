"""The container image both Bentos build on: BentoML's standard base, without its build layer.

BentoML adds `build-essential` and `git` to its Debian base for packages that compile from
source or install from git. Every package these services pin installs as a wheel, so the images
carry neither a compiler nor git (less to pull on a cold start, less attack surface); a test
builds each image and looks for them. The bentofiles still add their packages and settings.
"""

from __future__ import annotations

import bentoml

PYTHON_VERSION = "3.11"
# BentoML's standard base for distro "debian"; `distro="none"` skips its apt-get layer.
STANDARD_BASE = f"python:{PYTHON_VERSION}-slim"


def slim_image() -> bentoml.images.Image:
    return bentoml.images.Image(
        base_image=STANDARD_BASE, distro="none", python_version=PYTHON_VERSION
    )
