"""Real container images: `bentoml containerize --backend buildah`, run with podman, the full
pipeline against them, and the docker-compose stack through podman-compose.

No registry is reachable here, so the test (only the test) substitutes a local Debian base
image for BentoML's standard one (a bentofile's `docker.base_image` overrides the one the
services declare); the shipped bentofiles keep the standard base.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pillow_heif
import pytest
import yaml
from conftest import BENTOML, REPO, free_port, wait_until
from helpers import EXPECTED_LABELS, classify, encode, upload
from packaging.utils import canonicalize_name
from PIL import Image

from classify.runtime_table import spec
from common.bento_image import lock_file
from locks import versions
from scripts.sizing import CLASSIFY_IMAGE_RUNTIMES, record

TOOLS = ("podman", "buildah", "debootstrap", "runc")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (.ci/run installs them with apt)"
)
pillow_heif.register_heif_opener()  # HEIC uploads made here
CONTAINERS = REPO / "tests" / "containers"
BASE_IMAGE = "localhost/image-services-test-base:latest"
SCRATCH = Path(os.environ.get("CONTAINER_SCRATCH", "/tmp/image-services-containers"))


def container_env() -> dict[str, str]:
    """The environment tests/containers/env.sh sets up (runc, overlay in a scratch folder)."""
    out = subprocess.run(
        ["bash", "-c", f"source {CONTAINERS / 'env.sh'} && env -0"],
        capture_output=True,
        check=True,
    ).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=container_env(), capture_output=True, text=True, check=check
    )


# Each image: its bentofile and build arguments (the classify images: one service, built for
# the runtime of each image in the runtime table).
BUILDS = {
    **{
        name: ("bentofile.yaml", ["--arg", f"runtime={runtime}"])
        for name, runtime in CLASSIFY_IMAGE_RUNTIMES.items()
    },
    "preprocess": ("preprocess/bentofile.yaml", []),
}


@pytest.fixture(scope="module")
def images(bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The Bentos built on the local base and containerized with buildah."""
    env = {**container_env(), "BENTOML_HOME": str(bentoml_home)}
    subprocess.run([str(CONTAINERS / "build-base-image"), BASE_IMAGE], env=env, check=True)
    base_bytes = json.loads(podman("image", "inspect", BASE_IMAGE).stdout)[0]["Size"]
    tmp = tmp_path_factory.mktemp("bentofiles")
    built = {}
    for name, (bentofile, arguments) in BUILDS.items():
        config = yaml.safe_load((REPO / bentofile).read_text())
        config["docker"] = {"base_image": BASE_IMAGE}  # test-only substitution
        test_bentofile = tmp / f"{name}.yaml"
        test_bentofile.write_text(yaml.safe_dump(config))
        build = [BENTOML, "build", "-f", str(test_bentofile), ".", *arguments, "--output", "tag"]
        tag = (
            subprocess.run(
                build,
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.split()[-1]
            .removeprefix("__tag__:")
        )
        image = f"localhost/{name}:test"
        started = time.monotonic()
        result = subprocess.run(
            [BENTOML, "containerize", tag, "--backend", "buildah", "--image-tag", image],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        inspect = json.loads(podman("image", "inspect", image).stdout)[0]
        built[name] = {
            "image": image,
            "bento": tag,
            "build_s": round(time.monotonic() - started, 1),
            "size_mb": round(inspect["Size"] / 1e6),
            "added_mb": round((inspect["Size"] - base_bytes) / 1e6),
            "base_mb": round(base_bytes / 1e6),
            "user": inspect["Config"].get("User", ""),
        }
        record("images", name, **{k: built[name][k] for k in ("size_mb", "added_mb", "base_mb")})
    return built


# What each image may add on top of its base, in MB (the targets; measured figures and what
# each image carries: docs/deploy.md, "Containers").
MOST_ADDED_MB = {
    "classify": 400,
    "preprocess": 300,
    # 500 until the storage events' CloudEvents SDK (and python-dateutil) came in: +1 MB
    "classify-openvino": 510,
    # TensorFlow's own wheel carries 287 MB of C++ headers and pulls in libclang (62 MB), neither
    # used at run time; BentoML's template installs them in one layer that a later step cannot
    # shrink (docs/deploy.md, "Containers"), so this image stays above the 1.6 GB target
    "classify-tensorflow": 1800,
}
# Build tools and package caches no runtime image may carry.
BUILD_TOOLS = ("gcc", "cc", "git", "make")
CACHES = ("/root/.cache", "/home/bentoml/.cache", "/var/cache/apt/archives", "/var/lib/apt/lists")
# Cold start, `podman run` to the first correct answer: the targets are 3 s (classify) and 2 s
# (preprocess) on 2 cores, reported by the test; it fails only far beyond them (a busy CI host).
COLD_START_CEILING_S = {
    "classify": 9.0,
    "preprocess": 6.0,
    "classify-openvino": 12.0,
    "classify-tensorflow": 30.0,
}


class Container:
    """`podman run -d --network host -e PORT=...`: traffic stays on 127.0.0.1."""

    def __init__(self, image: str, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["run", "-d", "--network", "host", "-e", f"PORT={self.port}"]
        args += ["-e", "STORAGE_DIR=/data", "-v", f"{data_dir}:/data"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        started = time.monotonic()
        self.id = podman(*args, image).stdout.strip()
        wait_until(
            lambda: httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200,
            180,
            image,
        )
        self.ready_s = round(time.monotonic() - started, 1)

    def stop(self) -> None:
        podman("stop", "-t", "10", self.id, check=False)
        podman("rm", "-f", self.id, check=False)


def first_answer_s(image: str, data_dir: Path, call) -> tuple[float, httpx.Response]:
    """Seconds from `podman run` to the first 200 answer of `call(url)`, as Cloud Run's first
    request sees a cold start (not only /readyz), and that answer."""
    port = free_port()
    args = ["run", "-d", "--network", "host", "-e", f"PORT={port}"]
    args += ["-e", "STORAGE_DIR=/data", "-v", f"{data_dir}:/data", image]
    started = time.monotonic()
    container = podman(*args).stdout.strip()
    try:
        while time.monotonic() - started < 180:
            try:
                answer = call(f"http://127.0.0.1:{port}")
                if answer.status_code == 200:
                    return round(time.monotonic() - started, 2), answer
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{image} answered nothing in 180 s")
    finally:
        podman("rm", "-f", "-t", "5", container, check=False)


def test_images_carry_no_build_tools_or_package_caches(images):
    for name, built in images.items():
        script = f"for tool in {' '.join(BUILD_TOOLS)}; do command -v $tool; done; "
        script += f"find {' '.join(CACHES)} -type f ! -name lock 2>/dev/null; true"  # apt's locks
        found = podman(
            "run", "--rm", "--user", "root", "--entrypoint", "sh", built["image"], "-c", script
        )
        assert found.stdout.split() == [], f"{name} carries {found.stdout.split()}"


# The model files each image carries: only what its runtime loads (and the class index).
MODEL_FILES = {
    "classify": {"model.onnx"},
    "classify-openvino": {"model.onnx", "model-int8.xml", "model-int8.bin"},
    "classify-tensorflow": {"model.keras"},
    "preprocess": set(),
}


def test_images_carry_only_the_model_files_their_runtime_loads(images):
    for name, built in images.items():
        listing = podman(
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            built["image"],
            "-c",
            'find "$BENTO_PATH/models" -mindepth 3 -type f -printf "%f\\n" 2>/dev/null; :',
        )
        files = set(listing.stdout.split()) - {"imagenet_class_index.json", "model.yaml"}
        assert files == MODEL_FILES[name], name


def test_images_add_at_most_their_budget_to_the_base(images):
    report = {
        name: {k: built[k] for k in ("size_mb", "added_mb", "base_mb")}
        for name, built in images.items()
    }
    print(json.dumps(report, indent=2), file=sys.stderr)
    for name, most in MOST_ADDED_MB.items():
        assert images[name]["added_mb"] <= most, f"{name}: {report[name]}"


def starts_s(image: str, data_dir: Path, call) -> tuple[float, float, httpx.Response]:
    """The first start of a freshly built image (nothing of it in the host's page cache, as on
    a new Cloud Run instance) and a second one (cached), to the first answer of each."""
    first, answer = first_answer_s(image, data_dir, call)
    again, answer = first_answer_s(image, data_dir, call)
    return first, again, answer


@pytest.fixture(scope="module")
def stored_photo(images, photos, tmp_path_factory) -> tuple[Path, str, float, float]:
    """The preprocess image's cold starts: `podman run` to a stored photo (the folder, the path,
    the first start's seconds and a second start's)."""
    data = tmp_path_factory.mktemp("cold-start")
    data.chmod(0o777)  # the containers' non-root user writes here
    first, again, stored = starts_s(
        images["preprocess"]["image"], data, lambda url: upload(url, photos["parrot"])
    )
    assert stored.status_code == 200, stored.text
    return data, stored.json()["gcs_path"], first, again


def _record_starts(name: str, first: float, again: float, route: str) -> None:
    record("images", name, cold_start_s=first, warm_start_s=again, first_answer=route)
    print(json.dumps({name: {"cold_start_s": first, "again_s": again}}), file=sys.stderr)
    assert first <= COLD_START_CEILING_S[name]


def test_preprocess_cold_start_to_the_first_answer(stored_photo):
    _record_starts("preprocess", *stored_photo[2:], "/preprocess")


@pytest.mark.parametrize("name", CLASSIFY_IMAGE_RUNTIMES)
def test_classify_cold_start_to_the_first_correct_answer(images, stored_photo, name):
    data, path = stored_photo[:2]
    first, again, answer = starts_s(images[name]["image"], data, lambda url: classify(url, path))
    assert answer.json()["label"] == EXPECTED_LABELS["resize"]["parrot"]
    assert answer.json()["runtime"] == CLASSIFY_IMAGE_RUNTIMES[name]
    _record_starts(name, first, again, "/classify")


INSTALLED = (
    "import importlib.metadata as m, json; "
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
)


def test_each_image_installed_exactly_its_lock(images):
    """What runs in an image is what the tests ran: its family's lock (locks/), every
    transitive package at the venv's version, nothing else but the installer's own."""
    for name, built in images.items():
        family = spec(CLASSIFY_IMAGE_RUNTIMES[name]).family if name != "preprocess" else None
        listing = podman(
            "run", "--rm", "--entrypoint", "/app/.venv/bin/python", built["image"], "-c", INSTALLED
        )
        installed = {
            canonicalize_name(package): version
            for package, version in json.loads(listing.stdout).items()
        }
        for tool in ("pip", "setuptools", "wheel", "uv"):  # the virtualenv's, BentoML's template
            if tool not in versions(lock_file(family)):
                installed.pop(tool, None)
        assert installed == versions(lock_file(family)), name


def test_images_run_as_non_root_and_preprocess_has_no_tensorflow(images):
    for built in images.values():
        assert built["user"] not in ("", "root", "0"), built
    listing = podman(
        "run",
        "--rm",
        "--entrypoint",
        "/app/.venv/bin/python",
        images["preprocess"]["image"],
        "-c",
        "import importlib.util as u; print(u.find_spec('tensorflow') is None)",
    )
    assert listing.stdout.strip() == "True"


def test_openvino_image_classifies_in_int8_without_tensorflow_or_onnxruntime(
    images, photos, tmp_path
):
    image = images["classify-openvino"]["image"]
    absent = podman(
        "run",
        "--rm",
        "--entrypoint",
        "/app/.venv/bin/python",
        image,
        "-c",
        "import importlib.util as u; print([u.find_spec(m) is None for m in "
        "('tensorflow', 'onnxruntime')], u.find_spec('openvino') is None)",
    )
    assert absent.stdout.strip() == "[True, True] False"
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)
    preprocess = Container(images["preprocess"]["image"], data)
    int8 = Container(image, data)
    try:
        for name in ("parrot", "dragonfly"):
            stored = upload(preprocess.url, photos[name]).json()["gcs_path"]
            answer = classify(int8.url, stored)
            assert answer.status_code == 200, answer.text
            assert answer.json()["label"] == EXPECTED_LABELS["resize"][name]
            assert answer.json()["runtime"] == "openvino-int8"
        figures = {**images["classify-openvino"], "ready_s": int8.ready_s}
        print(json.dumps({"classify-openvino": figures}, indent=2), file=sys.stderr)
    finally:
        int8.stop()
        preprocess.stop()


def test_pipeline_against_the_two_containers(images, photos, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)  # the containers' non-root user writes here
    preprocess = Container(images["preprocess"]["image"], data)
    classify_container = Container(images["classify"]["image"], data)
    try:
        uid = podman("exec", classify_container.id, "id", "-u").stdout.strip()
        assert uid != "0"
        uploads = [(name, name, data) for name, data in photos.items()]
        # an iPhone-style HEIC and an AVIF: the image carries their decoders
        for fmt in ("HEIF", "AVIF"):
            photo = Image.open(io.BytesIO(photos["parrot"])).convert("RGB")
            uploads.append((f"parrot as {fmt}", "parrot", encode(photo, fmt)))
        for what, name, image_bytes in uploads:
            stored = upload(preprocess.url, image_bytes)
            assert stored.status_code == 200, (what, stored.text)
            assert stored.json()["gcs_path"].startswith("file:///data/preprocessed/")
            answer = classify(classify_container.url, stored.json()["gcs_path"])
            assert answer.status_code == 200, answer.text
            assert answer.json()["label"] == EXPECTED_LABELS["resize"][name], what
        figures = {
            name: {**images[name], "ready_s": container.ready_s}
            for name, container in (("classify", classify_container), ("preprocess", preprocess))
        }
        print(json.dumps(figures, indent=2), file=sys.stderr)
    finally:
        classify_container.stop()
        preprocess.stop()


def compose_for_test(images: dict[str, dict], ports: dict[str, int]) -> dict:
    """docker-compose.yml with the test's override: host networking, local images, free ports."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    services["gcs"]["build"]["context"] = str(REPO / "compose" / "gcs-emulator")
    services["gcs"]["build"]["args"] = {"BASE_IMAGE": BASE_IMAGE}
    services["gcs"]["command"] = ["--host", "127.0.0.1", "--port", str(ports["gcs"])]
    for name, service in services.items():
        service["network_mode"] = "host"
        service.pop("ports", None)
        if name != "gcs":
            service["image"] = images[name]["image"]
            service["environment"]["PORT"] = str(ports[name])
            service["environment"]["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{ports['gcs']}"
    return compose


def test_compose_stack_runs_the_pipeline(images, photos, tmp_path):
    ports = {name: free_port() for name in ("gcs", "classify", "preprocess")}
    compose_file = tmp_path / "docker-compose.test.yml"
    compose_file.write_text(yaml.safe_dump(compose_for_test(images, ports)))
    compose = [str(Path(sys.executable).parent / "podman-compose"), "-f", str(compose_file)]
    env = container_env()
    up = subprocess.run([*compose, "up", "-d", "--build"], env=env, capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        for name in ("classify", "preprocess"):
            url = f"http://127.0.0.1:{ports[name]}/readyz"
            wait_until(lambda u=url: httpx.get(u, timeout=2).status_code == 200, 180, name)
        stored = upload(f"http://127.0.0.1:{ports['preprocess']}", photos["dragonfly"])
        assert stored.status_code == 200, stored.text
        assert stored.json()["gcs_path"].startswith("gs://local-bucket/preprocessed/")
        answer = classify(f"http://127.0.0.1:{ports['classify']}", stored.json()["gcs_path"])
        assert answer.status_code == 200 and answer.json()["label"] == "dragonfly", answer.text
    finally:
        subprocess.run([*compose, "down", "-t", "10"], env=env, capture_output=True)


def test_classify_image_runs_classify_bucket_as_a_job_task(images, photos, tmp_path):
    """What a Cloud Run job runs (`--command classify-bucket`): a folder of photos classified
    by the image's own model, one JSON result each, exit status 0, as the non-root user."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("parrot", "cat"):
        (folder / f"{name}.jpg").write_bytes(photos[name])
    (folder / "notes.txt").write_text("not a photo")
    os.chmod(folder, 0o777)  # the container's user writes its results here
    run = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{folder}:/photos",
        "-e",
        "CLOUD_RUN_TASK_INDEX=0",
        "-e",
        "CLOUD_RUN_TASK_COUNT=1",
        "--entrypoint",
        "classify-bucket",
        images["classify"]["image"],
        "/photos",
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = {
        path.name: json.loads(path.read_text()) for path in (folder / "results").glob("*.json")
    }
    assert results["parrot.jpg.json"]["answer"]["label"] == EXPECTED_LABELS["resize"]["parrot"]
    assert results["parrot.jpg.json"]["answer"]["runtime"] == "onnxruntime"
    assert results["notes.txt.json"]["error"]["code"] == "not_an_image"
    assert json.loads(run.stdout.strip().splitlines()[-1])["event"] == "finished"  # JSON logs
