#!/usr/bin/env python
"""Photos already in a bucket: the bucket job against the HTTP path and the in-process limit.

    .venv/bin/python -m benchmarks.buckets                 # ~10 minutes on 2 cores
    .venv/bin/python -m benchmarks.buckets --smoke --out /tmp/buckets   # does it run?

Side by side in one run, on 127.0.0.1 only, the same generated phone-like photos (~1 MP and
~12 MP JPEGs, distinct pixels each):
- the in-process limit: decode (the services' code) and the model (in batches of 16) measured
  alone, in CPU-ms per photo, and what the cores allow at that cost;
- the job: `classify-bucket` with 1 task and with 2 tasks side by side on the cores, over a
  local folder and over a bucket of the GCS emulator;
- the HTTP path: `image-pipeline` (the client, 16 photos in flight) through preprocess and
  classify on local storage.
Photos/s, core-ms per photo, peak RSS, whether the job's answers equal the HTTP path's, and
the cost per million photos on Cloud Run. Writes buckets.md and buckets.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from benchmarks.buckets_report import PRICES, best_job, render
from benchmarks.harness import (
    BENTOML,
    REPO,
    ServerUnderTest,
    free_port,
    tree_cpu_s,
    tree_rss_mb,
)
from benchmarks.pipeline import photo_variants
from benchmarks.report import stamp, write
from scripts.bentoml_home import private_bentoml_home

KINDS = {"1 MP": 1.0, "12 MP": 12.0}
BATCH_SIZE = 16
JOB = (sys.executable, "-m", "classify.bucket", "--batch-size", str(BATCH_SIZE))
HTTP_CONCURRENCY = 16  # the deployed concurrency
BUCKET = "bench-photos"
EMULATOR = (
    sys.executable,
    str(REPO / "tests" / "gcs_emulator.py"),
    "start",
    "--host",
    "127.0.0.1",
    "--in-memory",
    "-q",
)
# What scripts/deploy gives each (vCPU, GiB): the job and classify 2 vCPU and classify's
# measured memory (2 GiB), preprocess 1 vCPU and 2 GiB (scripts/sizing.json).
SHAPES = {"job": (2, 2.0), "classify": (2, 2.0), "preprocess": (1, 2.0)}


@dataclass(frozen=True)
class Scale:
    photos: dict[str, int]


SCALES = {
    "full": Scale({"1 MP": 300, "12 MP": 120}),
    "smoke": Scale({"1 MP": 12, "12 MP": 4}),
}


def in_process_limit(photos: list[bytes]) -> dict[str, float]:
    """CPU-ms per photo of decoding (one thread) and of the model (batches of 16, its own
    threads), measured alone in this process; and the photos/s the cores allow at that cost."""
    import numpy as np

    from classify.model import Classifier
    from classify.settings import ClassifySettings
    from common.images.decode import set_pixel_limit, to_model_pixels

    settings = ClassifySettings.from_env({})
    set_pixel_limit(settings.max_image_pixels)
    model = Classifier.load(settings)
    model.answers([np.zeros((224, 224, 3), np.uint8)] * BATCH_SIZE, 5)  # warm
    started = time.process_time()
    pixels = [to_model_pixels(p, settings.max_image_pixels, settings.resize_mode) for p in photos]
    decode_s = time.process_time() - started
    started = time.process_time()
    for first in range(0, len(pixels), BATCH_SIZE):
        model.answers(pixels[first : first + BATCH_SIZE], 5)
    model_s = time.process_time() - started
    per_photo_ms = 1000 * (decode_s + model_s) / len(photos)
    return {
        "decode_cpu_ms": 1000 * decode_s / len(photos),
        "model_cpu_ms": 1000 * model_s / len(photos),
        "photos_per_s": (os.cpu_count() or 1) * 1000 / per_photo_ms,
    }


class PeakRss:
    """The peak total RSS of some processes (and their children), sampled every 0.1 s."""

    def __init__(self, pids: list[int]) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            total = 0.0
            for process in self.processes:
                with contextlib.suppress(psutil.Error):  # exited meanwhile
                    total += tree_rss_mb(process)
            self.peak_mb = max(self.peak_mb, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def startup_cpu_s(env: dict[str, str], empty: Path) -> float:
    """CPU seconds of one task with nothing to do: the interpreter, imports and model load,
    which every task pays once before its first photo."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([*JOB, str(empty)], cwd=REPO, env=env, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_job(target: str, tasks: int, env: dict[str, str], photos: int) -> dict:
    """`classify-bucket TARGET` as `tasks` processes side by side; wall time from the start to
    the last exit (model loads included), steady photos/s from the tasks' own manifests."""
    import json

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [*JOB, target, "--task-index", str(i), "--task-count", str(tasks)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(tasks)
    ]
    rss = PeakRss([p.pid for p in processes])
    manifests = []
    for process in processes:
        _, err = process.communicate(timeout=3600)
        if process.returncode != 0:
            raise RuntimeError(f"classify-bucket failed: {err[-2000:]}")
        manifests.append(json.loads(err.strip().splitlines()[-1]))
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    done = sum(m["done"] for m in manifests)
    busy_s = max(m["duration_s"] for m in manifests)
    return {
        "tasks": tasks,
        "photos": done,
        "errors": sum(sum(m["failed"].values()) + m["transient"] for m in manifests),
        "wall_s": round(wall, 2),
        "photos_per_s_wall": done / wall,
        "photos_per_s": done / busy_s,  # from the first listing to the last result
        "core_ms_per_photo": 1000 * cpu_s / max(1, done),
        "cpu_s": cpu_s,
        "peak_rss_mb": rss.stop(),
        "expected": photos,
    }


def clear_results(target: str, folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder / "results", ignore_errors=True)
        return
    from google.cloud import storage

    bucket = storage.Client(project="bench").bucket(BUCKET)
    for blob in list(bucket.list_blobs(prefix="results/")):
        blob.delete()


def run_http(folder: Path, servers: dict[str, ServerUnderTest], storage: Path, out: Path) -> dict:
    """The client through both services: every photo uploaded, then its path classified."""
    for path in storage.rglob("*"):  # what the last run stored: every upload is new again
        if path.is_file():
            path.unlink()
    names = ("preprocess", "classify")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = {name: tree_cpu_s(servers[name].process) for name in names}
    rss = PeakRss([servers[name].popen.pid for name in names])
    command = [sys.executable, "-m", "client", str(folder), "--output", str(out)]
    command += ["--concurrency", str(HTTP_CONCURRENCY), "--mode", "resize"]
    command += ["--preprocess-url", servers["preprocess"].url]
    command += ["--classify-url", servers["classify"].url]
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=3600)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    server_s = {name: tree_cpu_s(servers[name].process) - server_before[name] for name in names}
    rows = list(csv.DictReader(out.open()))
    done = max(1, sum(1 for r in rows if not r["error"]))
    return {
        "photos": done,
        "errors": len(rows) - done,
        "wall_s": round(wall, 2),
        "photos_per_s": done / wall,
        "core_ms_per_photo": 1000 * (sum(server_s.values()) + client_s) / done,
        "client_core_ms_per_photo": 1000 * client_s / done,
        "server_core_ms_per_photo": {name: 1000 * cpu / done for name, cpu in server_s.items()},
        "peak_rss_mb": rss.stop(),
    }


def agreement(folder: Path, http_csv: Path) -> dict:
    """The job's answers against the HTTP path's for the same photos."""
    from classify.results import ClassificationResult

    served = {Path(r["file"]).name: r for r in csv.DictReader(http_csv.open())}
    same_label, worst = 0, 0.0
    for path in (folder / "results").glob("*.json"):
        result = ClassificationResult.model_validate_json(path.read_bytes())
        other = served[path.name.removesuffix(".json")]
        same_label += result.answer.label == other["label"]
        worst = max(worst, abs(result.answer.confidence - float(other["confidence"])))
    return {"photos": len(served), "same_label": same_label, "max_confidence_diff": worst}


def cost_per_million(job_photos_per_s: float, http_core_ms: dict[str, float]) -> dict:
    """USD per million photos: the job as instance time of its shape; the HTTP path as the
    request-based vCPU-seconds both services spend per photo, plus two requests each."""
    vcpus, gib = SHAPES["job"]
    job = (
        1e6
        / job_photos_per_s
        * (vcpus * PRICES["job_vcpu_second"] + gib * PRICES["job_gib_second"])
    )
    http = 2 * PRICES["per_request"] * 1e6
    for service, core_ms in http_core_ms.items():
        vcpus, gib = SHAPES[service]
        cpu_s = core_ms / 1000 * 1e6
        http += (
            cpu_s * PRICES["request_vcpu_second"]
            + cpu_s / vcpus * gib * PRICES["request_gib_second"]
        )
    return {"job": job, "http": http}


def run(scale: Scale, tmp: Path) -> dict:
    figures: dict = {"limit": {}, "job_local": {}, "job_gcs": {}, "http": {}, "agreement": {}}
    home = private_bentoml_home(tmp / "home")
    env = {**os.environ, "BENTOML_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    emulator_port = free_port()
    emulator = subprocess.Popen(
        [*EMULATOR, "--port", str(emulator_port), "--default-bucket", BUCKET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    os.environ["STORAGE_EMULATOR_HOST"] = emulator_url
    gcs_env = {**env, "STORAGE_EMULATOR_HOST": emulator_url}
    storage = tmp / "served"
    server_env = {**env, "STORAGE_DIR": str(storage)}
    serve = [BENTOML, "serve", "--host", "127.0.0.1", "--port"]
    ports = free_port(), free_port()
    servers: dict[str, ServerUnderTest] = {}
    try:
        _wait_for(emulator_url)
        from google.cloud import storage as gcs

        bucket = gcs.Client(project="bench").bucket(BUCKET)
        servers["preprocess"] = ServerUnderTest(
            [*serve, str(ports[0]), "preprocess.service:Preprocess"],
            {**server_env, "BENTOML_HOME": str(private_bentoml_home(tmp / "home-pre", home))},
            ports[0],
        )
        servers["classify"] = ServerUnderTest(
            [*serve, str(ports[1]), "service:Classify"], server_env, ports[1]
        )
        empty = tmp / "empty"
        empty.mkdir()
        figures["startup_cpu_s"] = startup_cpu_s(env, empty)
        for kind, count in scale.photos.items():
            print(f"{kind}: {count} photos", flush=True)
            photos = photo_variants(KINDS[kind], count=count)
            folder = tmp / kind.replace(" ", "")
            folder.mkdir()
            for n, data in enumerate(photos):
                (folder / f"{n:04d}.jpg").write_bytes(data)
                bucket.blob(f"{kind.replace(' ', '')}/{n:04d}.jpg").upload_from_string(data)
            figures["limit"][kind] = in_process_limit(photos)
            figures["job_local"][kind], figures["job_gcs"][kind] = {}, {}
            for tasks in (1, 2):
                clear_results(str(folder), folder)
                figures["job_local"][kind][str(tasks)] = run_job(str(folder), tasks, env, count)
                clear_results("gcs", None)
                target = f"gs://{BUCKET}/{kind.replace(' ', '')}/"
                figures["job_gcs"][kind][str(tasks)] = run_job(target, tasks, gcs_env, count)
            http_csv = tmp / f"http-{kind.replace(' ', '')}.csv"
            figures["http"][kind] = run_http(folder, servers, storage, http_csv)
            figures["agreement"][kind] = agreement(folder, http_csv)
    finally:
        for server in (servers.get("preprocess"), servers.get("classify")):
            if server is not None:
                server.stop()
        emulator.terminate()
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    return figures


def _wait_for(url: str) -> None:
    for _ in range(200):
        try:
            if httpx.get(url, timeout=1).text == "OK":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the GCS emulator did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few photos: checks it runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    args = parser.parse_args()
    scale_name = "smoke" if args.smoke else "full"
    started = stamp()
    with tempfile.TemporaryDirectory(prefix="buckets-") as tmp:
        figures = run(SCALES[scale_name], Path(tmp))
    figures |= {**started, "cores": os.cpu_count(), "scale": scale_name, "prices": PRICES}
    figures["cost"] = {}
    for kind in figures["limit"]:
        job = best_job(figures, "job_local", kind)["photos_per_s"]
        figures["cost"][kind] = cost_per_million(
            job, figures["http"][kind]["server_core_ms_per_photo"]
        )
    out = write(args.out, "buckets", figures, render)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
