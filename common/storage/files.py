"""Files for the local backend: reads bounded by size, writes complete before they are named,
a folder lock for compare-and-swap, and the one map from OS errors to the services' codes."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import (
    AccessDenied,
    InvalidPath,
    ObjectNotFound,
    ServiceError,
    StorageUnavailable,
)
from common.storage.base import STORAGE_RETRY_AFTER_S


def read_at_most(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# What the local file system says, by errno, in the README's codes.
_NOT_FOUND = frozenset({errno.ENOENT, errno.ENOTDIR})
_BAD_PATH = frozenset({errno.ELOOP, errno.ENAMETOOLONG, errno.EINVAL, errno.EISDIR})
_SPECIAL = frozenset({errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP})
_REFUSED = frozenset({errno.EACCES, errno.EPERM})
_CANNOT_HOLD = frozenset(
    {errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL}
)


@contextmanager
def local_errors(uri: str, writing: bool = False) -> Iterator[None]:
    """The local backend's one error boundary: every OS error a read can meet maps to a code.
    `writing`: a name the folder cannot hold (a file where a folder must be, a name too long)
    is InvalidPath for good; access refused (modes, a read-only mount) AccessDenied, which an
    operator can fix; anything else a retry may cure."""
    try:
        yield
    except OSError as exc:
        raise (_write_error if writing else _read_error)(uri, exc) from exc
    except (ValueError, RuntimeError, UnicodeError) as exc:
        # a NUL byte, undecodable percent-escapes, a symlink loop (RuntimeError in pathlib)
        raise InvalidPath(f"the path cannot name a stored object: {exc}") from exc


def _read_error(uri: str, exc: OSError) -> ServiceError:
    if exc.errno in _NOT_FOUND:
        return ObjectNotFound(f"no stored object at {uri}")
    if exc.errno in _SPECIAL:
        return not_a_file()  # a socket, or a device with no driver behind it
    if exc.errno in _BAD_PATH:
        return InvalidPath(f"the path cannot name a stored object: {exc.strerror}")
    if exc.errno in _REFUSED:
        return AccessDenied(f"{uri} is not readable by this service")
    return _unavailable(exc)


def _write_error(uri: str, exc: OSError) -> ServiceError:
    if exc.errno in _CANNOT_HOLD:
        return InvalidPath(f"{uri} cannot be written here: {exc.strerror}")
    if exc.errno in _REFUSED | {errno.EROFS}:
        return AccessDenied(f"{uri} is not writable by this process: {exc.strerror}")
    return _unavailable(exc)


def _unavailable(exc: OSError) -> StorageUnavailable:
    return StorageUnavailable(
        f"local storage failed: {exc.strerror}", retry_after_s=STORAGE_RETRY_AFTER_S
    )


def not_a_file() -> InvalidPath:
    return InvalidPath("the path names a special file (FIFO, socket, device), not an image")


# Linux: files can be written unnamed and linked into place through /proc (open(2), O_TMPFILE)
UNNAMED_FILES = hasattr(os, "O_TMPFILE") and Path("/proc/self/fd").is_dir()


def create_complete(target: Path, data: bytes) -> bool:
    """Create `target` holding `data`, synced to disk before it gets its name, so that readers
    never see part of it and nothing is overwritten; False if the name exists already.

    Written unnamed and linked once synced, a write makes one directory entry instead of a
    temporary name created, linked and removed (about a third less CPU per write:
    benchmarks/decisions.md, D19). Filesystems without O_TMPFILE get the temporary name.
    """
    if not UNNAMED_FILES:
        return _create_via_temporary_name(target, data)
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600, dir_fd=folder)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            return _create_via_temporary_name(target, data)
        try:
            write_synced(fd, data)
            # linkat(AT_SYMLINK_FOLLOW) of the /proc link names the unnamed file
            os.link(f"/proc/self/fd/{fd}", target.name, src_dir_fd=folder, dst_dir_fd=folder)
        except FileExistsError:
            return False
        finally:
            os.close(fd)
        return True
    finally:
        os.close(folder)


def _create_via_temporary_name(target: Path, data: bytes) -> bool:
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        try:
            write_synced(fd, data)
        finally:
            os.close(fd)
        os.link(name, target)  # atomic, and fails if the name exists
    except FileExistsError:
        return False
    finally:
        os.unlink(name)
    return True


def write_synced(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def walk(folder: Path) -> Iterator[Path]:
    """Regular files below `folder`, depth first, without following links; hidden names (a
    writer's temporary files) skipped. In the order GCS lists names: a folder sorts as its
    name plus "/" (`a-b` lists before `a/x`), so the relative paths come out sorted, which the
    bucket job's planning relies on (classify/bucket/plan.py)."""
    try:
        entries = sorted(os.scandir(folder), key=_listing_name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from walk(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


def _listing_name(entry: os.DirEntry) -> str:
    return entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def replace_complete(target: Path, data: bytes) -> None:
    """Replace `target` with `data` atomically: readers see the old content or the new."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb", closefd=True) as temporary:
            write_synced(temporary.fileno(), data)
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
