"""What classifying photos where they already are needs from storage, beyond the services' two
operations: list a prefix page by page, read one version of an object, and write a result
create-only or in place of an older one (compare-and-swap), never half-written.

One class per backend, over the same bucket or folder as `common/storage.py`, with the same
error boundaries (a missing object is `ObjectNotFound`, an outage `StorageUnavailable`).
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from common.errors import (
    ObjectNotFound,
    UploadTooLarge,
)
from common.storage import (
    GCSStorage,
    LocalStorage,
    check_key,
    create_complete,
    local_errors,
    read_at_most,
    storage_errors,
    write_synced,
)

# GCS custom metadata on a result object: the version of the source it classified, so that one
# listing of the results tells which sources are up to date (no read per result).
SOURCE_VERSION_KEY = "source-version"
MAX_SEGMENT_BYTES = 255  # NAME_MAX of Linux and macOS file systems


@dataclass(frozen=True)
class Version:
    """Which content of an object. GCS: the generation. A local file: its change time (every
    write, replacement or `touch` moves it, and no user can set it back), with its size,
    modification time and inode, so a file replaced by another with an older mtime (`cp -p`,
    a restore from backup) is a new version (benchmarks/decisions.md, D26)."""

    stamp: int  # GCS generation, or the local file's ctime in nanoseconds
    size: int
    identity: tuple[int, ...] = ()  # local: (mtime_ns, inode)

    @classmethod
    def of_file(cls, status: os.stat_result) -> Version:
        return cls(status.st_ctime_ns, status.st_size, (status.st_mtime_ns, status.st_ino))

    def covers(self, other: Version) -> bool:
        """Whether a result for this version stands for `other` too: the same content, or
        newer content of the same name (an older version's result never replaces it)."""
        return self == other or self.stamp > other.stamp

    def token(self) -> str:
        return ":".join(str(part) for part in (self.stamp, self.size, *self.identity))

    @classmethod
    def parse(cls, token: str) -> Version | None:
        """The version a token names, or None for one this code did not write."""
        parts = token.split(":")
        if len(parts) not in (2, 4) or not all(part.isascii() and part.isdigit() for part in parts):
            return None
        stamp, size, *identity = (int(part) for part in parts)
        return cls(stamp, size, tuple(identity))


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    version: Version
    metadata: dict[str, str] = field(default_factory=dict, compare=False)


class BucketObjects(Protocol):
    def uri_for(self, key: str) -> str: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under `prefix`, page by page (never the whole listing in memory)."""
        ...

    def read(self, key: str, version: Version | None, max_bytes: int) -> tuple[bytes, Version]:
        """The object's bytes at `version` (GCS: that generation or ObjectNotFound; local: the
        file as it is now), with the version actually read."""
        ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def can_name(self, key: str) -> bool:
        """Whether this store can hold an object named `key` (InvalidPath if nothing can)."""
        ...

    def write(
        self, key: str, data: bytes, metadata: dict[str, str], replaces: ObjectInfo | None
    ) -> bool:
        """Create `key`, or replace exactly `replaces` (the object as last seen); False if
        someone else created or replaced it meanwhile (read it again and decide again)."""
        ...


class GCSObjects:
    """A GCS bucket through `google-cloud-storage`, with the services' retry and timeouts."""

    def __init__(self, storage: GCSStorage) -> None:
        self.storage = storage
        self._bucket = storage.bucket

    def uri_for(self, key: str) -> str:
        return self.storage.uri_for(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        with storage_errors():
            blobs = self._bucket.client.list_blobs(
                self._bucket,
                prefix=prefix,
                page_size=1000,
                timeout=self.storage.timeout_s,
                retry=self.storage.retry,
            )
            for blob in blobs:
                yield ObjectInfo(
                    blob.name, Version(blob.generation, blob.size or 0), blob.metadata or {}
                )

    def can_name(self, key: str) -> bool:
        check_key(key)
        return True

    def read(self, key: str, version: Version | None, max_bytes: int) -> tuple[bytes, Version]:
        from google.api_core.exceptions import RequestRangeNotSatisfiable

        if version is None:
            found = self.head(key)
            if found is None:
                raise ObjectNotFound(f"no object {key!r}")
            version = found.version
        if version.size > max_bytes:
            raise UploadTooLarge(f"the stored object is larger than {max_bytes:,} bytes")
        blob = self._bucket.blob(check_key(key), generation=version.stamp)
        with storage_errors(), self.storage.deadline.within(self.storage.timeout_s):
            try:
                data = blob.download_as_bytes(
                    start=0, end=max_bytes, timeout=self.storage.timeout_s, retry=self.storage.retry
                )
            except RequestRangeNotSatisfiable:  # an empty object has no first byte
                data = b""
        if len(data) > max_bytes:
            raise UploadTooLarge(f"the stored object is larger than {max_bytes:,} bytes")
        return data, version

    def head(self, key: str) -> ObjectInfo | None:
        with storage_errors():
            blob = self._bucket.get_blob(
                check_key(key), timeout=self.storage.timeout_s, retry=self.storage.retry
            )
        if blob is None:
            return None
        return ObjectInfo(blob.name, Version(blob.generation, blob.size or 0), blob.metadata or {})

    def write(
        self, key: str, data: bytes, metadata: dict[str, str], replaces: ObjectInfo | None
    ) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._bucket.blob(check_key(key))
        blob.metadata = metadata
        try:
            with storage_errors():
                # The precondition makes the write create-only (0) or compare-and-swap (the
                # generation last seen), so the default retry may safely repeat it.
                blob.upload_from_string(
                    data,
                    content_type="application/json",
                    if_generation_match=replaces.version.stamp if replaces else 0,
                    timeout=self.storage.timeout_s,
                    retry=self.storage.retry,
                )
        except PreconditionFailed:
            return False
        return True


class LocalObjects:
    """A local folder: the same operations, with `flock` on the folder for compare-and-swap."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage
        self.root = storage.root

    def uri_for(self, key: str) -> str:
        return self.storage.uri_for(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder, _, _ = prefix.rpartition("/")
        start = self.root / folder if folder else self.root
        for path in _walk(start):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                status = path.lstat()
                yield ObjectInfo(key, Version.of_file(status))

    def read(self, key: str, version: Version | None, max_bytes: int) -> tuple[bytes, Version]:
        path = self.root / check_key(key)
        with local_errors(self.uri_for(key)):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode):
                    raise ObjectNotFound(f"no regular file {key!r}")
                if status.st_size > max_bytes:
                    raise UploadTooLarge(f"the stored object is larger than {max_bytes:,} bytes")
                data = read_at_most(fd, status.st_size + 1)
            finally:
                os.close(fd)
        if len(data) > max_bytes:
            raise UploadTooLarge(f"the stored object is larger than {max_bytes:,} bytes")
        return data, Version.of_file(status)

    def head(self, key: str) -> ObjectInfo | None:
        path = self.root / check_key(key)
        try:
            with local_errors(self.uri_for(key)):
                status = path.lstat()
        except ObjectNotFound:
            return None
        return ObjectInfo(key, Version.of_file(status))

    def can_name(self, key: str) -> bool:
        """Whether `key` is a name this folder can hold: every path segment within the file
        system's limit (names GCS allows are longer)."""
        return all(len(part.encode()) <= MAX_SEGMENT_BYTES for part in check_key(key).split("/"))

    def write(
        self, key: str, data: bytes, metadata: dict[str, str], replaces: ObjectInfo | None
    ) -> bool:
        target = self.root / check_key(key)
        with local_errors(self.uri_for(key), writing=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            if replaces is None:
                return create_complete(target, data)
            with _locked(target.parent):
                if self.head(key) != replaces:  # replaced meanwhile by another writer
                    return False
                fd, name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
                try:
                    with os.fdopen(fd, "wb", closefd=True) as temporary:
                        write_synced(temporary.fileno(), data)
                    os.replace(name, target)  # atomic: readers see the old result or the new
                except BaseException:
                    Path(name).unlink(missing_ok=True)
                    raise
        return True


def _walk(folder: Path) -> Iterator[Path]:
    """Regular files below `folder`, depth first, without following links; hidden names (a
    writer's temporary files) skipped."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def bucket_objects(storage: GCSStorage | LocalStorage) -> BucketObjects:
    if isinstance(storage, GCSStorage):
        return GCSObjects(storage)
    return LocalObjects(storage)
