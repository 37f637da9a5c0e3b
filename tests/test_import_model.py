"""The model import script: real weights in, a complete BentoML model out, idempotent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, WEIGHTS


def _bentoml_models(home) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "models", "list", "-o", "json"],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_import_stores_model_and_class_index_once(bentoml_home):
    models = _bentoml_models(bentoml_home)
    assert [m["tag"].split(":")[0] for m in models] == ["mobilenet_v2"]
    folder = bentoml_home / "models" / "mobilenet_v2" / models[0]["tag"].split(":")[1]
    assert (folder / "model.keras").stat().st_size > 10_000_000
    assert (folder / "model.onnx").stat().st_size > 10_000_000
    assert "FakeQuantize" in (folder / "model-int8.xml").read_text()  # NNCF's INT8 model
    assert (folder / "model-int8.bin").stat().st_size > 3_000_000
    index = json.loads((folder / "imagenet_class_index.json").read_text())
    assert index["208"] == ["n02099712", "Labrador_retriever"]

    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    again = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "import_model.py"), "--weights", str(WEIGHTS)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "nothing to do" in again.stdout
    assert len(_bentoml_models(bentoml_home)) == 1


def test_import_refuses_missing_weights_file(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "import_model.py"),
            "--weights",
            str(tmp_path / "x.h5"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "is not a file" in result.stderr
