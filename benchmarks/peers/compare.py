"""Side-by-side: the project's BentoML classify server against the serving frameworks a user would
pick instead (LitServe, Ray Serve, PyTriton, plain FastAPI), all serving the same contract with
the same ONNX model on ONNX Runtime.

One server runs at a time: each round starts it on a free 127.0.0.1 port, checks its answers on
the 64 stored images against the project's, warms it up, loads it at concurrency 32 (req/s) and
at concurrency 1 (latency), and stops it (its whole process tree). Rounds alternate servers
(A, B, C, A, B, C, ...). One asyncio + aiohttp load generator (this process) for all; its own CPU,
the server tree's and everyone else's ("foreign") are measured over every window.

    python compare.py --project ../../../fresh --images DIR [DIR ...] \
        --servers bentoml,litserve:w2-t1,ray:r1-c2-b8 --rounds 3 --raw --out results/run.json

Paths come from arguments or the environment (PEERS_PROJECT, PEERS_IMAGE_DIRS separated by
os.pathsep, PEERS_WORK); nothing here is specific to one machine. Run it with the Python of the
peers' virtual environment (the peer servers are started with `sys.executable`); the project's
server with `<project>/.venv/bin/bentoml`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import contract  # beside this script, whose folder is first on the path when run
import numpy as np
import psutil
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parents[1]))  # the project: its benchmark harness and load generator

from benchmarks.harness import CpuWindow, cpu, free_port, system_busy_s, wait_quiet  # noqa: E402
from benchmarks.load import Load, closed_loop, post_bytes  # noqa: E402
from benchmarks.report import row  # noqa: E402

N_IMAGES = 64
CORES = os.cpu_count() or 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG")
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


# ---------------------------------------------------------------- images


def source_photos(image_dirs: list[Path]) -> list[Path]:
    """The first 64 photos of `image_dirs` (sorted within each)."""
    sources: list[Path] = []
    for directory in image_dirs:
        sources += sorted(p for p in directory.iterdir() if p.suffix in IMAGE_SUFFIXES)
    if len(sources) < N_IMAGES:
        raise SystemExit(f"need {N_IMAGES} photos in {image_dirs}, found {len(sources)}")
    return sources[:N_IMAGES]


def make_images(image_dirs: list[Path], store: Path) -> list[Path]:
    """64 stored 224x224 RGB BMPs, resized (bilinear) from the first photos of `image_dirs`."""
    store.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, source in enumerate(source_photos(image_dirs)):
        target = store / f"img{i:02d}.bmp"
        if not target.exists():
            with Image.open(source) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                image.resize((224, 224), Image.Resampling.BILINEAR).save(target, format="BMP")
        paths.append(target)
    return paths


# ---------------------------------------------------------------- load generator


@dataclass
class LoadResult:
    n: int
    concurrency: int
    wall_s: float
    ok: int = 0
    errors: int = 0
    wrong: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    answers: dict[int, dict] = field(default_factory=dict)
    client_cores: float = 0.0
    server_cores: float = 0.0
    foreign_cores: float = 0.0
    attempts: int = 1
    max_conf_diff: float = 0.0

    @property
    def rps(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0


async def drive(
    url: str,
    bodies: list[bytes],
    n: int,
    concurrency: int,
    expected: list[tuple[int, float]] | None = None,
    keep_answers: bool = False,
    timeout_s: float = 60,
    content_type: str = JSON,
) -> LoadResult:
    """`n` POSTs with `concurrency` in flight (the project's closed loop), cycling through
    `bodies`; answers checked against `expected` (index, confidence) per body."""
    result = LoadResult(n=n, concurrency=concurrency, wall_s=0.0)

    async def send(http: aiohttp.ClientSession, number: int) -> None:
        j = number % len(bodies)
        body = json.loads(await post_bytes(http, url, bodies[j], content_type))
        if expected is not None:
            index, confidence = expected[j]
            if body.get("index") != index:
                result.wrong += 1
            else:
                diff = abs(body["confidence"] - confidence)
                result.max_conf_diff = max(result.max_conf_diff, diff)
        if keep_answers:
            result.answers[j] = body

    measured: Load = await closed_loop(send, concurrency, n, timeout_s=timeout_s)
    result.wall_s, result.ok = measured.wall_s, measured.done
    result.errors = sum(measured.errors.values())
    result.latencies_ms = [1000 * s for s in measured.latencies_s]
    return result


# The machine is shared: a window in which other processes took more than this many cores is
# measured again (after a pause), up to MAX_RETRIES times; the last attempt is kept.
MAX_FOREIGN_CORES = 0.25
MAX_RETRIES = 2


def measure(
    url, bodies, n, concurrency, server_pid, expected, content_type: str = JSON
) -> LoadResult:
    for attempt in range(1, MAX_RETRIES + 2):
        with CpuWindow(psutil.Process(server_pid)) as window:
            result = asyncio.run(
                drive(url, bodies, n, concurrency, expected, content_type=content_type)
            )
        result.client_cores = window.client
        result.server_cores = window.server_cores
        result.foreign_cores = window.foreign
        result.attempts = attempt
        if window.foreign <= MAX_FOREIGN_CORES:
            break
        print(f"  (others used {window.foreign:.2f} cores; measuring again)", flush=True)
        time.sleep(5)
    return result


# ---------------------------------------------------------------- servers


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


# ---------------------------------------------------------------- answers


def compare_answers(reference: dict[int, dict], answers: dict[int, dict]) -> dict:
    """How `answers` differ from `reference`: top-1, top-k indices, labels, confidences."""
    top1 = topk = labels = 0
    max_top1 = max_any = 0.0
    for j, ref in reference.items():
        got = answers.get(j)
        if got is None:
            continue
        top1 += got["index"] == ref["index"]
        labels += got["label"] == ref["label"]
        ref_idx = [p["index"] for p in ref["top_k"]]
        got_idx = [p["index"] for p in got["top_k"]]
        topk += ref_idx == got_idx
        max_top1 = max(max_top1, abs(got["confidence"] - ref["confidence"]))
        got_conf = {p["index"]: p["confidence"] for p in got["top_k"]}
        for p in ref["top_k"]:
            if p["index"] in got_conf:
                max_any = max(max_any, abs(got_conf[p["index"]] - p["confidence"]))
    return {
        "n": len(reference),
        "answered": len(answers),
        "top1_equal": top1,
        "topk_order_equal": topk,
        "label_equal": labels,
        "max_top1_conf_diff": max_top1,
        "max_topk_conf_diff": max_any,
    }


def inprocess_reference(paths: list[Path], top_k: int) -> dict[int, dict]:
    """The answers of the contract's own code path, in this process (ORT, 1 thread)."""
    session = contract.onnx_session(1)
    name = session.get_inputs()[0].name
    labels = contract.class_names()
    out = {}
    for j, path in enumerate(paths):
        pixels = contract.decode(path.read_bytes())
        out[j] = contract.answer(session.run(None, {name: pixels[None]})[0][0], top_k, labels)
    return out


# ---------------------------------------------------------------- raw ORT ceiling


def raw_ceiling(paths: list[Path], seconds: float = 3.0) -> list[dict]:
    """In-process images/s of the bare model call: batch 1 and 8, intra-op 1 and 2, and two
    single-threaded sessions side by side (two Python threads); plus the decode cost."""
    from concurrent.futures import ThreadPoolExecutor

    pixels = np.stack([contract.decode(p.read_bytes()) for p in paths])
    rows = []

    def run_for(session, batch: int, stop_at: float) -> int:
        name = session.get_inputs()[0].name
        done = 0
        offset = 0
        while time.perf_counter() < stop_at:
            chunk = pixels[offset : offset + batch]
            session.run(None, {name: chunk})
            done += batch
            offset = (offset + batch) % (len(pixels) - batch + 1)
        return done

    def timed(mode: str, sessions: list, batch: int) -> dict:
        for session in sessions:
            session.run(None, {session.get_inputs()[0].name: pixels[:batch]})
        attempts = 0
        while attempts <= MAX_RETRIES:
            attempts += 1
            with ThreadPoolExecutor(len(sessions)) as pool:
                cpu0, busy0, t0 = time.process_time(), system_busy_s(), time.perf_counter()
                stop_at = t0 + seconds
                done = sum(pool.map(lambda s, end=stop_at: run_for(s, batch, end), sessions))
                wall = time.perf_counter() - t0
            cores = (time.process_time() - cpu0) / wall
            foreign = max(0.0, (system_busy_s() - busy0) / wall - cores)
            if foreign <= MAX_FOREIGN_CORES:
                break
            wait_quiet(60)
        calls = done / batch / len(sessions)
        return {
            "mode": mode,
            "batch": batch,
            "images_per_s": done / wall,
            "ms_per_call": wall / calls * 1000,
            "cores": cores,
            "foreign": foreign,
            "attempts": attempts,
        }

    for threads in (1, 2):
        session = contract.onnx_session(threads)
        for batch in (1, 2, 4, 8):
            rows.append(timed(f"1 session x intra {threads}", [session], batch))
    sessions = [contract.onnx_session(1) for _ in range(CORES)]
    for batch in (1, 2, 4, 8):
        rows.append(timed(f"{len(sessions)} sessions x intra 1, in parallel", sessions, batch))
    return [*rows, decode_only(paths)]


def decode_only(paths: list[Path], passes: int = 10) -> dict:
    """The contract's decode of the stored BMPs alone, on one thread."""
    data = [p.read_bytes() for p in paths]
    started = time.perf_counter()
    for _ in range(passes):
        for blob in data:
            contract.decode(blob)
    seconds = time.perf_counter() - started
    return {
        "mode": "BMP decode only (1 thread)",
        "batch": 1,
        "images_per_s": passes * len(data) / seconds,
        "ms_per_call": seconds / (passes * len(data)) * 1000,
        "cores": None,
    }


# ---------------------------------------------------------------- run


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--project",
        type=Path,
        default=os.environ.get("PEERS_PROJECT"),
        help="the BentoML project checkout (with .venv); env PEERS_PROJECT",
    )
    parser.add_argument(
        "--images",
        type=Path,
        nargs="*",
        default=[Path(p) for p in os.environ.get("PEERS_IMAGE_DIRS", "").split(os.pathsep) if p],
        help="folders of photos to make the 64 BMPs from; env PEERS_IMAGE_DIRS",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=os.environ.get("PEERS_WORK"),
        help="scratch folder (stored BMPs, server logs); default: a temp dir",
    )
    parser.add_argument(
        "--servers",
        default="bentoml,fastapi:t1",
        help="comma list of name:config (name:all = every config of a peer)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--n32", type=int, default=800, help="requests per round at --concurrency")
    parser.add_argument("--n1", type=int, default=200, help="requests per round at concurrency 1")
    parser.add_argument("--warmup", type=int, default=160, help="warm-up requests per start")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--raw", action="store_true", help="also time bare ORT in-process")
    parser.add_argument("--raw-only", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=840,
        help="start no new server after this many seconds (keeps a run short)",
    )
    args = parser.parse_args()
    if not args.images:
        raise SystemExit("give --images DIR ... (or PEERS_IMAGE_DIRS)")
    if not args.raw_only and not args.project:
        raise SystemExit("give --project DIR (or PEERS_PROJECT)")
    return args


@dataclass
class Run:
    """One comparison: its arguments, the stored images as request bodies, the answers every
    server is held to (the project's first, and the contract's code in this process)."""

    args: argparse.Namespace
    work: Path
    paths: list[Path]
    bodies: list[bytes]
    results: dict
    in_process: dict[int, dict]
    reference: dict[int, dict] | None = None
    expected: list[tuple[int, float]] | None = None

    @classmethod
    def prepare(cls, args: argparse.Namespace) -> Run:
        work = args.work or Path(tempfile.mkdtemp(prefix="peers-"))
        (work / "logs").mkdir(parents=True, exist_ok=True)
        paths = make_images(args.images, (work / "store").resolve() / "peers")
        bodies = [json.dumps({"gcs_path": p.as_uri(), "top_k": args.top_k}).encode() for p in paths]
        model = contract.model_dir()
        results = {
            "cpu": cpu()["model"],
            "cores": CORES,
            "model_tag": f"{model.parent.name}:{model.name}",
            "images": len(paths),
            **{key: getattr(args, key) for key in ("concurrency", "n32", "n1", "warmup", "rounds")},
            "started": time.strftime("%Y-%m-%d %H:%M"),
            "load_generator": f"asyncio + aiohttp {aiohttp.__version__}, one process, closed loop",
        }
        print(f"CPU: {results['cpu']} ({CORES} cores); model {results['model_tag']}", flush=True)
        return cls(args, work, paths, bodies, results, inprocess_reference(paths, args.top_k))

    def check_answers(self, server: Server, entry: dict) -> None:
        """The server's answers on every image, against the project's and the contract's."""
        check = asyncio.run(drive(server.url, self.bodies, len(self.bodies), 1, keep_answers=True))
        if self.reference is None:
            if server.name != "bentoml":
                raise RuntimeError("the project's server must answer first")
            self.reference = check.answers
            self.expected = [
                (self.reference[j]["index"], self.reference[j]["confidence"])
                for j in range(len(self.bodies))
            ]
            self.results["bentoml_vs_inprocess"] = compare_answers(self.in_process, check.answers)
        entry["answers"] = compare_answers(self.reference, check.answers)
        entry["answers_vs_inprocess"] = compare_answers(self.in_process, check.answers)

    def measure(self, server: Server, entry: dict) -> tuple[LoadResult, LoadResult]:
        """Warm up, then req/s at the concurrency and latency at 1."""
        args, bodies, pid = self.args, self.bodies, server.process.pid
        asyncio.run(drive(server.url, bodies, args.warmup, args.concurrency))
        asyncio.run(drive(server.url, bodies, 16, 1))
        hi = measure(server.url, bodies, args.n32, args.concurrency, pid, self.expected)
        lo = measure(server.url, bodies, args.n1, 1, pid, self.expected)
        entry.update(
            rps=hi.rps,
            errors32=hi.errors,
            wrong32=hi.wrong,
            p50_32=pct(hi.latencies_ms, 50),
            p99_32=pct(hi.latencies_ms, 99),
            client_cores=hi.client_cores,
            server_cores=hi.server_cores,
            foreign_cores=hi.foreign_cores,
            p50_1=pct(lo.latencies_ms, 50),
            p99_1=pct(lo.latencies_ms, 99),
            latencies1=lo.latencies_ms,
            errors1=lo.errors,
            wrong1=lo.wrong,
            rps1=lo.rps,
            client_cores1=lo.client_cores,
            foreign_cores1=lo.foreign_cores,
            attempts=[hi.attempts, lo.attempts],
            max_conf_diff_under_load=max(hi.max_conf_diff, lo.max_conf_diff),
        )
        return hi, lo

    def one_round(self, server: Server, round_no: int) -> dict:
        """Start `server`, check and measure it, stop it; a failure is reported, not fatal."""
        entry: dict = {"round": round_no}
        try:
            entry["waited_idle_s"] = wait_quiet(120)
            env = server_env((self.work / "store").resolve())
            project = self.args.project.resolve()
            entry["startup_s"] = start(server, project, env, self.work / "logs", self.bodies[0])
            self.check_answers(server, entry)
            hi, _ = self.measure(server, entry)
            print(
                f"round {round_no} {server.label:28s} start {entry['startup_s']:5.1f}s"
                f" | c{self.args.concurrency} {hi.rps:7.1f} req/s err {hi.errors + hi.wrong}"
                f" | c1 p50 {entry['p50_1']:6.2f} ms p99 {entry['p99_1']:6.2f} ms"
                f" | cores: client {hi.client_cores:.2f} server {hi.server_cores:.2f}"
                f" foreign {hi.foreign_cores:.2f}"
                f" | top1 {entry['answers']['top1_equal']}/{len(self.bodies)}",
                flush=True,
            )
        except Exception as exc:  # a server that fails is reported, not fatal
            entry["failed"] = f"{type(exc).__name__}: {exc}"
            print(f"round {round_no} {server.label}: FAILED {entry['failed']}", flush=True)
        finally:
            entry["leftover_processes"] = stop(server)
            time.sleep(1.0)
        return entry


def run_rounds(run: Run, servers: list[Server], begun: float) -> dict[str, dict]:
    """Rounds that alternate the servers (A, B, C, A, B, C, ...), within the time budget."""
    rows = {s.label: {"server": s.name, "config": s.config, "rounds": []} for s in servers}
    try:
        for round_no in range(1, run.args.rounds + 1):
            for server in servers:
                if time.perf_counter() - begun > run.args.budget_s:
                    print(f"budget spent: skipping {server.label} round {round_no}", flush=True)
                    continue
                rows[server.label]["rounds"].append(run.one_round(server, round_no))
    finally:
        for server in servers:
            stop(server)
    return rows


def main() -> None:
    args = parse_args()
    # `timeout`/`kill` send SIGTERM: unwind through the `finally` that stops the servers
    signal.signal(signal.SIGTERM, _interrupt)
    begun = time.perf_counter()
    run = Run.prepare(args)
    print(f"waited {wait_quiet():.0f} s for an idle machine", flush=True)
    if args.raw or args.raw_only:
        run.results["raw_ort"] = raw_ceiling(run.paths)
    if not args.raw_only:
        rows = run_rounds(run, parse_servers(args.servers), begun)
        run.results["servers"] = summarize(rows)
    print(markdown_table(run.results))
    write(args.out, run.results)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _median(rounds: list[dict], key: str) -> float | None:
    return statistics.median([e[key] for e in rounds]) if rounds else None


def summarize(rows: dict[str, dict]) -> list[dict]:
    """Per server: the median of its rounds, its ratio to the project's (of the medians, and
    per round), latency over every round's requests, errors, cores, answers."""
    base_rounds = {e["round"]: e.get("rps") for e in rows["bentoml:default"]["rounds"]}
    base = statistics.median([v for v in base_rounds.values() if v] or [float("nan")])
    summary = []
    for entry in rows.values():
        ok = [e for e in entry["rounds"] if "rps" in e]
        rps = [e["rps"] for e in ok]
        latencies = [x for e in ok for x in e["latencies1"]]
        answers = [e["answers"] for e in entry["rounds"] if "answers" in e]
        median_rps = statistics.median(rps) if rps else float("nan")
        summary.append(
            {
                "server": entry["server"],
                "config": entry["config"],
                "rps_median": median_rps,
                "rps_rounds": rps,
                "ratio_to_bentoml": median_rps / base if base else float("nan"),
                "ratio_per_round": [
                    e["rps"] / base_rounds[e["round"]] for e in ok if base_rounds.get(e["round"])
                ],
                "p50_c1_ms": pct(latencies, 50),
                "p99_c1_ms": pct(latencies, 99),
                "p50_c32_ms": _median(ok, "p50_32"),
                "p99_c32_ms": _median(ok, "p99_32"),
                "errors": sum(e["errors32"] + e["errors1"] for e in ok),
                "wrong": sum(e["wrong32"] + e["wrong1"] for e in ok),
                "failed_rounds": [e["failed"] for e in entry["rounds"] if "failed" in e],
                "client_cores": _median(ok, "client_cores"),
                "server_cores": _median(ok, "server_cores"),
                "foreign_cores": _median(ok, "foreign_cores"),
                "foreign_cores_max": max((e["foreign_cores"] for e in ok), default=None),
                "startup_s": _median(ok, "startup_s"),
                **{
                    f"{key}_min": min((a[key] for a in answers), default=None)
                    for key in ("top1_equal", "topk_order_equal")
                },
                **{
                    key: max((a[key] for a in answers), default=None)
                    for key in ("max_top1_conf_diff", "max_topk_conf_diff")
                },
                "max_conf_diff_under_load": max(
                    (e["max_conf_diff_under_load"] for e in ok), default=None
                ),
                "leftover_processes": sum(e.get("leftover_processes", 0) for e in entry["rounds"]),
                "rounds": [
                    {k: v for k, v in e.items() if k != "latencies1"} for e in entry["rounds"]
                ],
            }
        )
    return summary


SERVER_COLUMNS = (
    "server",
    "config",
    "req/s c=32 (median)",
    "rounds min-max",
    "ratio to bentoml (of medians / median per round)",
    "p50 c=1 ms",
    "p99 c=1 ms",
    "p99 c=32 ms",
    "errors",
    "load gen CPU",
    "server cores",
    "server CPU ms/req",
    "foreign cores (max)",
    "top-1 = project",
    "max conf diff: check / under load",
)


def server_row(s: dict, results: dict) -> str:
    rps, ratios = s["rps_rounds"], s.get("ratio_per_round") or [float("nan")]
    ok = [e for e in s["rounds"] if "rps" in e]
    cpu_ms = [e["server_cores"] / e["rps"] * 1000 for e in ok]
    client = s["client_cores"] or 0
    return row(
        s["server"],
        s["config"],
        f"{s['rps_median']:.1f}",
        f"{min(rps):.0f}-{max(rps):.0f}" if rps else "failed",
        f"{s['ratio_to_bentoml']:.2f} / {statistics.median(ratios):.2f}",
        f"{s['p50_c1_ms']:.2f}",
        f"{s['p99_c1_ms']:.2f}",
        f"{(s['p99_c32_ms'] or float('nan')):.0f}",
        s["errors"] + s["wrong"],
        f"{client:.2f} cores ({client / results['cores'] * 100:.1f}%)",
        f"{(s['server_cores'] or 0):.2f}",
        f"{statistics.median(cpu_ms) if cpu_ms else float('nan'):.1f}",
        f"{(s['foreign_cores_max'] or 0):.2f}",
        f"{s['top1_equal_min']}/{results['images']}",
        f"{(s['max_top1_conf_diff'] or 0):.1e} / {(s.get('max_conf_diff_under_load') or 0):.1e}",
    )


def markdown_table(results: dict) -> str:
    """The committed report (results/*.md), from the JSON alone."""
    lines = [
        f"CPU: {results['cpu']} ({results['cores']} cores); model {results['model_tag']};"
        f" {results['rounds']} alternating rounds; c={results['concurrency']} x"
        f" {results['n32']} requests and c=1 x {results['n1']} requests per round;"
        f" load generator: {results['load_generator']}.",
        "",
        row(*SERVER_COLUMNS),
        "|" + "---|" * len(SERVER_COLUMNS),
        *(server_row(s, results) for s in results.get("servers", [])),
    ]
    if results.get("raw_ort"):
        lines += ["", row("raw ORT in-process", "batch", "images/s", "ms per call", "cores")]
        lines.append("|---|---|---|---|---|")
        for r in results["raw_ort"]:
            ms = f"{r['ms_per_call']:.2f}" if r.get("ms_per_call") else ""
            cores = f"{r['cores']:.2f}" if r.get("cores") is not None else ""
            lines.append(row(r["mode"], r["batch"], f"{r['images_per_s']:.0f}", ms, cores))
    return "\n".join(lines) + "\n"


def write(path: Path | None, results: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    if "servers" in results or "raw_ort" in results:
        path.with_suffix(".md").write_text(markdown_table(results))
    print(f"results: {path} (+ .md)")


if __name__ == "__main__":
    main()
