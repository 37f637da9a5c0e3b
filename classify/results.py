"""The results layout: one JSON result per classified source object, whichever path classified it
(a storage event or the bucket job), documented in docs/buckets.md.

`results/<source key>.json` holds the source's URI and version, then either the answer
`/classify` gives for it (the same model) or the error that keeps it from ever being classified.
Results are written create-only; a newer version of the source replaces its result by
compare-and-swap, and an older one never replaces a newer one's.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from common.errors import (
    AccessDenied,
    InvalidPath,
    ObjectNotFound,
    ServiceError,
    StorageUnavailable,
)
from common.schemas import ClassifyResponse, ErrorResponse, ResizeMode
from common.storage import STORAGE_RETRY_AFTER_S, ObjectInfo, Storage, Version, check_key

LOG = logging.getLogger(__name__)

RESULT_SUFFIX = ".json"
# Per-task manifests of the bucket job, under the results prefix; no result ends like this.
MANIFEST_FOLDER = "_tasks/"
MANIFEST_SUFFIX = ".manifest"
CAS_ATTEMPTS = 5
MAX_RESULT_BYTES = 1024 * 1024  # a result is ~1 KB (top-1000 at most: ~100 KB)
# Custom metadata on a result object: the version of the source it classified, so that one
# listing of the results tells which sources are up to date (no read per result).
SOURCE_VERSION_KEY = "source-version"


class Outcome(StrEnum):
    written = "written"  # a new result, or one for a newer version of the source
    up_to_date = "up_to_date"  # a result for this version or a newer one is there already


class SourceVersion(BaseModel):
    generation: int | None = Field(None, description="GCS object generation (GCS only).")
    size: int = Field(description="Bytes.")
    mtime_ns: int | None = Field(None, description="Modification time, ns (local files only).")
    ctime_ns: int | None = Field(None, description="Change time, ns (local files only).")
    inode: int | None = Field(None, description="Inode number (local files only).")

    def comparable(self) -> Version:
        if self.generation is not None:
            return Version(self.generation, self.size)
        if self.ctime_ns is None or self.mtime_ns is None or self.inode is None:
            return Version(0, self.size, (-1,))  # written before ctime counted: never current
        return Version(self.ctime_ns, self.size, (self.mtime_ns, self.inode))


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


def has_storable_result(objects: Storage, results_prefix: str, key: str) -> bool:
    """Whether an object and its result can be named here: GCS allows names these services
    refuse (`..` segments, control characters), and a result's name is longer than its
    photo's (a file system's segment limit too). Such an object is skipped, never retried."""
    try:
        check_key(key)
        return objects.can_name(result_key(results_prefix, key))
    except InvalidPath:
        return False


def source_key(results_prefix: str, key: str) -> str | None:
    """The source a result key belongs to; None for anything else under the prefix."""
    if not key.startswith(results_prefix) or not key.endswith(RESULT_SUFFIX):
        return None
    return key[len(results_prefix) : -len(RESULT_SUFFIX)]


def version_of(info: ObjectInfo, gcs: bool) -> SourceVersion:
    version = info.version
    if gcs:
        return SourceVersion(generation=version.stamp, size=version.size)
    mtime_ns, inode = version.identity
    return SourceVersion(size=version.size, mtime_ns=mtime_ns, ctime_ns=version.stamp, inode=inode)


def is_permanent(error: ServiceError) -> bool:
    """Whether retrying can never change the outcome: every 4xx but a vanished object and
    access refused (an operator fixes file modes or IAM, and the retry then succeeds)."""
    return error.status < 500 and not isinstance(error, ObjectNotFound | AccessDenied)


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


def result_version(objects: Storage, result: ObjectInfo) -> Version | None:
    """The source version a stored result classified: from its metadata (GCS), or its body.
    None for anything this code did not write (a corrupt or oversized object, a metadata value
    that does not parse, a result gone meanwhile): no valid result, so the photo is done again
    and its result replaced. Storage being unavailable is the caller's (a retry can help)."""
    token = result.metadata.get(SOURCE_VERSION_KEY)
    if token:
        return Version.parse(token)
    try:
        data, _ = objects.read(result.key, None, MAX_RESULT_BYTES)
        return ClassificationResult.model_validate_json(data).version.comparable()
    except StorageUnavailable:
        raise
    except (ServiceError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def store_result(objects: Storage, key: str, result: ClassificationResult) -> Outcome:
    """Write `result` unless a result for its source's version, or a newer one, exists."""
    source = result.version.comparable()
    data = result.model_dump_json().encode()
    for _ in range(CAS_ATTEMPTS):
        existing = objects.head(key)
        if existing is not None:
            stored = result_version(objects, existing)
            if stored is not None and stored.covers(source):
                return Outcome.up_to_date
        if objects.write(key, data, {SOURCE_VERSION_KEY: source.token()}, existing):
            return Outcome.written
    raise StorageUnavailable(
        f"{key}: replaced by other writers {CAS_ATTEMPTS} times in a row",
        retry_after_s=STORAGE_RETRY_AFTER_S,
    )
