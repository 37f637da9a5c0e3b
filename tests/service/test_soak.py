"""A bounded soak of the whole pipeline in CI: zero failures, answers right, RSS flat."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

# long enough for hundreds of pipelines and an RSS trend; the long soak is benchmarks/soak.py,
# its results in benchmarks/soak.md
SOAK_SECONDS = int(os.environ.get("SOAK_SECONDS", "30"))


def test_pipeline_soak(bentoml_home, model_assets, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "MODEL_ASSETS": str(model_assets)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.soak",
            "--seconds",
            str(SOAK_SECONDS),
            "--concurrency",
            "8",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SOAK_SECONDS + 300,
    )
    report = json.loads((tmp_path / "soak.json").read_text())
    print(json.dumps(report, indent=2))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert report["failures"] == 0 and not report["mismatches"] and not report["unreadable"]
    assert report["pipelines"] > 100 and report["checked_in_process"] > 10
