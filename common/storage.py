"""Where preprocessed images live: a GCS bucket, or a local folder as the embedded default.

Both backends share one small interface. Writes are create-only and all-or-nothing (nothing
partial is ever visible); reads accept only locations inside the configured bucket or folder.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from common.config import Settings
from common.errors import (
    AccessDenied,
    ForbiddenLocation,
    InvalidPath,
    ObjectNotFound,
    ServiceError,
    StorageUnavailable,
    UploadTooLarge,
)

LOG = logging.getLogger(__name__)
MAX_KEY_BYTES = 1024  # GCS's own limit on object names
STORAGE_RETRY_AFTER_S = 5


class Storage(Protocol):
    """The two operations the services need from a store of images."""

    def put_if_absent(self, key: str, data: bytes, content_type: str) -> tuple[str, bool]:
        """Store `data` under `key` unless it exists; return (URI, whether this call wrote it)."""
        ...

    def read(self, uri: str, max_bytes: int) -> bytes:
        """Read the object at `uri`, refusing anything outside this store or over `max_bytes`."""
        ...


def check_key(key: str) -> str:
    """Refuse the names Cloud Storage refuses or a file system cannot take safely: empty,
    over 1024 bytes, control characters (Unicode Cc: C0, DEL, C1), lone surrogates (not
    encodable) and `.`/`..` segments, as given and once percent-decoded. Every other Unicode
    name is a name: format characters (U+200C/U+200D in Persian words and emoji sequences),
    other scripts, spaces and symbols."""
    if not key:
        raise InvalidPath("the path names no object")
    for candidate in (key, unquote(key)):
        if has_control_characters(candidate):
            raise InvalidPath("the path contains control characters or invalid text")
        if any(segment in (".", "..") for segment in candidate.replace("\\", "/").split("/")):
            raise InvalidPath("the path may not contain '.' or '..' segments")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidPath(f"object names are limited to {MAX_KEY_BYTES} bytes")
    return key


def has_control_characters(text: str) -> bool:
    """Control characters (Cc) or lone surrogates (Cs) anywhere in `text`."""
    return any(unicodedata.category(char) in ("Cc", "Cs") for char in text)


def check_uri(uri: str) -> str:
    """Refuse a path whose parsing would silently change it: URL parsers drop tabs and
    newlines anywhere and strip leading and trailing blanks, so `file:///a\\nb.bmp` would read
    `ab.bmp`. Any control character, or blank at either end, is refused before parsing."""
    if has_control_characters(uri) or uri != uri.strip():
        raise InvalidPath("the path contains control characters or surrounding blanks")
    return uri


class LocalStorage:
    """A folder on disk; URIs are `file://` so they travel in the same `gcs_path` field."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    def uri_for(self, key: str) -> str:
        return (self.root / key).as_uri()

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

    def read(self, uri: str, max_bytes: int) -> bytes:
        path = self._resolve(uri)
        with local_errors(uri):
            # O_NONBLOCK: opening a FIFO inside the folder must not wait for a writer (it would
            # hold a reading thread for good); anything but a regular file is refused below.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                status = os.fstat(fd)
                if stat.S_ISDIR(status.st_mode):
                    raise ObjectNotFound(f"no stored object at {uri}")
                if not stat.S_ISREG(status.st_mode):
                    raise _not_a_file()
                if status.st_size > max_bytes:
                    raise UploadTooLarge(f"the stored object is larger than {max_bytes:,} bytes")
                # Ask for the size the file has: reading `max_bytes + 1` would allocate the
                # whole limit (20 MiB by default) per call, several times a stored image.
                data = read_at_most(fd, status.st_size + 1)
            finally:
                os.close(fd)  # on every path: a refused read must not leak its descriptor
        if len(data) > max_bytes:  # grew since fstat: stored objects never do, but be sure
            raise UploadTooLarge(f"the stored object is larger than {max_bytes:,} bytes")
        return data

    def _resolve(self, uri: str) -> Path:
        """The file a `file://` URI names, inside the folder; the path stage's one boundary:
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
        return path


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
        return _not_a_file()  # a socket, or a device with no driver behind it
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


def _not_a_file() -> InvalidPath:
    return InvalidPath("the path names a special file (FIFO, socket, device), not an image")


class ReadDeadline:
    """Cuts a storage response's connection when the read that asked for it runs out of time.

    The client's timeout bounds each socket read, not the whole download: a server that sends
    a byte now and then would hold a reading thread for good. A response hook (requests calls
    it before the body is read) registers the response with the current thread's deadline; one
    watchdog thread per process cuts what is overdue (the socket is shut down, the blocked
    read fails, and the request answers 503), so a read starts no thread of its own.
    """

    TICK_S = 0.1  # how late past its deadline a cut may come

    def __init__(self) -> None:
        self._local = threading.local()
        self._watched: dict[int, tuple[float, object]] = {}  # id(response) -> (deadline, it)
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None

    @contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        self._local.deadline = time.monotonic() + seconds
        self._local.watched = []
        try:
            yield
        finally:
            with self._lock:
                for key in self._local.watched:
                    self._watched.pop(key, None)
            self._local.deadline = None

    def watch(self, response, *args: object, **kwargs: object):  # a requests response hook
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None:
            with self._lock:
                self._watched[id(response)] = (deadline, response)
                if self._watchdog is None:
                    self._watchdog = threading.Thread(
                        target=self._cut_overdue, name="storage-deadline", daemon=True
                    )
                    self._watchdog.start()
            self._local.watched.append(id(response))
        return response

    def _cut_overdue(self) -> None:
        while True:
            time.sleep(self.TICK_S)
            now = time.monotonic()
            with self._lock:
                overdue = [key for key, (deadline, _) in self._watched.items() if deadline <= now]
                responses = [self._watched.pop(key)[1] for key in overdue]
            for response in responses:
                _cut(response)


def _cut(response) -> None:
    """Shut the response's connection down: a read blocked on it returns at once.

    Through a duplicate of the socket's descriptor (urllib3 exposes the descriptor, not the
    socket object): shutting a duplicate down shuts the connection down for both.
    """
    with suppress(OSError, ValueError):
        if response.raw.closed:  # read to the end meanwhile: nothing to cut
            return
        with socket.fromfd(response.raw.fileno(), socket.AF_INET, socket.SOCK_STREAM) as dup:
            dup.shutdown(socket.SHUT_RDWR)


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


class GCSStorage:
    """One Google Cloud Storage bucket through `google-cloud-storage`."""

    def __init__(self, bucket: str, timeout_s: float) -> None:
        from google.cloud import storage  # imported here: local storage needs no GCS client
        from google.cloud.storage.retry import DEFAULT_RETRY

        # google-cloud-storage 3.x looks up each bucket's metadata in a background request (and
        # re-checks the bucket after any 404) only to label OpenTelemetry spans, which these
        # services do not export: extra GCS calls per process and per missing object, and a 403
        # for classify's read-only service account on Cloud Run.
        os.environ.setdefault("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
        self.bucket_name = bucket
        self.timeout_s = timeout_s
        # Retry transient failures (5xx, 429, connection errors) with backoff, but give up
        # within the storage timeout so the request can answer 503 instead of hanging ~2 min.
        self.retry = DEFAULT_RETRY.with_timeout(timeout_s)
        client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT"))
        self.deadline = ReadDeadline()
        client._http.hooks["response"].append(self.deadline.watch)  # its requests session
        self.bucket = client.bucket(bucket)

    def uri_for(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{key}"

    def put_if_absent(self, key: str, data: bytes, content_type: str) -> tuple[str, bool]:
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(check_key(key))
        try:
            with storage_errors():
                # if_generation_match=0 makes the upload create-only, so the default retry
                # policy may safely retry it; a single-request upload is all-or-nothing.
                blob.upload_from_string(
                    data,
                    content_type=content_type,
                    if_generation_match=0,
                    timeout=self.timeout_s,
                    retry=self.retry,
                )
            created = True
        except PreconditionFailed:
            created = False
        return self.uri_for(key), created

    def read(self, uri: str, max_bytes: int) -> bytes:
        """The object's bytes in one GCS request, not a metadata call and then a download.

        A ranged read of one byte more than `max_bytes` tells an oversized object apart without
        fetching it whole. (GCS skips its checksum on ranged reads; TLS still guards the bytes.)
        """
        from google.api_core.exceptions import RequestRangeNotSatisfiable

        blob = self.bucket.blob(self._key_of(uri))
        with storage_errors(), self.deadline.within(self.timeout_s):
            try:
                data = blob.download_as_bytes(
                    start=0, end=max_bytes, timeout=self.timeout_s, retry=self.retry
                )
            except RequestRangeNotSatisfiable:  # an empty object has no first byte
                data = b""
        if len(data) > max_bytes:
            raise UploadTooLarge(f"the stored object is larger than {max_bytes:,} bytes")
        return data

    def _key_of(self, uri: str) -> str:
        if not check_uri(uri).startswith("gs://"):
            if uri.startswith("file:"):
                raise ForbiddenLocation("this service reads from a GCS bucket, not local files")
            raise InvalidPath("expected a gs://bucket/key path")
        bucket, _, key = uri.removeprefix("gs://").partition("/")
        if bucket != self.bucket_name:
            raise ForbiddenLocation(f"bucket {bucket!r} is not this service's bucket")
        return check_key(key)


@contextmanager
def storage_errors() -> Iterator[None]:
    """GCS's one error boundary: a missing object is a 404, a name GCS refuses a 400, and
    everything else (outages, timeouts, credentials, the unexpected) 503 + Retry-After."""
    from google.api_core import exceptions as google_errors

    try:
        yield
    except (ServiceError, google_errors.PreconditionFailed):
        raise  # already ours; a create-only write that found the object is the caller's
    except google_errors.NotFound as exc:
        raise ObjectNotFound("no such object") from exc
    except google_errors.BadRequest as exc:
        raise InvalidPath(f"storage refused the object name: {exc.message}") from exc
    except (google_errors.Forbidden, google_errors.Unauthorized) as exc:
        # 503 for a caller (IAM is fixed on the service's side, then it works); the bucket
        # paths tell it from an outage by its cause (bulk/job.py)
        LOG.warning("storage refused access: %s", exc.message)
        raise StorageUnavailable(
            f"storage refused this service access: {exc.message}",
            retry_after_s=STORAGE_RETRY_AFTER_S,
        ) from exc
    except Exception as exc:
        LOG.warning("storage call failed: %s", exc, exc_info=True)
        raise StorageUnavailable(
            "storage is unavailable; try again shortly", retry_after_s=STORAGE_RETRY_AFTER_S
        ) from exc


def storage_from_settings(settings: Settings) -> Storage:
    """GCS when a bucket is configured, else the local folder (the embedded default)."""
    if settings.bucket:
        return GCSStorage(settings.bucket, settings.storage_timeout_s)
    return LocalStorage(settings.storage_dir)
