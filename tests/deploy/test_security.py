"""No key material in the repository or the built Bentos; no known-vulnerable pins."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

# Assembled from pieces so this file does not match itself.
KEY_PATTERNS = [
    re.compile("-----BEGIN " + r"(RSA |EC |OPENSSH |ENCRYPTED |)PRIVATE KEY-----"),
    re.compile('"private' + r'_key"\s*:'),
    re.compile('"type"' + r'\s*:\s*"service_account"'),
    re.compile("AK" + r"IA[0-9A-Z]{16}"),
    re.compile("gh" + r"[pousr]_[A-Za-z0-9]{36}"),
    re.compile("AI" + r"za[0-9A-Za-z_-]{35}"),
    re.compile("xox" + r"[baprs]-[0-9A-Za-z-]{10,}"),
]


def _leaks(files: list[Path]) -> list[str]:
    found = []
    for file in files:
        try:
            text = file.read_text(errors="ignore")
        except (IsADirectoryError, FileNotFoundError):
            continue
        found += [f"{file}: {p.pattern}" for p in KEY_PATTERNS if p.search(text)]
    return found


def test_repository_holds_no_key_material():
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert tracked
    assert _leaks([REPO / name for name in tracked]) == []


def test_built_bentos_hold_no_key_material(built):
    home = Path(built["home"]) / "bentos"
    files = [
        path
        for name in ("classify", "preprocess", "tensorflow")
        for path in (home / built[name].replace(":", "/")).rglob("*")
        if path.is_file() and path.suffix not in (".keras", ".onnx", ".h5")
    ]
    assert len(files) > 10
    assert _leaks(files) == []


@pytest.mark.parametrize("name", ["classify", "preprocess", "tensorflow"])
def test_pinned_dependencies_have_no_known_vulnerabilities(built, name):
    requirements = Path(built["home"]) / "bentos" / built[name].replace(":", "/")
    requirements = requirements / "env" / "python" / "requirements.txt"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "pip-audit"),
            "--no-deps",
            "--disable-pip",
            "-r",
            str(requirements),
            "--format",
            "json",
            "--progress-spinner",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode not in (0, 1) or not result.stdout.strip():
        pytest.skip(f"pip-audit could not reach the advisory service: {result.stderr[-300:]}")
    report = json.loads(result.stdout)
    audited = [dep for dep in report["dependencies"] if "skip_reason" not in dep]
    if not audited:
        reason = report["dependencies"][0].get("skip_reason", "") if report["dependencies"] else ""
        pytest.skip(f"pip-audit reached no advisory data from here (e.g. {reason!r})")
    vulnerable = {
        f"{dep['name']}=={dep['version']}": [v["id"] for v in dep["vulns"]]
        for dep in report["dependencies"]
        if dep.get("vulns")
    }
    assert vulnerable == {}, vulnerable
