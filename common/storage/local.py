"""A local folder as the store (the embedded default); paths are `file://` URIs so they travel
in the same `gcs_path` field as GCS's."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from common.errors import ForbiddenLocation, InvalidPath, ObjectNotFound, UploadTooLarge
from common.storage.base import ObjectInfo, Storage, Version
from common.storage.files import (
    create_complete,
    local_errors,
    locked,
    not_a_file,
    read_at_most,
    replace_complete,
    walk,
)
from common.storage.names import check_key, check_uri

MAX_SEGMENT_BYTES = 255  # NAME_MAX of Linux and macOS file systems


class LocalStorage(Storage):
    """A folder on disk, with `flock` on a folder for compare-and-swap."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    def uri_for(self, key: str) -> str:
        return (self.root / key).as_uri()

    def key_of(self, uri: str) -> str:
        """The key a `file://` URI names, inside the folder; the path stage's one boundary:
        whatever parsing or resolving raises is a 400, never a 500."""
        try:
            parts = urlsplit(check_uri(uri))
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket
            raise InvalidPath(f"the path is not a valid URI: {exc}") from exc
        if parts.scheme == "gs":
            raise ForbiddenLocation(
                f"this service stores images in a local folder; {uri!r} is not readable here"
            )
        if parts.scheme != "file":
            raise InvalidPath("expected a gs://bucket/key or file:// path")
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise InvalidPath("a file:// path takes no host, query or fragment")
        check_key(parts.path.lstrip("/"))
        with local_errors(uri):
            # strict=False: a missing file is a 404 when read, not an error here. resolve()
            # follows symlinks, so a link inside the folder that points out of it is refused.
            path = Path(unquote(parts.path, errors="strict")).resolve()
        if not path.is_relative_to(self.root):
            raise ForbiddenLocation("the path is outside this service's storage folder")
        if path == self.root:
            raise ObjectNotFound(f"no stored object at {uri}")
        return path.relative_to(self.root).as_posix()

    def can_name(self, key: str) -> bool:
        """Whether `key` is a name this folder can hold: every path segment within the file
        system's limit (names GCS allows are longer)."""
        return all(len(part.encode()) <= MAX_SEGMENT_BYTES for part in check_key(key).split("/"))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder, _, _ = prefix.rpartition("/")
        start = self.root / folder if folder else self.root
        for path in walk(start):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                yield ObjectInfo(key, Version.of_file(path.lstat()))

    def head(self, key: str) -> ObjectInfo | None:
        path = self.root / check_key(key)
        try:
            with local_errors(self.uri_for(key)):
                status = path.lstat()
        except ObjectNotFound:
            return None
        return ObjectInfo(key, Version.of_file(status))

    def read(self, key: str, version: Version | None, max_bytes: int) -> tuple[bytes, Version]:
        uri = self.uri_for(key)
        with local_errors(uri):
            # O_NONBLOCK: opening a FIFO inside the folder must not wait for a writer (it would
            # hold a reading thread for good); anything but a regular file is refused below.
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(self.root / check_key(key), flags)
            try:
                status = os.fstat(fd)
                if stat.S_ISDIR(status.st_mode):
                    raise ObjectNotFound(f"no stored object at {uri}")
                if not stat.S_ISREG(status.st_mode):
                    raise not_a_file()
                if status.st_size > max_bytes:
                    raise UploadTooLarge(f"the stored object is larger than {max_bytes:,} bytes")
                # Ask for the size the file has: reading `max_bytes + 1` would allocate the
                # whole limit (20 MiB by default) per call, several times a stored image.
                data = read_at_most(fd, status.st_size + 1)
            finally:
                os.close(fd)  # on every path: a refused read must not leak its descriptor
        if len(data) > max_bytes:  # grew since fstat: stored objects never do, but be sure
            raise UploadTooLarge(f"the stored object is larger than {max_bytes:,} bytes")
        return data, Version.of_file(status)

    def write(
        self, key: str, data: bytes, metadata: dict[str, str], replaces: ObjectInfo | None
    ) -> bool:
        target = self.root / check_key(key)
        with local_errors(self.uri_for(key), writing=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            if replaces is None:
                return create_complete(target, data)
            with locked(target.parent):
                if self.head(key) != replaces:  # replaced meanwhile by another writer
                    return False
                replace_complete(target, data)
        return True

    def put_if_absent(self, key: str, data: bytes, content_type: str) -> tuple[str, bool]:
        target = self.root / check_key(key)
        if target.exists():  # create-only: a stored object is never rewritten
            return self.uri_for(key), False
        try:
            created = create_complete(target, data)
        except FileNotFoundError:  # its folder is new: made here, not on every write
            target.parent.mkdir(parents=True, exist_ok=True)
            created = create_complete(target, data)
        return self.uri_for(key), created
