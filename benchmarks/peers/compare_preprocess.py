"""Side-by-side for `/preprocess`: the project's BentoML preprocess server against LitServe and
plain FastAPI doing the same work on 224 px uploads (`contract.preprocess`).

Each server is started alone with an empty storage folder of its own, gets the 64 uploads one by
one (every answer's SHA-256 and the stored file's bytes are checked against the project's), is
warmed up, loaded at concurrency 32 (uploads/s) and at concurrency 1 (latency), and stopped.
Rounds alternate servers. The image work alone is timed in-process too (the ceiling).

    python compare_preprocess.py --project PROJECT --images DIR [DIR ...] \
        --servers bentoml,litserve:w2-fq,fastapi:default --rounds 5 --out results/run.json

Run it with the peers' virtual environment (README), as `compare.py`, whose load generator,
CPU accounting and process handling it shares.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import compare  # beside this script; it puts the project on the path
import contract
from compare_report import pct, preprocess_markdown
from PIL import Image, ImageOps
from servers import Server, args, probe, server_env, stop

from benchmarks.harness import cpu, free_port, wait_quiet
from benchmarks.report import write

HERE = Path(__file__).resolve().parent
BOUNDARY = "peers-preprocess-boundary-5c1f"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
UPLOAD_SIDE = 224
# name -> config -> launcher arguments (peer_preprocess_<name>.py)
PEER_CONFIGS: dict[str, dict[str, list[str]]] = {
    "fastapi": {"default": []},
    "litserve": {
        "w2-fq": args("--workers 2 --fast-queue"),
        "w2": args("--workers 2"),
    },
}


def make_uploads(image_dirs: list[Path]) -> list[bytes]:
    """The 64 photos as 224x224 JPEGs (quality 90), each wrapped as a multipart body."""
    bodies = []
    for i, source in enumerate(compare.source_photos(image_dirs)):
        with Image.open(source) as photo:
            image = ImageOps.exif_transpose(photo).convert("RGB")
        image = image.resize((UPLOAD_SIDE, UPLOAD_SIDE), Image.Resampling.BILINEAR)
        jpeg = io.BytesIO()
        image.save(jpeg, format="JPEG", quality=90)
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="photo{i:02d}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        bodies.append(head + jpeg.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode())
    return bodies


def upload_bytes(body: bytes) -> bytes:
    """The JPEG inside a multipart body made by `make_uploads`."""
    start = body.index(b"\r\n\r\n") + 4
    return body[start : body.rindex(f"\r\n--{BOUNDARY}--".encode())]


def command_for(server: Server, project: Path) -> tuple[list[str], Path]:
    address = ["--host", "127.0.0.1", "--port", str(server.port)]
    if server.name == "bentoml":
        bentoml = str(project / ".venv" / "bin" / "bentoml")
        return [bentoml, "serve", "preprocess.service:Preprocess", *address], project
    if server.config not in PEER_CONFIGS.get(server.name, {}):
        raise SystemExit(f"unknown server {server.label}")
    launcher = HERE / f"peer_preprocess_{server.name}.py"
    return [
        sys.executable,
        str(launcher),
        *address,
        *PEER_CONFIGS[server.name][server.config],
    ], HERE


def start(server: Server, project: Path, env: dict, logs: Path, probe_body: bytes) -> float:
    """Start `server` and wait until a real upload answers 200; seconds it took."""
    server.port = free_port()
    argv, cwd = command_for(server, project)
    server.log = logs / f"preprocess-{server.name}-{server.config}-{server.port}.log"
    url = preprocess_url(server)
    started = time.perf_counter()
    with open(server.log, "wb") as log:
        server.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    while time.perf_counter() - started < 240:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.label} exited rc={server.process.returncode}; see log")
        try:
            if asyncio.run(probe(url, probe_body, MULTIPART)) == 200:
                return time.perf_counter() - started
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{server.label} not ready in 240 s; see log")


def preprocess_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}/preprocess"


def stored_sha256(answer: dict, store: Path) -> str | None:
    """SHA-256 of the file an answer names, if it is inside `store`."""
    path = Path(unquote(urlsplit(answer.get("gcs_path", "")).path)).resolve()
    if not path.is_relative_to(store) or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_answers(answers: dict[int, dict], store: Path, reference: dict[int, str]) -> dict:
    """How many answers name the project's SHA-256, and how many stored files hold it."""
    same = sum(answers.get(j, {}).get("sha256") == sha for j, sha in reference.items())
    stored = sum(stored_sha256(answers.get(j, {}), store) == sha for j, sha in reference.items())
    return {"sha256_equal": same, "stored_equal": stored, "answered": len(answers)}


def image_work_alone(bodies: list[bytes], seconds: float = 3.0) -> list[dict]:
    """Uploads/s of `contract.preprocess` in-process on 1 and on every core's thread."""
    uploads = [upload_bytes(body) for body in bodies]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for threads in sorted({1, compare.CORES}):
            stop_at = time.perf_counter() + seconds
            cpu0, t0 = time.process_time(), time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                done = sum(
                    pool.map(
                        _preprocess_until,
                        [uploads] * threads,
                        [root] * threads,
                        range(0, 7 * threads, 7),
                        [stop_at] * threads,
                    )
                )
            wall = time.perf_counter() - t0
            rows.append(
                {
                    "threads": threads,
                    "uploads_per_s": done / wall,
                    "cpu_ms_per_upload": 1000 * (time.process_time() - cpu0) / done,
                }
            )
    return rows


def _preprocess_until(uploads: list[bytes], root: Path, offset: int, stop_at: float) -> int:
    done = 0
    while time.perf_counter() < stop_at:
        contract.preprocess(uploads[(offset + done) % len(uploads)], root)
        done += 1
    return done


def parse_servers(text: str) -> list[Server]:
    chosen = [Server("bentoml", "default")]
    for item in text.split(","):
        name, _, config = item.strip().partition(":")
        if name and name != "bentoml":
            chosen.append(Server(name, config or "default"))
    return chosen


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--images", type=Path, nargs="+", required=True)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--servers", default="bentoml,litserve:w2-fq,fastapi:default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--n32", type=int, default=1600)
    parser.add_argument("--n1", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=160)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (and .md beside)")
    return parser.parse_args()


def one_round(
    server: Server, number: int, args: argparse.Namespace, work: Path, bodies: list
) -> dict:
    """Start `server` on a store of its own, check what it stores against the project's first
    answers (`REFERENCE`), measure it, stop it; a failure is reported, not fatal."""
    store = (work / "store" / f"{server.name}-{server.config}-{number}").resolve()
    store.mkdir(parents=True)
    entry: dict = {"round": number}
    try:
        entry["waited_idle_s"] = wait_quiet(120)
        project, env = args.project.resolve(), server_env(store)
        entry["startup_s"] = start(server, project, env, work / "logs", bodies[0])
        url = preprocess_url(server)
        check = asyncio.run(compare.drive(url, bodies, len(bodies), 1, None, True, 60, MULTIPART))
        if not REFERENCE:
            REFERENCE.update({j: answer["sha256"] for j, answer in check.answers.items()})
        entry["answers"] = check_answers(check.answers, store, REFERENCE)
        warm = compare.drive(url, bodies, args.warmup, args.concurrency, content_type=MULTIPART)
        asyncio.run(warm)
        pid = server.process.pid
        hi = compare.measure(url, bodies, args.n32, args.concurrency, pid, None, MULTIPART)
        lo = compare.measure(url, bodies, args.n1, 1, pid, None, MULTIPART)
        entry.update(
            rps=hi.rps,
            errors=hi.errors + lo.errors,
            server_cores=hi.server_cores,
            client_cores=hi.client_cores,
            foreign_cores=hi.foreign_cores,
            p50_1=pct(lo.latencies_ms, 50),
            p99_1=pct(lo.latencies_ms, 99),
            latencies1=lo.latencies_ms,
        )
        print(
            f"round {number} {server.label:20s} {hi.rps:7.1f} uploads/s"
            f" err {entry['errors']} | c1 p50 {entry['p50_1']:.2f} ms"
            f" | server {hi.server_cores:.2f} cores"
            f" | same bytes {entry['answers']['stored_equal']}/{len(bodies)}",
            flush=True,
        )
    except Exception as exc:  # a server that fails is reported, not fatal
        entry["failed"] = f"{type(exc).__name__}: {exc}"
        print(f"round {number} {server.label}: FAILED {entry['failed']}", flush=True)
    finally:
        stop(server)
        shutil.rmtree(store, ignore_errors=True)
    return entry


# What the project's preprocess stored for each upload (sha256 by upload): every server's
# stored bytes are held to it.
REFERENCE: dict[int, str] = {}


def main() -> None:
    args = parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="peers-preprocess-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    bodies = make_uploads(args.images)
    results: dict = {
        "cpu": cpu()["model"],
        "cores": compare.CORES,
        "uploads": len(bodies),
        "upload": f"{UPLOAD_SIDE}x{UPLOAD_SIDE} JPEG, quality 90, multipart",
        **{key: getattr(args, key) for key in ("concurrency", "n32", "n1", "rounds")},
        "started": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(f"CPU: {results['cpu']} ({compare.CORES} cores)", flush=True)
    print(f"waited {wait_quiet():.0f} s for an idle machine", flush=True)
    results["image_work_alone"] = image_work_alone(bodies)
    servers = parse_servers(args.servers)
    rounds: dict[str, list[dict]] = {server.label: [] for server in servers}
    try:
        for number in range(1, args.rounds + 1):
            for server in servers:
                rounds[server.label].append(one_round(server, number, args, work, bodies))
    finally:
        for server in servers:
            stop(server)
    results["servers"] = summarize(rounds)
    print(preprocess_markdown(results), flush=True)
    if args.out:
        write(args.out.parent, args.out.stem, results, preprocess_markdown)


def summarize(rounds: dict[str, list[dict]]) -> list[dict]:
    base = statistics.median(e["rps"] for e in rounds["bentoml:default"] if "rps" in e)
    summary = []
    for label, entries in rounds.items():
        ok = [e for e in entries if "rps" in e]
        rps = [e["rps"] for e in ok]
        latencies = [x for e in ok for x in e["latencies1"]]
        median = statistics.median(rps) if rps else float("nan")
        summary.append(
            {
                "label": label,
                "rounds_ok": len(ok),
                "failed": [e["failed"] for e in entries if "failed" in e],
                "rps_median": median,
                "rps_min": min(rps, default=float("nan")),
                "rps_max": max(rps, default=float("nan")),
                "ratio": median / base,
                "p50_1": pct(latencies, 50),
                "p99_1": pct(latencies, 99),
                "errors": sum(e["errors"] for e in ok),
                "server_cores": statistics.median(e["server_cores"] for e in ok) if ok else None,
                "server_ms_per_upload": (
                    statistics.median(1000 * e["server_cores"] / e["rps"] for e in ok)
                    if ok
                    else None
                ),
                "stored_equal": min((e["answers"]["stored_equal"] for e in ok), default=0),
            }
        )
    return summary


if __name__ == "__main__":
    main()
