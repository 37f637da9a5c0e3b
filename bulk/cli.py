"""The `classify-bucket` command (also `python -m bulk`, and in the classify image)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from pydantic import ValidationError

from bulk.job import Model, Options, Run, Target, excluded_prefixes
from bulk.progress import progress_for
from bulk.tasks import TaskShare
from common.bucket_objects import bucket_objects
from common.config import Settings, SettingsError, settings
from common.errors import ServiceError
from common.images import set_pixel_limit
from common.storage import GCSStorage, LocalStorage

USAGE = """classify-bucket gs://BUCKET/PREFIX | FOLDER [options]

Classify every photo under a bucket prefix (or in a local folder) into the results layout
(`results/<photo>.json`, docs/buckets.md). As one task of a Cloud Run job it takes its share
from CLOUD_RUN_TASK_INDEX / CLOUD_RUN_TASK_COUNT (or BATCH_TASK_INDEX / BATCH_TASK_COUNT).
Exit status: 0 when every photo of its share has a result, 1 while some are left for a retry,
2 for a usage error."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="classify-bucket", usage=USAGE)
    parser.add_argument("target", help="gs://bucket/prefix, or a local folder")
    parser.add_argument("--task-index", type=int, help="this task (default: from the environment)")
    parser.add_argument("--task-count", type=int, help="tasks in all (default: environment, or 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call")
    parser.add_argument("--read-threads", type=int, default=16, help="storage reads at once")
    parser.add_argument("--top-k", type=int, default=5, help="ranked classes in each result")
    parser.add_argument(
        "--collect",
        type=Path,
        metavar="OUT",
        help="instead: merge the results into OUT (.jsonl/.csv)",
    )
    return parser.parse_args(argv)


def open_target(spec: str, config: Settings) -> Target:
    if spec.startswith("gs://"):
        bucket, _, prefix = spec.removeprefix("gs://").partition("/")
        storage = GCSStorage(bucket, config.storage_timeout_s)
        gcs = True
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise SystemExit(f"classify-bucket: {spec}: not a folder (or a gs://bucket/prefix)")
        storage, prefix, gcs = LocalStorage(folder), "", False
    return Target(
        bucket_objects(storage), prefix, gcs, config.results_prefix, excluded_prefixes(config)
    )


def share_of(args: argparse.Namespace) -> TaskShare:
    share = TaskShare.from_env(os.environ)
    try:
        return TaskShare(
            index=share.index if args.task_index is None else args.task_index,
            count=share.count if args.task_count is None else args.task_count,
            attempt=share.attempt,
        )
    except ValidationError as exc:
        raise SystemExit(f"classify-bucket: {exc.errors()[0]['msg']}") from None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        config = settings()
    except SettingsError as exc:
        print(f"classify-bucket: {exc}", file=sys.stderr)
        return 2
    target = open_target(args.target, config)
    if args.collect:
        from bulk.collect import collect

        count = collect(target.objects, target.results_prefix, args.collect)
        print(f"{count} results -> {args.collect}", file=sys.stderr)
        return 0
    share = share_of(args)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # set here: a parent may have ignored them
        signal.signal(signum, lambda *_: stop.set())
    set_pixel_limit(config.max_image_pixels)
    options = Options(batch_size=args.batch_size, read_threads=args.read_threads, top_k=args.top_k)
    description = f"task {share.index + 1}/{share.count}"
    run = Run(target, share, Model(config), config, options, progress_for(description), stop)
    try:
        manifest = run.execute()
    except ServiceError as exc:  # the listings failed: nothing to do but let the task retry
        print(f"classify-bucket: {exc} (the task will be retried)", file=sys.stderr)
        return 1
    print(manifest.model_dump_json(), file=sys.stderr)
    return 0 if manifest.complete else 1
