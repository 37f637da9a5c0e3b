"""The model import script: real weights in, a complete BentoML model out, idempotent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, WEIGHTS

from classify.runtime_table import STORED_MODELS


def _bentoml_models(home) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "models", "list", "-o", "json"],
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_import_stores_one_model_per_runtime_family_once(bentoml_home):
    """Each stored model holds only the files its runtimes load, and the class index."""
    models = {m["tag"].split(":")[0]: m["tag"].split(":")[1] for m in _bentoml_models(bentoml_home)}
    assert sorted(models) == sorted(STORED_MODELS.values())

    def files(family: str) -> dict[str, Path]:
        folder = bentoml_home / "models" / STORED_MODELS[family] / models[STORED_MODELS[family]]
        return {path.name: path for path in folder.iterdir() if path.name != "model.yaml"}

    keras, onnx, openvino = files("keras"), files("onnx"), files("openvino")
    assert set(keras) == {"model.keras", "imagenet_class_index.json"}
    assert set(onnx) == {"model.onnx", "imagenet_class_index.json"}
    assert set(openvino) == set(onnx) | {"model-int8.xml", "model-int8.bin"}
    assert keras["model.keras"].stat().st_size > 10_000_000
    assert onnx["model.onnx"].stat().st_size > 10_000_000
    assert onnx["model.onnx"].read_bytes() == openvino["model.onnx"].read_bytes()
    assert "FakeQuantize" in openvino["model-int8.xml"].read_text()  # NNCF's INT8 model
    assert openvino["model-int8.bin"].stat().st_size > 3_000_000
    for stored in (keras, onnx, openvino):
        index = json.loads(stored["imagenet_class_index.json"].read_text())
        assert index["208"] == ["n02099712", "Labrador_retriever"]

    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    again = subprocess.run(
        [sys.executable, "-m", "scripts.import_model", "--weights", str(WEIGHTS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "nothing to do" in again.stdout
    assert len(_bentoml_models(bentoml_home)) == len(STORED_MODELS)


def test_import_refuses_missing_weights_file(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "scripts.import_model", "--weights", str(tmp_path / "x.h5")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "is not a file" in result.stderr
