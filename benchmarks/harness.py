"""What every benchmark study shares: servers under test, free ports, private BentoML homes,
CPU and RSS of a process tree and its threads, the machine's own load (an idle machine to start
from, the CPU others took during a window), and the machine's description. The load generator
is `load.py`, the report writer `report.py`.

Studies import it (`benchmarks.classify`, `benchmarks.pipeline`, `peers/compare.py`, ...); it
needs only psutil, so the peers' own environments can import it too.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from classify.runtime_table import ALL_RUNTIMES

REPO = Path(__file__).resolve().parents[1]


ASSETS = Path(os.environ.get("MODEL_ASSETS", REPO.parent / "shared" / "models"))


BENTOML = str(Path(sys.executable).with_name("bentoml"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_rss_mb(process: psutil.Process) -> float:
    try:
        procs = [process, *process.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 1e6
    except psutil.Error:
        return 0.0


def tree_cpu_s(process: psutil.Process) -> float:
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


RUNTIME_THREADS = ALL_RUNTIMES  # the service names the runtime's threads after it


def threads_cpu_s(process: psutil.Process) -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of a server, by thread id, with its role.

    The worker (BentoML's worker process, or the process with the most threads) has its event
    loop on the main thread and names its pools and the runtime's threads at the OS level;
    every other process in the tree (BentoML's supervisor) counts as "supervisor".
    """
    procs = [process, *process.children(recursive=True)]
    worker = server_worker(process)
    found = {}
    for proc in procs:
        for thread in proc.threads():
            if proc.pid != worker.pid:
                group = "supervisor"
            else:
                group = thread_role(worker.pid, thread.id, _thread_name(worker.pid, thread.id))
            found[thread.id] = (group, thread.user_time + thread.system_time)
    return found


def server_worker(process: psutil.Process) -> psutil.Process:
    """The process of a server's tree that serves: BentoML's worker, or the busiest one."""
    return max([process, *process.children(recursive=True)], key=_worker_rank)


def thread_role(worker_pid: int, tid: int, name: str) -> str:
    """A worker thread's role from its OS-level name: the event loop is the main thread."""
    if tid == worker_pid:
        return "event loop"
    return name if name.startswith("classify-") or name in RUNTIME_THREADS else "other threads"


def _worker_rank(process: psutil.Process) -> tuple[bool, int]:
    """BentoML's worker process first (a bare service's has fewer threads than its
    supervisor), then the one with the most threads (a server that is one process)."""
    try:
        is_worker = any("_bentoml_impl.worker" in part for part in process.cmdline())
        return is_worker, process.num_threads()
    except psutil.Error:
        return False, 0


def thread_cpu_grown_s(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU each role's threads spent between two `threads_cpu_s` snapshots. Pools retire idle
    threads: one that ended in between is left out (its CPU in between too), not subtracted."""
    grown: dict[str, float] = {}
    for tid, (group, seconds) in after.items():
        grown[group] = grown.get(group, 0.0) + seconds - before.get(tid, (group, 0.0))[1]
    return grown


def _thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "other threads"


HZ = os.sysconf("SC_CLK_TCK")


def system_busy_s() -> float:
    """CPU seconds every process of the machine has spent (/proc/stat, idle and iowait left out)."""
    with open("/proc/stat") as stat:
        values = [int(x) for x in stat.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / HZ


def wait_quiet(limit_s: float = 300, busy_cores: float = 0.2) -> float:
    """Wait (up to `limit_s`) until the machine is idle for 2 s; the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        busy = system_busy_s()
        time.sleep(2)
        if (system_busy_s() - busy) / 2 < busy_cores:
            break
    return time.perf_counter() - started


class CpuWindow:
    """Cores used over a window by this process (the load generator), a server's process tree,
    and everyone else ("foreign": a shared machine's noise)."""

    def __init__(self, server: psutil.Process) -> None:
        self.server = server

    def __enter__(self) -> CpuWindow:
        self.started = time.perf_counter()
        self.busy, self.client_s = system_busy_s(), time.process_time()
        self.server_s = tree_cpu_s(self.server)
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.started
        self.client = (time.process_time() - self.client_s) / wall
        self.server_cores = (tree_cpu_s(self.server) - self.server_s) / wall
        system = (system_busy_s() - self.busy) / wall
        self.foreign = max(0.0, system - self.client - self.server_cores)


class ServerUnderTest:
    """A server process: started, timed to /readyz, sampled for RSS, stopped."""

    def __init__(
        self, command: list[str], env: dict[str, str], port: int, cwd: Path = REPO
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        handle, log = tempfile.mkstemp(prefix="bench-", suffix=".log")
        self.log = Path(log)
        started = time.monotonic()
        self.popen = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=handle)
        os.close(handle)
        self.process = psutil.Process(self.popen.pid)
        deadline = started + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as ready:
                    if ready.status == 200:
                        break
            except (OSError, urllib.error.URLError, http.client.HTTPException):
                pass  # not listening yet, or not ours answering yet (the exit check decides)
            if self.popen.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log}")
            time.sleep(0.05)
        else:
            raise TimeoutError(f"not ready; see {self.log}")
        self.ready_s = time.monotonic() - started
        self.peak_rss_mb = tree_rss_mb(self.process)

    def sample(self) -> None:
        self.peak_rss_mb = max(self.peak_rss_mb, tree_rss_mb(self.process))

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()


# vector extensions the runtimes' kernels use: INT8 gains most with VNNI/AMX, BF16 needs them
CPU_FEATURES = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu() -> dict[str, object]:
    """The CPU's model and vector extensions: the same 2 cores run INT8 and BF16 at very
    different speeds depending on them, and a shared host may land on different CPUs."""
    info = {"model": platform.processor() or platform.machine(), "features": [], "checked": []}
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        fields = dict(
            (key.strip(), value.strip()) for key, _, value in (x.partition(":") for x in lines)
        )
        info["model"] = fields.get("model name") or info["model"]
        info["checked"] = list(CPU_FEATURES)
        info["features"] = [
            name for name in CPU_FEATURES if name in fields.get("flags", "").split()
        ]
    return info


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = (
        "bentoml",
        "onnxruntime",
        "openvino",
        "tensorflow-cpu",
        "numpy",
        "pillow",
        "fastapi",
        "uvicorn",
    )
    return {name: version(name) for name in names}
