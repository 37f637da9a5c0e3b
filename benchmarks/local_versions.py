#!/usr/bin/env python
"""How a local photo's version is told: file status (size, mtime, ctime, inode) or a content hash.

    .venv/bin/python -m benchmarks.local_versions                  # 20,000 files, ~1 minute
    .venv/bin/python -m benchmarks.local_versions --files 200 --out /tmp/v   # does it run?

`classify-bucket FOLDER` decides which photos are up to date before reading any of them. With
file status that is one `lstat` per file during the listing it does anyway; with a content hash
it is a read of every byte of every photo on every run, up to date or not. This writes, for
`--files` files of `--kib` KiB each (phone photos are ~3 MiB; the run scales by bytes), the
wall and CPU time of: the listing alone (walk + lstat: the versions the job uses), and the
listing plus SHA-256 of every file, page cache warm and (where it can be dropped) cold.
Writes local_versions.md and local_versions.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

from benchmarks.harness import REPO, cpu
from benchmarks.report import write
from common.storage import LocalStorage

HERE = REPO / "benchmarks"


def _make(root: Path, files: int, kib: int) -> None:
    block = os.urandom(kib * 1024)
    for i in range(files):
        folder = root / f"{i // 1000:03d}"
        folder.mkdir(exist_ok=True)
        # distinct content per file: the first bytes carry its number
        (folder / f"{i:06d}.jpg").write_bytes(i.to_bytes(8, "big") + block[8:])


def _timed(work) -> dict[str, float]:
    wall, cpu_s = time.perf_counter(), time.process_time()
    count = work()
    return {
        "wall_s": round(time.perf_counter() - wall, 3),
        "cpu_s": round(time.process_time() - cpu_s, 3),
        "files": count,
    }


def _stat_versions(objects: LocalStorage) -> int:
    return sum(1 for _ in objects.list(""))


def _hashed_versions(objects: LocalStorage) -> int:
    count = 0
    for info in objects.list(""):
        with open(objects.root / info.key, "rb") as file:
            hashlib.file_digest(file, "sha256")
        count += 1
    return count


def _drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--kib", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="local-versions-") as tmp:
        root = Path(tmp)
        _make(root, args.files, args.kib)
        objects = LocalStorage(root)
        _stat_versions(objects)  # the directory entries warm, for both
        runs = {"stat, warm": _timed(lambda: _stat_versions(objects))}
        runs["sha-256, warm"] = _timed(lambda: _hashed_versions(objects))
        if _drop_caches():
            runs["stat, cold"] = _timed(lambda: _stat_versions(objects))
            _drop_caches()
            runs["sha-256, cold"] = _timed(lambda: _hashed_versions(objects))
    figures = {
        "cpu": cpu()["model"],
        "files": args.files,
        "kib_per_file": args.kib,
        "runs": runs,
        "hash_over_stat_wall": round(
            runs["sha-256, warm"]["wall_s"] / runs["stat, warm"]["wall_s"], 1
        ),
    }
    print(write(args.out, "local_versions", figures, render).read_text())


def render(figures: dict) -> str:
    lines = [
        "# Local versions: file status or a content hash",
        "",
        f"`python -m benchmarks.local_versions`: {figures['files']:,} files of "
        f"{figures['kib_per_file']} KiB, {figures['cpu']}. The job's decision "
        "(benchmarks/decisions.md, D26).",
        "",
        "| versions by | wall s | CPU s | files |",
        "| --- | --- | --- | --- |",
        *(
            f"| {name} | {r['wall_s']} | {r['cpu_s']} | {r['files']:,} |"
            for name, r in figures["runs"].items()
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
