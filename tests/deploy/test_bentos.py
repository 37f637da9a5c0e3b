"""`scripts/build`: every Bento builds with what it needs, exports, and serves the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import BENTOML, REPO, Server, make_backend, service_env
from helpers import EXPECTED_LABELS, classify, upload

from common.bento_image import lock_file
from locks import versions


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
    ((name, version),) = [model["tag"].split(":") for model in _models(folder)]
    store = folder.parents[2] / "models"
    files = {path.name for path in (store / name / version).iterdir()}
    return name, files - {"model.yaml"}


def _models(folder: Path) -> list[dict]:
    """The models a Bento packs: those its service declares (and any a bentofile lists)."""
    manifest = yaml.safe_load((folder / "bento.yaml").read_text())
    services = manifest.get("services") or []
    return [*manifest["models"], *(model for svc in services for model in svc["models"])]


CLASS_INDEX = "imagenet_class_index.json"


def test_classify_bento_carries_the_model_and_onnxruntime_but_no_tensorflow(built):
    folder = _bento_dir(built, "classify")
    assert _packed_model(folder) == ("mobilenet_v2_onnx", {"model.onnx", CLASS_INDEX})
    assert _built_for(built, "classify") == "onnxruntime"
    requirements = _requirements(folder)
    assert requirements["onnxruntime"] == "1.32.0"
    assert requirements["bentoml"] == "1.4.40"
    assert not any(name.startswith(("tensorflow", "keras", "tf2onnx")) for name in requirements)
    sources = {str(p.relative_to(folder / "src")) for p in (folder / "src").rglob("*.py")}
    expected = {
        "service.py",
        "classify/model.py",
        "classify/bucket/job.py",
        "common/storage/base.py",
    }
    assert expected <= sources
    assert not any(s.startswith(("client/", "tests/", "benchmarks/")) for s in sources)


def test_tensorflow_variant_carries_tensorflow(built):
    folder = _bento_dir(built, "tensorflow")
    assert _built_for(built, "tensorflow") == "tensorflow"
    assert _requirements(folder)["tensorflow-cpu"] == "2.21.0"
    assert _packed_model(folder) == ("mobilenet_v2_keras", {"model.keras", CLASS_INDEX})


def test_openvino_variant_carries_openvino_but_no_tensorflow(built):
    folder = _bento_dir(built, "openvino")
    assert _built_for(built, "openvino") == "openvino-int8"
    requirements = _requirements(folder)
    assert requirements["openvino"] == "2026.4.1"
    assert not any(name.startswith(("tensorflow", "onnxruntime")) for name in requirements)
    files = {"model.onnx", "model-int8.xml", "model-int8.bin", CLASS_INDEX}
    assert _packed_model(folder) == ("mobilenet_v2_openvino", files)


def test_preprocess_bento_has_shared_code_but_no_tensorflow(built):
    folder = _bento_dir(built, "preprocess")
    assert _models(folder) == []
    requirements = _requirements(folder)
    assert not any(name.startswith(("tensorflow", "keras", "tf-")) for name in requirements)
    assert requirements["pillow"] == "13.0.0"
    sources = {str(p.relative_to(folder / "src")) for p in (folder / "src").rglob("*.py")}
    assert {"preprocess/service.py", "preprocess/uploads.py", "common/storage/gcs.py"} <= sources
    assert "service.py" not in sources
    assert not any(source.startswith("classify/") for source in sources)


def _built_for(built: dict[str, str], name: str) -> str:
    """The runtime a classify Bento was built for: its `runtime` build argument, which BentoML
    restores wherever the Bento is served; the one channel (no CLASSIFY_RUNTIME in the image)."""
    manifest = yaml.safe_load((_bento_dir(built, name) / "bento.yaml").read_text())
    envs = {env["name"] for env in manifest.get("envs") or []}
    assert "CLASSIFY_RUNTIME" not in envs
    return manifest["args"]["runtime"]


def test_one_bentofile_builds_every_classify_bento():
    """The runtime is a build argument of the one classify service, not a file per variant."""
    assert sorted(path.name for path in REPO.glob("bentofile*")) == ["bentofile.yaml"]


def test_built_bentos_serve_the_pipeline(built, bentoml_home, photos, tmp_path):
    """Served straight from the store with no CLASSIFY_RUNTIME: each classify Bento serves the
    runtime it was built for (the build argument, not an environment variable)."""
    backend = make_backend("local", tmp_path, None)
    servers = [
        Server(
            built[name],
            service_env(bentoml_home, backend.env),
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


@pytest.mark.parametrize(
    ("name", "extras"),
    [
        ("classify", ["onnx"]),
        ("tensorflow", ["keras"]),
        ("openvino", ["openvino"]),
        ("preprocess", []),
    ],
)
def test_each_bento_installs_its_lock_as_it_is(built, name, extras):
    """Each Bento's requirements are its family's lock (locks/, the venv's versions: what the
    tests ran), not a resolution of the day it was built; no other family's runtime."""
    folder = _bento_dir(built, name)
    packed = versions(folder / "env" / "python" / "requirements.txt")
    assert packed == versions(lock_file(*extras))
    others = {"onnxruntime", "tensorflow-cpu", "openvino"} - set(packed)
    assert len(others) == (3 if name == "preprocess" else 2)


def test_bentoml_cli_lists_all_four(built):
    env = {**os.environ, "BENTOML_HOME": built["home"]}
    out = subprocess.run([BENTOML, "list", "-o", "json"], env=env, capture_output=True, text=True)
    listed = {bento["tag"] for bento in json.loads(out.stdout)}
    names = ("classify", "preprocess", "tensorflow", "openvino")
    assert {built[name] for name in names} <= listed


def test_classify_bucket_in_a_bento_runs_the_runtime_it_was_built_for(
    built, bentoml_home, photos, tmp_path
):
    """`classify-bucket` runs in the Bento's image without `bentoml serve`: it reads the build
    argument from the Bento it runs in (`$BENTO_PATH`, as in the container), with no
    CLASSIFY_RUNTIME anywhere, and loads the model the Bento packs."""
    bento = _bento_dir(built, "tensorflow")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "parrot.jpg").write_bytes(photos["parrot"])
    env = service_env(bentoml_home, {}, BENTO_PATH=str(bento), PYTHONPATH=str(bento / "src"))
    env.pop("CLASSIFY_RUNTIME", None)
    run = subprocess.run(
        [sys.executable, "-m", "classify.bucket", str(folder)],
        env=env,
        cwd=tmp_path,  # not the repository: the Bento's own source is imported
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((folder / "results" / "parrot.jpg.json").read_text())
    assert result["answer"]["runtime"] == "tensorflow"
    assert result["answer"]["model"].startswith("mobilenet_v2_keras:")
