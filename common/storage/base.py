"""The one storage interface of both services, the events route and `classify-bucket`: list,
head, read, write (create-only or compare-and-swap) and put-if-absent, over a GCS bucket
(`gcs.py`) or a local folder (`local.py`). Writes are all-or-nothing (nothing partial is ever
visible); reads accept only locations inside the configured bucket or folder."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

STORAGE_RETRY_AFTER_S = 5


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


class Storage(ABC):
    """A bucket or folder of objects named by keys; `uri_for`/`key_of` translate to the
    `gs://` or `file://` paths clients send. Errors are the services' own: a missing object
    `ObjectNotFound`, a name no store can hold `InvalidPath`, an outage `StorageUnavailable`."""

    @abstractmethod
    def uri_for(self, key: str) -> str: ...

    @abstractmethod
    def key_of(self, uri: str) -> str:
        """The key a client's path names, refusing anything outside this store."""

    @abstractmethod
    def can_name(self, key: str) -> bool:
        """Whether this store can hold an object named `key` (InvalidPath if nothing can)."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under `prefix`, page by page (never the whole listing in memory)."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def read(self, key: str, version: Version | None, max_bytes: int) -> tuple[bytes, Version]:
        """The object's bytes at `version` (GCS: that generation or ObjectNotFound; local: the
        file as it is now; None: whatever is there), with the version read; UploadTooLarge
        over `max_bytes`."""

    @abstractmethod
    def write(
        self, key: str, data: bytes, metadata: dict[str, str], replaces: ObjectInfo | None
    ) -> bool:
        """Create `key` (a JSON document), or replace exactly `replaces` (the object as last
        seen); False if someone else created or replaced it meanwhile."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes, content_type: str) -> tuple[str, bool]:
        """Store `data` under `key` unless it exists; return (URI, whether this call wrote it)."""

    def read_uri(self, uri: str, max_bytes: int) -> bytes:
        """The bytes at a client's path (`/classify`'s `gcs_path`)."""
        return self.read(self.key_of(uri), None, max_bytes)[0]
