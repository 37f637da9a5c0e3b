"""The README's per-request bounds, measured on the serving process of preprocess (an upload)
and of classify (a stored object, as the bucket paths read them): for the worst accepted input
of each format at the limits (tests/worst_inputs.py, and a HEIC grid
declaring a 64x64 canvas over 37.7 MP of tiles), one request at a time, the **peak** RSS the
serving process reaches during the request (the kernel's high-water mark, reset before it:
nothing between samples is missed) and the CPU seconds it spends, against

- memory: peak growth <= BYTES_PER_PIXEL (16) x the pixels the request is admitted as (the
  decode budget's own figure: a WebP pixel counts 1.25), plus twice the upload's size (the
  body as received and as parsed), plus 4 MiB for the request itself, and
- CPU: <= CPU_BOUND_S per request (both modes: the slower counts).

With RECORD_REQUEST_BOUNDS=path the figures are written there (benchmarks/request_bounds.json
is the committed run); the README's limits are generated from that file (scripts/bounds.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import Server, service_env
from helpers import serving_process
from hostile import heic_lying_grid
from worst_inputs import inputs

from common.config import Settings
from common.images.decode import admitted_pixels, open_image
from scripts.bounds import CPU_BOUND_S, MEMORY_MARGIN, bound_mib, cpu_s, peak_mib, write_figures

pytestmark = pytest.mark.slow


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _reset_peak(pid: int) -> None:
    """Reset the process's RSS high-water mark (VmHWM) to its current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5\n")


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@pytest.fixture(scope="module")
def worst_inputs() -> dict[str, bytes]:
    limits = Settings()
    made = {
        name: make()
        for name, make in inputs(limits.max_image_pixels, limits.max_upload_bytes).items()
    }
    made["heic grid: 37.7 MP of tiles under a 64x64 canvas"] = heic_lying_grid(6144)
    return made


# Large blocks mapped and unmapped per allocation (glibc otherwise raises its threshold and keeps
# freed blocks): each request then starts from memory handed back, and its peak is what it
# touches itself, not what an earlier request's freed blocks already cover.
RETURN_FREED = "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=65536"
TARGETS = {"preprocess": "preprocess.service:Preprocess", "classify": "service:Classify"}


@pytest.fixture(scope="module", params=sorted(TARGETS))
def served(request, bentoml_home, tmp_path_factory):
    """Each service that decodes what it is sent: preprocess (uploads) and classify (stored
    objects, as the bucket paths read them; its mode is a setting: resize, the default)."""
    tmp = tmp_path_factory.mktemp(f"bounds-{request.param}")
    storage = tmp / "storage"
    env = service_env(bentoml_home, {"STORAGE_DIR": str(storage)}, GLIBC_TUNABLES=RETURN_FREED)
    log = tmp / f"{request.param}.log"
    server = Server(TARGETS[request.param], env, log).start()
    try:
        yield request.param, server.wait_ready(), storage
    finally:
        server.stop()


def _send(client: httpx.Client, service: str, url: str, storage: Path, data: bytes, mode: str):
    if service == "preprocess":
        return client.post(f"{url}/preprocess", files={"image": ("x", data)}, data={"mode": mode})
    stored = storage / "uploads" / "worst.img"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(data)
    return client.post(f"{url}/classify", json={"gcs_path": stored.as_uri()})


def test_each_worst_input_stays_inside_the_stated_memory_and_cpu_bounds(
    served, worst_inputs, photos
):
    service, server, storage = served
    if not Path(f"/proc/{os.getpid()}/clear_refs").exists():
        pytest.skip("no /proc clear_refs: the peak RSS cannot be reset on this kernel")
    worker = serving_process(server)
    limits = Settings()
    modes = ("resize", "center-crop") if service == "preprocess" else ("resize",)
    figures: dict[str, dict[str, float]] = {}
    with httpx.Client(timeout=120) as client:
        warm = _send(client, service, server.url, storage, photos["cat"], "resize")
        assert warm.status_code == 200, warm.text
        for name, data in worst_inputs.items():
            admitted = admitted_pixels(open_image(data, limits.max_image_pixels))
            row = {"bytes": len(data), "admitted_pixels": admitted}
            for mode in modes:
                before_kib = _status_kib(worker.pid, "VmRSS")
                _reset_peak(worker.pid)
                cpu_before = _cpu_s(worker)
                answer = _send(client, service, server.url, storage, data, mode)
                cpu = _cpu_s(worker) - cpu_before
                growth = (_status_kib(worker.pid, "VmHWM") - before_kib) / 1024
                assert answer.status_code == 200, (name, mode, answer.text)
                row[f"peak_growth_mib_{mode}"] = round(growth, 1)
                row[f"cpu_s_{mode}"] = round(cpu, 3)
            figures[name] = row
    write_figures(service, figures)
    for name, row in figures.items():
        bound = bound_mib(row["admitted_pixels"], row["bytes"])
        peak, cpu = peak_mib(row), cpu_s(row)
        assert peak <= MEMORY_MARGIN * bound, f"{name}: {peak:.1f} MiB, bound {bound:.1f}"
        assert cpu <= CPU_BOUND_S, f"{name}: {cpu:.2f} CPU-s, bound {CPU_BOUND_S}"
