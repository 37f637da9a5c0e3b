"""The long fuzz run: mutated images through the decode boundary and mutated forms through
the upload parser, for as long as asked, findings saved as regression cases.

    .venv/bin/python tests/fuzz.py --minutes 30

Images are mutated structure-aware two times in three (PNG chunks with their CRCs recomputed,
JPEG segments, RIFF chunks, GIF blocks, HEIF boxes with their sizes, BMP header fields) and as
bytes otherwise. Each worker process runs examples until the time is up; the input under test
is written to a file first, so a worker killed by a decoder (a crash, not an exception) leaves
it behind and a new worker takes over. A finding is an answer outside the oracle
(tests/fuzzing.py), a decode slower than `--slow-s`, or memory past the stated bound. Once
fixed, `tests/fuzz.py --record` writes each finding's answers beside it, and
tests/service/test_fuzz.py replays them against those answers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import tempfile
import time
import traceback
from pathlib import Path

from fuzzing import (
    check_decode,
    check_form,
    multipart_body,
    mutate,
    mutate_any,
    record_expectations,
    save_finding,
    seeds,
)
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from common.images.decode_budget import BYTES_PER_PIXEL
from common.schemas import ResizeMode

MIB = 1024 * 1024
# The stated bound: one decode holds at most BYTES_PER_PIXEL per counted pixel of the largest
# accepted image, plus the interpreter and libraries (~300 MiB with every codec loaded).
MEMORY_BOUND = BYTES_PER_PIXEL * 40_000_000 + 300 * MIB


def _worker(seed: int, until: float, current: str, slow_s: float, counts) -> None:
    rng = random.Random(seed)
    corpus = seeds()
    names = sorted(corpus)
    modes = list(ResizeMode)
    while time.time() < until:
        name = rng.choice(names)
        if rng.random() < 0.15:
            body = mutate(multipart_body(corpus[name]), rng, rng.randint(1, 4))
            Path(current).write_bytes(b"form:" + body)
            chunks = [rng.randint(1, 300) for _ in range(rng.randint(0, 8))]
            try:
                check_form(body, chunks)
            except Exception:
                save_finding(body, "form", traceback.format_exc())
                counts["findings"] += 1
            counts["forms"] += 1
            continue
        data = mutate_any(corpus[name], rng)  # structure-aware two times in three
        mode = rng.choice(modes)
        Path(current).write_bytes(data)
        started = time.perf_counter()
        try:
            outcome = check_decode(data, mode)
        except Exception:
            save_finding(
                data, "decode", f"seed {name}, mode {mode.value}\n{traceback.format_exc()}"
            )
            counts["findings"] += 1
            continue
        took = time.perf_counter() - started
        if took > slow_s:
            save_finding(data, "slow", f"seed {name}, mode {mode.value}: {took:.1f} s ({outcome})")
            counts["findings"] += 1
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if peak > MEMORY_BOUND:
            save_finding(data, "memory", f"seed {name}, mode {mode.value}: peak {peak // MIB} MiB")
            counts["findings"] += 1
            return  # the peak never comes down: a new worker measures afresh
        counts[outcome] = counts.get(outcome, 0) + 1
        counts["decodes"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--slow-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--record",
        action="store_true",
        help="instead: write the current answers of every fixed finding (<finding>.expect)",
    )
    args = parser.parse_args()
    if args.record:
        for path in record_expectations():
            print(f"recorded {path}")
        return
    until = time.time() + args.minutes * 60
    rng = random.Random(args.seed)
    manager = multiprocessing.Manager()
    counts = manager.dict(decodes=0, forms=0, findings=0, crashes=0)
    scratch = Path(tempfile.mkdtemp(prefix="fuzz-"))
    running: dict[int, tuple[multiprocessing.Process, str]] = {}
    with Progress(
        TextColumn("[bold]fuzz"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    ) as progress:
        task = progress.add_task("fuzz", total=args.minutes * 60, status="")
        started = time.time()
        while time.time() < until or running:
            for slot in range(args.workers):
                process, current = running.get(slot, (None, ""))
                if process is not None and process.is_alive():
                    continue
                if process is not None:
                    process.join()
                    if process.exitcode and process.exitcode < 0:  # killed by a signal
                        data = Path(current).read_bytes()
                        save_finding(data, "crash", f"signal {-process.exitcode}")
                        counts["crashes"] += 1
                    del running[slot]
                if time.time() < until:
                    current = str(scratch / f"current-{slot}")
                    process = multiprocessing.Process(
                        target=_worker,
                        args=(rng.getrandbits(64), until, current, args.slow_s, counts),
                    )
                    process.start()
                    running[slot] = (process, current)
            status = ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
            progress.update(
                task, completed=min(time.time() - started, args.minutes * 60), status=status
            )
            time.sleep(1)
    print(dict(counts))


if __name__ == "__main__":
    main()
