"""The servers the comparison starts: the project's classify and each peer in each of its
configurations (a `peer_*.py` launcher and its arguments), one at a time on a free port, ready
when a real request answers 200, stopped with its whole process tree."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import contract
import psutil

from benchmarks.harness import free_port

HERE = Path(__file__).resolve().parent
JSON = "application/json"


def args(*words: str) -> list[str]:
    """A launcher's argument list, written as it would be typed."""
    return " ".join(words).split()


# name -> config -> launcher arguments. Launchers are the peer_*.py scripts.
PEER_CONFIGS: dict[str, dict[str, list[str]]] = {
    "fastapi": {
        "t1": args("--threads 1"),
        "t2": args("--threads 2"),
    },
    "litserve": {
        # the docs' CPU advice: one worker per core; no batching
        "w2-t1": args("--workers 2 --threads 1"),
        "w2-t1-fq": args("--workers 2 --threads 1 --fast-queue"),
        "w2-t2": args("--workers 2 --threads 2"),
        "w1-b8-t2": args("--workers 1 --threads 2 --max-batch-size 8", "--batch-timeout 0.005"),
        "w2-b4-t1": args("--workers 2 --threads 1 --max-batch-size 4", "--batch-timeout 0.005"),
        "w2-b4-t1-fq": args(
            "--workers 2 --threads 1 --max-batch-size 4", "--batch-timeout 0.005 --fast-queue"
        ),
    },
    "ray": {
        "r1-c2-b8": args(
            "--replicas 1 --cpus 2 --threads 2 --max-batch-size 8", "--wait-ms 5 --max-ongoing 32"
        ),
        "r2-c1-b4": args(
            "--replicas 2 --cpus 1 --threads 1 --max-batch-size 4", "--wait-ms 5 --max-ongoing 16"
        ),
        "r1-c2-b8x2-t1": args(
            "--replicas 1 --cpus 2 --threads 1 --max-batch-size 8",
            "--wait-ms 5 --concurrent-batches 2 --max-ongoing 32",
        ),
        "r1-c2-b8-t1": args(
            "--replicas 1 --cpus 2 --threads 1 --max-batch-size 8", "--wait-ms 5 --max-ongoing 32"
        ),
        "r2-c1-b4-fast": args(
            "--replicas 2 --cpus 1 --threads 1 --max-batch-size 4",
            "--wait-ms 5 --max-ongoing 16 --fast",
        ),
        "r1-c2-b8x2-t1-fast": args(
            "--replicas 1 --cpus 2 --threads 1 --max-batch-size 8",
            "--wait-ms 5 --concurrent-batches 2 --max-ongoing 32",
            "--fast",
        ),
        "r2-c1-b4-w1-fast": args(
            "--replicas 2 --cpus 1 --threads 1 --max-batch-size 4",
            "--wait-ms 1 --max-ongoing 16 --fast",
        ),
    },
    "pytriton": {
        "i1-t2-b8": args("--instances 1 --threads 2 --max-batch-size 8"),
        "i2-t1-b8": args("--instances 2 --threads 1 --max-batch-size 8"),
        "i2-t1-b8-d2ms": args("--instances 2 --threads 1 --max-batch-size 8 --delay-us", "2000"),
        "i1-t1-b8": args("--instances 1 --threads 1 --max-batch-size 8"),
    },
}


LAUNCHERS = {name: HERE / f"peer_{name}.py" for name in PEER_CONFIGS}


# PyTriton's bundled Python backend stub is built against NumPy 1.x and PyTriton >= 0.6 pins
# numpy<2, so it may need an environment of its own (README); the others share this one.
PYTHONS = {"pytriton": os.environ.get("PEERS_PYTRITON_PYTHON") or sys.executable}


@dataclass
class Server:
    name: str
    config: str
    process: subprocess.Popen | None = None
    port: int = 0
    log: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.config}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/classify"


def command_for(name: str, config: str, port: int, project: Path) -> tuple[list[str], Path]:
    """(argv, cwd) that starts `name` in `config` on `port`."""
    if name == "bentoml":
        argv = [
            str(project / ".venv" / "bin" / "bentoml"),
            "serve",
            "service:Classify",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        return argv, project
    if name not in PEER_CONFIGS or config not in PEER_CONFIGS[name]:
        raise SystemExit(f"unknown server {name}:{config}")
    python = PYTHONS.get(name, sys.executable)
    argv = [python, str(LAUNCHERS[name]), "--port", str(port), *PEER_CONFIGS[name][config]]
    return argv, HERE


def start(server: Server, project: Path, env: dict, logs: Path, probe_body: bytes) -> float:
    """Start `server` and wait until a real /classify answers 200; seconds it took."""
    server.port = free_port()
    argv, cwd = command_for(server.name, server.config, server.port, project)
    server.log = logs / f"{server.name}-{server.config}-{server.port}.log"
    started = time.perf_counter()
    with open(server.log, "wb") as log:
        server.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = started + 240
    while time.perf_counter() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.label} exited rc={server.process.returncode}; see log")
        try:
            status = asyncio.run(probe(server.url, probe_body))
            if status == 200:
                return time.perf_counter() - started
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{server.label} not ready in 240 s; see log")


async def probe(url: str, body: bytes, content_type: str = JSON) -> int:
    """The status of one POST of `body` to `url`."""
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"Content-Type": content_type}
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, data=body, headers=headers) as r,
    ):
        await r.read()
        return r.status


def stop(server: Server) -> int:
    """SIGTERM the server's leader, then any of its tree still alive, by PID; count leftovers."""
    if server.process is None:
        return 0
    try:
        children = [p.pid for p in psutil.Process(server.process.pid).children(recursive=True)]
    except psutil.Error:
        children = []
    # LitServe shuts its worker and API-server processes down on Ctrl+C, not on SIGTERM
    leader_signal = signal.SIGINT if server.name == "litserve" else signal.SIGTERM
    try:
        server.process.send_signal(leader_signal)
        server.process.wait(timeout=45)
    except subprocess.TimeoutExpired:
        pass
    survivors = []
    for pid in children:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                survivors.append(process)
        except psutil.Error:
            pass
    for process in survivors:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(survivors, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait(10)
    server.process = None
    return len(survivors)


def parse_servers(text: str) -> list[Server]:
    servers = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, config = item.partition(":")
        if name == "bentoml":
            config = config or "default"
        elif name in PEER_CONFIGS and config in ("", "all"):
            servers += [Server(name, c) for c in PEER_CONFIGS[name]]
            continue
        servers.append(Server(name, config))
    labels = [s.label for s in servers]
    if "bentoml:default" not in labels:
        servers.insert(0, Server("bentoml", "default"))  # the reference and the ratio's base
    return servers


def server_env(store: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLASSIFY_", "PEERS_"))}
    env.update(
        STORAGE_DIR=str(store),
        PEERS_MODEL_DIR=str(contract.model_dir()),
        BENTOML_DO_NOT_TRACK="true",
        PYTHONUNBUFFERED="1",
    )
    for key in ("BUCKET", "AUTH_TOKEN", "PYTHONPATH", "OMP_NUM_THREADS"):
        env.pop(key, None)
    return env
