"""`scripts/build`: every Bento builds with what it needs, exports, and serves the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml
from conftest import BENTOML, Server, make_backend, service_env
from helpers import EXPECTED_LABELS, classify, upload


def _bento_dir(built: dict[str, str], name: str) -> Path:
    tag_name, version = built[name].split(":")
    return Path(built["home"]) / "bentos" / tag_name / version


def _requirements(folder: Path) -> dict[str, str]:
    lines = (folder / "env" / "python" / "requirements.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


def _packed_model(folder: Path) -> tuple[str, set[str]]:
    """The one model a Bento packs: its name, and the files it holds (BentoML's own aside).
    A Bento in the store refers to the model by tag; export and containerize copy it in (the
    container tests look inside the images)."""
    manifest = yaml.safe_load((folder / "bento.yaml").read_text())
    ((name, version),) = [model["tag"].split(":") for model in manifest["models"]]
    store = folder.parents[2] / "models"
    files = {path.name for path in (store / name / version).iterdir()}
    return name, files - {"model.yaml"}


CLASS_INDEX = "imagenet_class_index.json"


def test_classify_bento_carries_the_model_and_onnxruntime_but_no_tensorflow(built):
    folder = _bento_dir(built, "classify")
    assert _packed_model(folder) == ("mobilenet_v2_onnx", {"model.onnx", CLASS_INDEX})
    assert _bento_envs(built, "classify")["CLASSIFY_RUNTIME"] == "onnxruntime"
    requirements = _requirements(folder)
    assert requirements["onnxruntime"] == "1.32.0"
    assert requirements["bentoml"] == "1.4.40"
    assert not any(name.startswith(("tensorflow", "keras", "tf2onnx")) for name in requirements)
    sources = {str(p.relative_to(folder / "src")) for p in (folder / "src").rglob("*.py")}
    expected = {"service.py", "runtimes.py", "batcher.py", "common/storage.py", "common/images.py"}
    assert expected <= sources
    assert not any(s.startswith(("client/", "tests/", "benchmarks/")) for s in sources)


def test_tensorflow_variant_carries_tensorflow(built):
    folder = _bento_dir(built, "tensorflow")
    assert _bento_envs(built, "tensorflow")["CLASSIFY_RUNTIME"] == "tensorflow"
    assert _requirements(folder)["tensorflow-cpu"] == "2.21.0"
    assert _packed_model(folder) == ("mobilenet_v2_keras", {"model.keras", CLASS_INDEX})


def test_openvino_variant_carries_openvino_but_no_tensorflow(built):
    folder = _bento_dir(built, "openvino")
    assert _bento_envs(built, "openvino")["CLASSIFY_RUNTIME"] == "openvino-int8"
    requirements = _requirements(folder)
    assert requirements["openvino"] == "2026.4.1"
    assert not any(name.startswith(("tensorflow", "onnxruntime")) for name in requirements)
    files = {"model.onnx", "model-int8.xml", "model-int8.bin", CLASS_INDEX}
    assert _packed_model(folder) == ("mobilenet_v2_openvino", files)


def test_preprocess_bento_has_shared_code_but_no_tensorflow(built):
    folder = _bento_dir(built, "preprocess")
    manifest = yaml.safe_load((folder / "bento.yaml").read_text())
    assert manifest["models"] == []
    requirements = _requirements(folder)
    assert not any(name.startswith(("tensorflow", "keras", "tf-")) for name in requirements)
    assert requirements["pillow"] == "13.0.0"
    sources = {str(p.relative_to(folder / "src")) for p in (folder / "src").rglob("*.py")}
    assert {"preprocess/service.py", "preprocess/uploads.py", "common/storage.py"} <= sources
    assert "service.py" not in sources


def _bento_envs(built: dict[str, str], name: str) -> dict[str, str]:
    """The Bento's `envs`: its container sets them, `bentoml serve` does not (bentos/README)."""
    manifest = yaml.safe_load((_bento_dir(built, name) / "bento.yaml").read_text())
    return {env["name"]: env["value"] for env in manifest.get("envs") or []}


def test_built_bentos_serve_the_pipeline(built, bentoml_home, photos, tmp_path):
    backend = make_backend("local", tmp_path, None)
    servers = [
        Server(
            built[name],
            service_env(bentoml_home, backend.env, **_bento_envs(built, name)),
            tmp_path / f"{name}.log",
        ).start()
        for name in ("classify", "preprocess", "tensorflow", "openvino")
    ]
    try:
        classify_server, preprocess_server, tensorflow_server, openvino_server = (
            s.wait_ready() for s in servers
        )
        stored = upload(preprocess_server.url, photos["parrot"])
        assert stored.status_code == 200, stored.text
        answers = [
            classify(server.url, stored.json()["gcs_path"])
            for server in (classify_server, tensorflow_server, openvino_server)
        ]
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert answer.json()["label"] == EXPECTED_LABELS["resize"]["parrot"]
        runtimes = [answer.json()["runtime"] for answer in answers]
        assert runtimes == ["onnxruntime", "tensorflow", "openvino-int8"]
        onnx, tensorflow, int8 = (answer.json()["confidence"] for answer in answers)
        assert abs(onnx - tensorflow) < 1e-4
        assert abs(onnx - int8) < 0.2  # INT8: same class; up to 0.19 on the held-out sample
    finally:
        for server in servers:
            server.stop()


def test_bentoml_cli_lists_all_four(built):
    env = {**os.environ, "BENTOML_HOME": built["home"]}
    out = subprocess.run([BENTOML, "list", "-o", "json"], env=env, capture_output=True, text=True)
    listed = {bento["tag"] for bento in json.loads(out.stdout)}
    names = ("classify", "preprocess", "tensorflow", "openvino")
    assert {built[name] for name in names} <= listed
