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
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import contract  # beside this script, whose folder is first on the path when run
import psutil
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parents[1]))  # the project: its benchmark harness and load generator

from compare_report import markdown_table, pct, summarize, write  # noqa: E402
from raw_ceiling import MAX_FOREIGN_CORES, MAX_RETRIES, raw_ceiling  # noqa: E402
from servers import (  # noqa: E402
    JSON,
    Server,
    parse_servers,
    server_env,
    start,
    stop,
)

from benchmarks.harness import CpuWindow, cpu, wait_quiet  # noqa: E402
from benchmarks.load import Load, closed_loop, post_bytes  # noqa: E402

N_IMAGES = 64
CORES = os.cpu_count() or 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG")


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


# ---------------------------------------------------------------- run


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


if __name__ == "__main__":
    main()
