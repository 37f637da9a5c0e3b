"""The `classify-bucket` command (also `python -m classify.bucket`, and in the classify image).

Its exit status is its contract with Cloud Run Jobs and scripts: 0 done, 1 a retry can help
(storage unavailable, stopped, photos left for a retry), 2 a usage or configuration error that
no retry fixes (docs/buckets.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from classify.bucket.job import Options, ResultsNotWritable, Run, Target, excluded_prefixes
from classify.bucket.progress import progress_for
from classify.bucket.tasks import TaskShare
from classify.settings import ClassifySettings, classify_settings
from common.config import SettingsError
from common.errors import InvalidPath, ServiceError
from common.images.decode import set_pixel_limit
from common.logs import configure_logging
from common.memory import release_large_buffers_promptly
from common.schemas import MAX_TOP_K
from common.storage import GCSStorage, LocalStorage

EXIT_DONE, EXIT_RETRY, EXIT_USAGE = 0, 1, 2
# A task's reading threads wait for the decode budget instead of leaving a large photo to a
# retry (a service's callers get 503 after DECODE_WAIT_S; a task has no caller to answer).
JOB_DECODE_WAIT_S = 600.0
USAGE = """classify-bucket gs://BUCKET/PREFIX | FOLDER [options]

Classify every photo under a bucket prefix (or in a local folder) into the results layout
(`results/<photo>.json`, docs/buckets.md). As one task of a Cloud Run job it takes its share
from CLOUD_RUN_TASK_INDEX / CLOUD_RUN_TASK_COUNT (or BATCH_TASK_INDEX / BATCH_TASK_COUNT).
Exit status: 0 when every photo of its share has a result, 1 while some are left for a retry
(storage unavailable, stopped), 2 for a usage or configuration error (a retry cannot help)."""


class UsageError(Exception):
    """A command line, environment or target no retry can fix: exit 2 with its message."""


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            upper = f" and at most {high}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"{value} must be at least {low}{upper}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="classify-bucket", usage=USAGE)
    parser.add_argument("target", help="gs://bucket/prefix, or a local folder")
    parser.add_argument(
        "--task-index", type=bounded_int(0), help="this task (default: from the environment)"
    )
    parser.add_argument(
        "--task-count", type=bounded_int(1), help="tasks in all (default: environment, or 1)"
    )
    parser.add_argument(
        "--batch-size", type=bounded_int(1, 1024), default=16, help="images per model call"
    )
    parser.add_argument(
        "--read-threads", type=bounded_int(1, 256), default=16, help="storage reads at once"
    )
    parser.add_argument(
        "--top-k", type=bounded_int(1, MAX_TOP_K), default=5, help="ranked classes in each result"
    )
    parser.add_argument(
        "--collect",
        type=Path,
        metavar="OUT",
        help="instead: merge the results into OUT (.jsonl/.csv)",
    )
    return parser.parse_args(argv)


def open_target(spec: str, config: ClassifySettings) -> Target:
    if spec.startswith("gs://"):
        bucket, _, prefix = spec.removeprefix("gs://").partition("/")
        if not bucket:
            raise UsageError(f"{spec}: no bucket named (gs://BUCKET/PREFIX)")
        storage = GCSStorage(bucket, config.storage_timeout_s)
        gcs = True
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise UsageError(f"{spec}: not a folder (or a gs://bucket/prefix)")
        storage, prefix, gcs = LocalStorage(folder), "", False
    return Target(storage, prefix, gcs, config.results_prefix, excluded_prefixes(config))


def share_of(args: argparse.Namespace) -> TaskShare:
    """This task's share: the flags over the environment, each checked (the index below the
    count, whole numbers)."""
    try:
        share = TaskShare.from_env(os.environ)
        return TaskShare(
            index=share.index if args.task_index is None else args.task_index,
            count=share.count if args.task_count is None else args.task_count,
            attempt=share.attempt,
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = "".join(f"task {part}: " for part in problem["loc"])
        raise UsageError(where + problem["msg"].removeprefix("Value error, ")) from None
    except ValueError as exc:  # a variable of the environment that is not a number
        raise UsageError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    configure_logging(level=logging.WARNING)
    args = parse_args(argv)  # argparse exits 2 itself for a bad flag
    try:
        return run(args)
    except UsageError as exc:
        print(f"classify-bucket: {exc}", file=sys.stderr)
        return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    try:
        config = classify_settings()
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    share = share_of(args)
    target = open_target(args.target, config)
    if args.collect:
        return collect_into(target, args.collect)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # set here: a parent may have ignored them
        signal.signal(signum, lambda *_: stop.set())
    set_pixel_limit(config.max_image_pixels)
    release_large_buffers_promptly()  # as the services do: 16 reading threads decode in turn
    if "DECODE_WAIT_S" not in os.environ:
        config = config.model_copy(update={"decode_wait_s": JOB_DECODE_WAIT_S})
    options = Options(batch_size=args.batch_size, read_threads=args.read_threads, top_k=args.top_k)
    description = f"task {share.index + 1}/{share.count}"
    from classify.model import Classifier  # here: `--collect` needs no model runtime

    classifier = Classifier.load(config)
    job = Run(target, share, classifier, config, options, progress_for(description), stop)
    try:
        manifest = job.execute()
    except ResultsNotWritable as exc:
        if exc.permanent:
            raise UsageError(str(exc)) from None
        print(f"classify-bucket: {exc} (the task will be retried)", file=sys.stderr)
        return EXIT_RETRY
    except InvalidPath as exc:  # the bucket or prefix is not a name storage accepts
        raise UsageError(f"{args.target}: {exc.message}") from None
    except ServiceError as exc:  # the listings failed: nothing to do but let the task retry
        print(f"classify-bucket: {exc} (the task will be retried)", file=sys.stderr)
        return EXIT_RETRY
    print(manifest.model_dump_json(), file=sys.stderr)
    return EXIT_DONE if manifest.complete else EXIT_RETRY


def collect_into(target: Target, out: Path) -> int:
    from classify.bucket.collect import collect

    if out.is_dir() or not out.parent.is_dir():
        raise UsageError(f"{out}: not a file in an existing folder")
    try:
        counted = collect(target.objects, target.results_prefix, out)
    except OSError as exc:
        raise UsageError(f"{out}: cannot be written: {exc.strerror}") from None
    except ServiceError as exc:
        print(f"classify-bucket: {exc} (try again)", file=sys.stderr)
        return EXIT_RETRY
    skipped = f"; {counted.invalid} invalid results skipped" if counted.invalid else ""
    print(f"{counted.written} results -> {out}{skipped}", file=sys.stderr)
    return EXIT_DONE
