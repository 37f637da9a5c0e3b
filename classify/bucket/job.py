"""One task of a bucket run: list, take this task's share, skip what is up to date (in step
with the listings: classify/bucket/plan.py), then read
(a bounded pool: storage latency), decode (the services' code and decode budget), run the
model in-process in batches, and write each result create-only.

Transient failures (storage unavailable, the decode budget busy) are left for a retry of the
task: it exits non-zero, and the retry finds their results missing and does only those. A
photo that can never be classified gets a result holding its error. A stop request (SIGTERM:
the task timed out or was cancelled) ends the run after the photos in flight are written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from pydantic import BaseModel

from classify.bucket.plan import Planner
from classify.bucket.progress import Progress
from classify.bucket.tasks import TaskShare
from classify.model import Classifier
from classify.photos import Photos
from classify.results import (
    MANIFEST_FOLDER,
    MANIFEST_SUFFIX,
    ClassificationResult,
    Outcome,
    is_permanent,
    new_result,
    result_key,
    store_result,
)
from classify.settings import ClassifySettings
from common.errors import AccessDenied, InvalidPath, ServiceError
from common.schemas import ClassifyResponse, ResizeMode
from common.storage import ObjectInfo, Storage
from common.threads import BoundedSubmitter, in_window

LOG = logging.getLogger(__name__)
INTERNAL = {"code": "internal"}  # a log line's code for a failure of ours (common/logs.py)


@dataclass
class Target:
    """What to classify: a bucket (or folder), a prefix in it, and the prefixes never read."""

    objects: Storage
    prefix: str
    gcs: bool
    results_prefix: str
    excluded: tuple[str, ...]

    def is_source(self, key: str) -> bool:
        return key.startswith(self.prefix) and not key.startswith(self.excluded)


class Manifest(BaseModel):
    """What one task did, written under the results prefix when it ends."""

    source: str
    task_index: int
    task_count: int
    attempt: int
    runtime: str
    model: str
    started_at: datetime
    duration_s: float
    photos: int  # this task's share, before skipping (listed so far, if stopped while listing)
    done: int  # results written by this run
    skipped: int  # up to date already (an earlier run, a retry, a storage event)
    classified_again: int = 0  # of the skipped: read and classified before the result write
    # found the result up to date (written meanwhile, or a listing out of name order)
    failed: dict[str, int]  # error results written, by code
    transient: int  # left for a retry: storage unavailable, overloaded
    gone: int  # deleted or replaced before they were read (the newer version is its own)
    unsupported: int  # names no result can be stored for (e.g. `..` segments): skipped
    invalid_results: int  # result objects this code did not write: their photos done again
    stopped: bool  # a stop request ended the run early
    running: bool = False  # the manifest written when the task starts (it proves the results
    # location writable before any photo is read)
    photos_per_s: float

    @property
    def complete(self) -> bool:
        return self.transient == 0 and not self.stopped


@dataclass
class Options:
    batch_size: int = 16
    read_threads: int = 16
    write_threads: int = 8
    top_k: int = 5


class ResultsNotWritable(Exception):
    """The results location refused the task's first write: nothing was classified."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent  # a configuration to fix (exit 2), not an outage (exit 1)


class Run:
    """One task's run over its share of `target`."""

    def __init__(
        self,
        target: Target,
        share: TaskShare,
        classifier: Classifier,
        settings: ClassifySettings,
        options: Options,
        progress: Progress,
        stop: threading.Event,
    ) -> None:
        self.target, self.share, self.classifier = target, share, classifier
        self.settings, self.options, self.progress, self.stop = settings, options, progress, stop
        self.photos = Photos(target.objects, settings)
        self.mode: ResizeMode = settings.resize_mode
        self.counts: Counter[str] = Counter()
        self.planner = Planner(
            target.objects, target.prefix, target.results_prefix, target.is_source, share.owns
        )
        self.failed: Counter[str] = Counter()

    def execute(self) -> Manifest:
        started_at, started = datetime.now(UTC), time.monotonic()
        self._write_manifest(self._manifest(started_at, 0.0, running=True), required=True)
        self.progress.start()
        with (
            ThreadPoolExecutor(self.options.read_threads, "bucket-read") as readers,
            ThreadPoolExecutor(self.options.write_threads, "bucket-write") as writers,
        ):
            self._classify(self._planned(), readers, writers)
        self.progress.finish(self._summary())
        manifest = self._manifest(started_at, time.monotonic() - started)
        self._write_manifest(manifest)
        return manifest

    def _planned(self) -> Iterator[ObjectInfo]:
        """The photos to classify, as planning finds them (the bar's total grows with them)."""
        for info in self.planner.pending():
            self.progress.add_total(1)
            yield info
        self.progress.add_total(0, listed=True)

    def _manifest(self, started_at: datetime, duration: float, running: bool = False) -> Manifest:
        finished, plan = self.counts["finished"], self.planner.counts
        return Manifest(
            source=self.target.objects.uri_for(self.target.prefix),
            task_index=self.share.index,
            task_count=self.share.count,
            attempt=self.share.attempt,
            runtime=self.classifier.runtime.name,
            model=self.classifier.tag,
            started_at=started_at,
            duration_s=round(duration, 3),
            photos=plan.pending + plan.skipped,
            done=self.counts["done"],
            skipped=self.counts["skipped"] + plan.skipped,
            classified_again=self.counts["skipped"],
            failed=dict(self.failed),
            transient=self.counts["transient"],
            gone=self.counts["gone"],
            unsupported=self.counts["unsupported"] + plan.unsupported,
            invalid_results=plan.invalid_results,
            stopped=self.stop.is_set() and (finished < plan.pending or not plan.listed),
            running=running,
            photos_per_s=round(finished / duration, 2) if duration else 0.0,
        )

    def _classify(
        self, todo: Iterator[ObjectInfo], readers: ThreadPoolExecutor, writers: ThreadPoolExecutor
    ) -> None:
        """Read and decode in a window of twice the reading threads (decoded images in memory
        at most, ~150 KB each), run the model on each full batch, write as answers come: at
        most four writes a writing thread queued, none remembered once done (the pools' exit
        waits for the last), so nothing here grows with the bucket."""
        writes = BoundedSubmitter(writers, 4 * self.options.write_threads, LOG)
        batch: list[tuple[ObjectInfo, np.ndarray]] = []
        window = 2 * self.options.read_threads
        for loaded in in_window(readers, self._load, todo, window, self.stop):
            info, pixels, error = loaded.result()
            if pixels is None:
                writes.submit(self._record_error, info, error)
                continue
            batch.append((info, pixels))
            if len(batch) >= self.options.batch_size:
                self._run_batch(batch, writes)
                batch = []
        if batch:
            self._run_batch(batch, writes)

    def _load(self, info: ObjectInfo) -> tuple[ObjectInfo, np.ndarray | None, Exception | None]:
        """Read and decode one photo on a reading thread; an error is returned, not raised."""
        try:
            pixels, version = self.photos.load(info.key, info.version)
            return ObjectInfo(info.key, version, info.metadata), pixels, None
        except ServiceError as exc:
            return info, None, exc
        except Exception as exc:  # a bug: log it, and leave the photo to a retry
            LOG.exception("reading %s failed", info.key, extra=INTERNAL)
            return info, None, exc

    def _run_batch(
        self, batch: list[tuple[ObjectInfo, np.ndarray]], writes: BoundedSubmitter
    ) -> None:
        try:
            answers = self.classifier.answers([pixels for _, pixels in batch], self.options.top_k)
        except Exception:  # the runtime failed: none of these is the photo's fault
            failed = len(batch)
            LOG.exception("a model call failed; %d photos left for a retry", failed, extra=INTERNAL)
            for _ in batch:
                self._count("transient")
            return
        for (info, _), answer in zip(batch, answers, strict=True):
            writes.submit(self._record_answer, info, answer)

    def _record_answer(self, info: ObjectInfo, answer: ClassifyResponse) -> None:
        result = new_result(self._uri(info), info, self.target.gcs, self.mode, "job", answer=answer)
        self._store(info, result, "done")

    def _record_error(self, info: ObjectInfo, error: Exception) -> None:
        if isinstance(error, ServiceError) and is_permanent(error):
            result = new_result(
                self._uri(info), info, self.target.gcs, self.mode, "job", error=error
            )
            self._store(info, result, "done", failed_code=error.code)
        elif isinstance(error, ServiceError) and error.status == 404:
            self._count("gone")
        else:
            code = error.code if isinstance(error, ServiceError) else "internal"
            LOG.warning("%s: %s (left for a retry)", info.key, error, extra={"code": code})
            self._count("transient")

    def _store(
        self,
        info: ObjectInfo,
        result: ClassificationResult,
        counted: str,
        failed_code: str | None = None,
    ) -> None:
        key = result_key(self.target.results_prefix, info.key)
        try:
            outcome = store_result(self.target.objects, key, result)
        except InvalidPath as exc:  # the location cannot hold this result, now or ever
            LOG.warning("%s: no result can be stored: %s", info.key, exc, extra={"code": exc.code})
            self._count("unsupported")
            return
        except Exception as exc:  # storage, access (an operator fixes it), or a bug of ours
            code = exc.code if isinstance(exc, ServiceError) else "internal"
            LOG.warning(
                "%s: result not written: %s (left for a retry)", info.key, exc, extra={"code": code}
            )
            self._count("transient")
            return
        if outcome is Outcome.up_to_date:
            self._count("skipped")
        elif failed_code:
            self._count("failed", failed_code)
        else:
            self._count(counted)

    def _count(self, what: str, code: str | None = None) -> None:
        if code:
            self.failed[code] += 1
        else:
            self.counts[what] += 1
        self.counts["finished"] += 1
        self.progress.advance(1, self._summary())

    def _summary(self) -> dict[str, object]:
        return {
            "done": self.counts["done"],
            "skipped": self.counts["skipped"] + self.planner.counts.skipped,
            "failed": sum(self.failed.values()),
            "transient": self.counts["transient"],
        }

    def _uri(self, info: ObjectInfo) -> str:
        return self.target.objects.uri_for(info.key)

    def _write_manifest(self, manifest: Manifest, required: bool = False) -> None:
        """Write (or replace) this task's manifest. The first write, when the task starts, is
        `required`: a results location that refuses it stops the task before any work."""
        name = f"task-{manifest.task_index:05d}-of-{manifest.task_count:05d}{MANIFEST_SUFFIX}"
        key = f"{self.target.results_prefix}{MANIFEST_FOLDER}{name}"
        objects = self.target.objects
        data = manifest.model_dump_json(indent=2).encode()
        try:
            for _ in range(3):  # each attempt replaces the last attempt's manifest
                if objects.write(key, data, {}, objects.head(key)):
                    return
        except ServiceError as exc:
            if required:
                where = objects.uri_for(self.target.results_prefix)
                raise ResultsNotWritable(
                    f"cannot write results under {where}: {exc.message}",
                    permanent=is_configuration(exc),
                ) from exc
            LOG.warning("manifest not written: %s", exc, extra={"code": exc.code})


def is_configuration(error: ServiceError) -> bool:
    """Whether storage refused for a reason an operator must fix (access, a name the location
    cannot hold) rather than an outage a retry outlasts."""
    from google.api_core.exceptions import Forbidden, Unauthorized

    refused = isinstance(error.__cause__, Forbidden | Unauthorized)  # GCS: IAM
    return refused or isinstance(error, AccessDenied | InvalidPath)


def excluded_prefixes(settings: ClassifySettings) -> tuple[str, ...]:
    """Never photos to classify: the results (no loops) and preprocess's normalized copies."""
    return (settings.results_prefix, settings.storage_prefix)
