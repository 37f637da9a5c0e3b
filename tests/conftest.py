"""Fixtures that start real things: a GCS emulator, the model import, `bentoml serve` processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from filelock import FileLock

from common.config import Settings
from common.storage import GCSStorage, LocalStorage, Storage
from scripts.bentoml_home import private_bentoml_home

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BENTOML = str(Path(PYTHON).with_name("bentoml"))
MODEL_ASSETS = Path(os.environ.get("MODEL_ASSETS", REPO.parent / "shared" / "models")).resolve()
WEIGHTS = MODEL_ASSETS / "mobilenet_v2_imagenet.h5"
PHOTOS = MODEL_ASSETS / "images"
TEST_BUCKET = "test-bucket"

# Fixtures that import the model (and so start servers or load Keras): a test that needs any
# of them, directly or through another fixture, is `slow`. `scripts/test -m "not slow"` is the
# quick tier: lint, unit tests, the storage backends against the emulator.
SLOW_FIXTURES = {"bentoml_home", "keras_reference", "keras_model"}


# The longest modules, longest first: with pytest-xdist (`-n 2 --dist loadfile`) the workers
# take modules in collection order, so starting with these keeps one worker from being left
# with a long module at the end while the other idles.
LONGEST_MODULES = (
    "test_containers.py",
    "test_benchmark.py",
    "test_pipeline_benchmark.py",
    "test_memory.py",
    "test_soak.py",
    "test_bentos.py",
    "test_runtimes.py",
    "test_batching.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)  # stable: the order inside each module stays


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    check, timeout_s: float, what: str, log: Path | None = None, interval_s: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout_s} s\n{tail}")


@dataclass
class Server:
    """A `bentoml serve` process on a free 127.0.0.1 port, its log kept for failures."""

    target: str
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    stderr: Path | None = None  # a file of its own (stdout alone in `log`), else into `log`

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        command = [BENTOML, "serve", self.target, "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**self.env, "BENTOML_HOME": str(self._own_home())}
        with open(self.log, "wb") as log, open(self.stderr or os.devnull, "wb") as errors:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=errors if self.stderr else subprocess.STDOUT,
            )
        return self

    def _own_home(self) -> Path:
        """A BentoML home for this server alone, sharing the model and Bento stores (servers
        sharing a home would read each other's, or no, metrics)."""
        shared = Path(self.env.get("BENTOML_HOME", Path.home() / "bentoml"))
        return private_bentoml_home(self.log.with_name(f"{self.log.stem}-bentoml-home"), shared)

    def wait_ready(self, timeout_s: float = 120, attempts: int = 3) -> Server:
        """Wait for /readyz; if another process took our free port meanwhile, take another."""

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.target} exited:\n{self.log.read_text()[-4000:]}")
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200

        for attempt in range(attempts):
            try:
                wait_until(ready, timeout_s, self.target, self.log)
                return self
            except RuntimeError:
                lost_port = "Could not bind" in self.log.read_text(errors="ignore")
                if not lost_port or attempt == attempts - 1:
                    raise
                self.port = free_port()
                self.start()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def model_assets() -> Path:
    if not WEIGHTS.is_file():
        pytest.fail(
            f"offline MobileNetV2 weights not found at {WEIGHTS}; set MODEL_ASSETS to the folder "
            "holding mobilenet_v2_imagenet.h5, imagenet_class_index.json and images/"
        )
    return MODEL_ASSETS


@pytest.fixture(scope="session")
def bentoml_home(
    tmp_path_factory: pytest.TempPathFactory, model_assets: Path, worker_id: str
) -> Path:
    """A private BentoML store holding MobileNetV2 imported from the real offline weights.

    With pytest-xdist the workers share one store: the first imports, the others wait for it
    (a lock in the session's temporary folder, which all workers of one run share)."""
    if worker_id == "master":  # not distributed
        home = tmp_path_factory.mktemp("bentoml-home")
        _import_model(home, model_assets)
        return home
    shared = tmp_path_factory.getbasetemp().parent
    home = shared / "bentoml-home"
    with FileLock(shared / "bentoml-home.lock"):
        if not (home / ".imported").exists():
            home.mkdir(exist_ok=True)
            _import_model(home, model_assets)
            (home / ".imported").touch()
    return home


def _import_model(home: Path, model_assets: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(home), "MODEL_ASSETS": str(model_assets)}
    subprocess.run([str(REPO / "scripts" / "ensure-model")], env=env, check=True, cwd=REPO)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`gcp-storage-emulator` (made to honour create-only uploads) on a free port."""
    port = free_port()
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    command = [PYTHON, str(REPO / "tests" / "gcs_emulator.py"), "start", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--in-memory", "--default-bucket", TEST_BUCKET, "-q"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    # The test process's own google-cloud-storage clients talk to the emulator too.
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        wait_until(lambda: httpx.get(url, timeout=2).text == "OK", 20, "GCS emulator", log)
        yield url
    finally:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Backend:
    """One storage configuration: the env the services get, and a store to inspect from tests."""

    name: str
    env: dict[str, str]
    storage: Storage
    settings: Settings


def make_backend(name: str, tmp: Path, emulator_url: str | None) -> Backend:
    if name == "gcs":
        env = {"BUCKET": TEST_BUCKET, "STORAGE_EMULATOR_HOST": str(emulator_url)}
        settings = Settings.from_env(env)
        return Backend(name, env, GCSStorage(TEST_BUCKET, timeout_s=10), settings)
    env = {"STORAGE_DIR": str(tmp / "storage")}
    settings = Settings.from_env(env)
    return Backend(name, env, LocalStorage(settings.storage_dir), settings)


@pytest.fixture(scope="session", params=["local", "gcs"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    emulator = request.getfixturevalue("gcs_emulator") if request.param == "gcs" else None
    return make_backend(request.param, tmp_path_factory.mktemp(request.param), emulator)


def service_env(bentoml_home: Path, backend_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("BUCKET", "STORAGE_DIR", "STORAGE_EMULATOR_HOST")
    }
    env.update(BENTOML_HOME=str(bentoml_home), TF_CPP_MIN_LOG_LEVEL="2", **backend_env, **extra)
    return env


@dataclass
class Services:
    """Both services, started on one storage backend."""

    backend: Backend
    classify: Server
    preprocess: Server


@pytest.fixture(scope="session")
def services(
    backend: Backend, bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    logs = tmp_path_factory.mktemp(f"logs-{backend.name}")
    env = service_env(bentoml_home, backend.env)
    classify = Server("service:Classify", env, logs / "classify.log").start()
    preprocess = Server("preprocess.service:Preprocess", env, logs / "preprocess.log").start()
    try:
        preprocess.wait_ready()
        classify.wait_ready()
        yield Services(backend, classify, preprocess)
    finally:
        classify.stop()
        preprocess.stop()


@pytest.fixture(scope="session")
def photos(model_assets: Path) -> dict[str, bytes]:
    return {path.stem: path.read_bytes() for path in sorted(PHOTOS.glob("*.jpg"))}


@pytest.fixture(scope="session")
def keras_reference(model_assets: Path):
    """In-process Keras MobileNetV2 on the same weights: probabilities for uint8 pixel arrays."""
    import numpy as np
    import tensorflow as tf

    model = tf.keras.applications.MobileNetV2(weights=str(WEIGHTS))

    def predict(pixels: np.ndarray) -> np.ndarray:
        batch = tf.keras.applications.mobilenet_v2.preprocess_input(
            np.asarray(pixels, dtype="float32")[None]
        )
        return model(batch, training=False).numpy()[0]

    return predict


@pytest.fixture(scope="session")
def built(
    bentoml_home: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> dict[str, str]:
    """All four Bentos, built and exported by scripts/build into a temporary folder (once per
    run: xdist workers share the result)."""
    shared = (
        tmp_path_factory.getbasetemp()
        if worker_id == "master"
        else (tmp_path_factory.getbasetemp().parent)
    )
    record = shared / "built.json"
    with FileLock(shared / "built.lock"):
        if not record.exists():
            record.write_text(json.dumps(_build_bentos(bentoml_home, shared / "exported")))
    return json.loads(record.read_text())


def _build_bentos(bentoml_home: Path, export_dir: Path) -> dict[str, str]:
    export_dir.mkdir()
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTO_EXPORT_DIR": str(export_dir)}
    result = subprocess.run(
        [str(REPO / "scripts" / "build")], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Keyed by what the tests call them: classify-tensorflow is "tensorflow", and so on.
    tags = {tag.split(":")[0].removeprefix("classify-"): tag for tag in result.stdout.split()[-4:]}
    assert set(tags) == {"classify", "preprocess", "tensorflow", "openvino"}, result.stdout
    exported = sorted(path.name for path in export_dir.iterdir())
    assert exported == sorted(f"{tag.replace(':', '-')}.tar.gz" for tag in tags.values())
    return {**tags, "home": str(bentoml_home)}
