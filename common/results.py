"""The results layout: one JSON result per classified source object, whichever path classified it
(a storage event or the bucket job), documented in docs/buckets.md.

`results/<source key>.json` holds the source's URI and version, then either the answer
`/classify` gives for it (the same model) or the error that keeps it from ever being classified.
Results are written create-only; a newer version of the source replaces its result by
compare-and-swap, and an older one never replaces a newer one's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from common.bucket_objects import SOURCE_VERSION_KEY, BucketObjects, ObjectInfo, Version
from common.errors import InvalidPath, ObjectNotFound, ServiceError
from common.schemas import ClassifyResponse, ErrorResponse, ResizeMode
from common.storage import check_key

RESULT_SUFFIX = ".json"
# Per-task manifests of the bucket job, under the results prefix; no result ends like this.
MANIFEST_FOLDER = "_tasks/"
MANIFEST_SUFFIX = ".manifest"
CAS_ATTEMPTS = 5
MAX_RESULT_BYTES = 1024 * 1024  # a result is ~1 KB (top-1000 at most: ~100 KB)


class Outcome(StrEnum):
    written = "written"  # a new result, or one for a newer version of the source
    up_to_date = "up_to_date"  # a result for this version or a newer one is there already


class SourceVersion(BaseModel):
    generation: int | None = Field(None, description="GCS object generation (GCS only).")
    size: int = Field(description="Bytes.")
    mtime_ns: int | None = Field(None, description="Modification time, ns (local files only).")

    def comparable(self) -> Version:
        stamp = self.generation if self.generation is not None else self.mtime_ns
        return Version(stamp or 0, self.size)


class ClassificationResult(BaseModel):
    """One source object's result: `answer` (what `/classify` answers) or `error`."""

    model_config = {"protected_namespaces": ()}

    source: str = Field(description="`gs://bucket/key` or `file://` URI of the photo.")
    version: SourceVersion
    mode: ResizeMode
    via: Literal["event", "job"] = Field(description="What classified it.")
    classified_at: datetime
    answer: ClassifyResponse | None = None
    error: ErrorResponse | None = Field(
        None, description="Why it can never be classified (docs/errors.md's codes)."
    )


def result_key(results_prefix: str, source_key: str) -> str:
    return f"{results_prefix}{source_key}{RESULT_SUFFIX}"


def has_storable_result(results_prefix: str, key: str) -> bool:
    """Whether an object and its result can be named here: GCS allows names these services
    refuse (`..` segments, control characters), and a result's name is longer than its
    photo's. Such an object is skipped, never retried."""
    try:
        check_key(key)
        check_key(result_key(results_prefix, key))
    except InvalidPath:
        return False
    return True


def source_key(results_prefix: str, key: str) -> str | None:
    """The source a result key belongs to; None for anything else under the prefix."""
    if not key.startswith(results_prefix) or not key.endswith(RESULT_SUFFIX):
        return None
    return key[len(results_prefix) : -len(RESULT_SUFFIX)]


def version_of(info: ObjectInfo, gcs: bool) -> SourceVersion:
    if gcs:
        return SourceVersion(generation=info.version.stamp, size=info.version.size)
    return SourceVersion(size=info.version.size, mtime_ns=info.version.stamp)


def is_permanent(error: ServiceError) -> bool:
    """Whether retrying can never change the outcome: every 4xx but a vanished object."""
    return error.status < 500 and not isinstance(error, ObjectNotFound)


def new_result(
    uri: str,
    info: ObjectInfo,
    gcs: bool,
    mode: ResizeMode,
    via: Literal["event", "job"],
    answer: ClassifyResponse | None = None,
    error: ServiceError | None = None,
) -> ClassificationResult:
    return ClassificationResult(
        source=uri,
        version=version_of(info, gcs),
        mode=mode,
        via=via,
        classified_at=datetime.now(UTC),
        answer=answer,
        error=ErrorResponse(error=str(error), code=error.code) if error else None,
    )


def result_version(objects: BucketObjects, result: ObjectInfo) -> Version | None:
    """The source version a stored result classified: from its metadata (GCS), or its body."""
    token = result.metadata.get(SOURCE_VERSION_KEY)
    if token:
        return Version.parse(token)
    try:
        data, _ = objects.read(result.key, None, MAX_RESULT_BYTES)
        return ClassificationResult.model_validate_json(data).version.comparable()
    except (ObjectNotFound, ValueError):  # pydantic's ValidationError is a ValueError
        return None  # gone or unreadable: a new result may take its place


def store_result(objects: BucketObjects, key: str, result: ClassificationResult) -> Outcome:
    """Write `result` unless a result for its source's version, or a newer one, exists."""
    source = result.version.comparable()
    data = result.model_dump_json().encode()
    for _ in range(CAS_ATTEMPTS):
        existing = objects.head(key)
        if existing is not None:
            stored = result_version(objects, existing)
            if stored is not None and stored >= source:
                return Outcome.up_to_date
        if objects.write(key, data, {SOURCE_VERSION_KEY: source.token()}, existing):
            return Outcome.written
    raise RuntimeError(f"{key}: replaced by other writers {CAS_ATTEMPTS} times in a row")


def up_to_date_sources(objects: BucketObjects, results_prefix: str) -> dict[str, Version]:
    """One listing of the results: source key -> the version its result classified."""
    done = {}
    for info in objects.list(results_prefix):
        key = source_key(results_prefix, info.key)
        if key is not None:
            version = result_version(objects, info)
            if version is not None:
                done[key] = version
    return done
