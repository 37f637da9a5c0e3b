"""The GitHub Actions workflow: linted, security-audited, pinned, and thin."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "deploy.yml"
BIN = Path(sys.executable).parent


def test_actionlint_finds_nothing():
    result = subprocess.run(
        [str(BIN / "actionlint"), str(WORKFLOW)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing():
    result = subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--no-progress", str(WORKFLOW)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actions_are_pinned_to_full_commit_shas():
    uses = re.findall(r"uses:\s*(\S+)", WORKFLOW.read_text())
    assert uses
    for action in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action


def test_jobs_call_the_tested_scripts_and_use_keyless_auth():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    test_runs = [step.get("run", "") for step in jobs["test"]["steps"]]
    assert "bash .ci/run" in test_runs
    # the newer Pythons the client must install on are there for tests/deploy/test_python_versions
    python = next(s for s in jobs["test"]["steps"] if "setup-python" in s.get("uses", ""))
    assert python["with"]["python-version"].split() == ["3.12", "3.13", "3.11"]
    deploy = jobs["deploy"]
    assert deploy["needs"] == "test"
    assert deploy["permissions"] == {"contents": "read", "id-token": "write"}
    runs = " ".join(step.get("run", "") for step in deploy["steps"])
    assert "scripts/deploy" in runs
    auth = next(s for s in deploy["steps"] if "google-github-actions/auth" in s.get("uses", ""))
    assert set(auth["with"]) == {"workload_identity_provider", "service_account"}
    assert "credentials_json" not in WORKFLOW.read_text()
