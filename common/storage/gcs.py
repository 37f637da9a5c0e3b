"""A Google Cloud Storage bucket through `google-cloud-storage`, with the services' retry,
timeouts and error boundary."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from common.errors import (
    ForbiddenLocation,
    InvalidPath,
    ObjectNotFound,
    ServiceError,
    StorageUnavailable,
    UploadTooLarge,
)
from common.storage.base import STORAGE_RETRY_AFTER_S, ObjectInfo, Storage, Version
from common.storage.names import check_key, check_uri
from common.storage.read_deadline import ReadDeadline

LOG = logging.getLogger(__name__)


class GCSStorage(Storage):
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

    def key_of(self, uri: str) -> str:
        if not check_uri(uri).startswith("gs://"):
            if uri.startswith("file:"):
                raise ForbiddenLocation("this service reads from a GCS bucket, not local files")
            raise InvalidPath("expected a gs://bucket/key path")
        bucket, _, key = uri.removeprefix("gs://").partition("/")
        if bucket != self.bucket_name:
            raise ForbiddenLocation(f"bucket {bucket!r} is not this service's bucket")
        return check_key(key)

    def can_name(self, key: str) -> bool:
        check_key(key)
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        with storage_errors():
            blobs = self.bucket.client.list_blobs(
                self.bucket, prefix=prefix, page_size=1000, timeout=self.timeout_s, retry=self.retry
            )
            for blob in blobs:
                yield _info(blob)

    def head(self, key: str) -> ObjectInfo | None:
        with storage_errors():
            blob = self.bucket.get_blob(check_key(key), timeout=self.timeout_s, retry=self.retry)
        return None if blob is None else _info(blob)

    def read(self, key: str, version: Version | None, max_bytes: int) -> tuple[bytes, Version]:
        """The object's bytes in one GCS request (that generation when `version` is given),
        not a metadata call and then a download.

        A ranged read of one byte more than `max_bytes` tells an oversized object apart without
        fetching it whole. (GCS skips its checksum on ranged reads; TLS still guards the bytes.)
        """
        from google.api_core.exceptions import RequestRangeNotSatisfiable

        if version is not None and version.size > max_bytes:
            raise UploadTooLarge(f"the stored object is larger than {max_bytes:,} bytes")
        generation = version.stamp if version is not None else None
        blob = self.bucket.blob(check_key(key), generation=generation)
        with storage_errors(), self.deadline.within(self.timeout_s):
            try:
                data = blob.download_as_bytes(
                    start=0, end=max_bytes, timeout=self.timeout_s, retry=self.retry
                )
            except RequestRangeNotSatisfiable:  # an empty object has no first byte
                data = b""
        if len(data) > max_bytes:
            raise UploadTooLarge(f"the stored object is larger than {max_bytes:,} bytes")
        return data, version or Version(blob.generation or 0, len(data))

    def write(
        self, key: str, data: bytes, metadata: dict[str, str], replaces: ObjectInfo | None
    ) -> bool:
        # The precondition makes the write create-only (0) or compare-and-swap (the generation
        # last seen), so the default retry may safely repeat it.
        match = replaces.version.stamp if replaces else 0
        return self._upload(key, data, "application/json", match, metadata)

    def put_if_absent(self, key: str, data: bytes, content_type: str) -> tuple[str, bool]:
        return self.uri_for(key), self._upload(key, data, content_type, 0)

    def _upload(
        self,
        key: str,
        data: bytes,
        content_type: str,
        generation_match: int,
        metadata: dict[str, str] | None = None,
    ) -> bool:
        """One single-request upload (all-or-nothing) under a generation precondition; False
        when the precondition failed."""
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(check_key(key))
        if metadata is not None:
            blob.metadata = metadata
        try:
            with storage_errors():
                blob.upload_from_string(
                    data,
                    content_type=content_type,
                    if_generation_match=generation_match,
                    timeout=self.timeout_s,
                    retry=self.retry,
                )
        except PreconditionFailed:
            return False
        return True


def _info(blob) -> ObjectInfo:  # a google.cloud.storage.Blob
    return ObjectInfo(blob.name, Version(blob.generation, blob.size or 0), blob.metadata or {})


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
        # paths tell it from an outage by its cause (classify/bucket/job.py)
        LOG.warning("storage refused access: %s", exc.message, extra=_code(StorageUnavailable))
        raise StorageUnavailable(
            f"storage refused this service access: {exc.message}",
            retry_after_s=STORAGE_RETRY_AFTER_S,
        ) from exc
    except Exception as exc:
        LOG.warning("storage call failed: %s", exc, exc_info=True, extra=_code(StorageUnavailable))
        raise StorageUnavailable(
            "storage is unavailable; try again shortly", retry_after_s=STORAGE_RETRY_AFTER_S
        ) from exc


def _code(error: type[ServiceError]) -> dict[str, str]:
    """A log line's error code (common/logs.py): the one the caller is answered with."""
    return {"code": error.code}
