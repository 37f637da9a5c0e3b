"""Where photos, preprocessed images and results live: one interface (`base.Storage`) over a GCS
bucket (`gcs.py`, when `BUCKET` is set) or a local folder (`local.py`, the embedded default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.storage.base import STORAGE_RETRY_AFTER_S, ObjectInfo, Storage, Version
from common.storage.gcs import GCSStorage
from common.storage.local import LocalStorage
from common.storage.names import check_key, check_uri

if TYPE_CHECKING:
    from common.config import Settings

__all__ = [
    "STORAGE_RETRY_AFTER_S",
    "GCSStorage",
    "LocalStorage",
    "ObjectInfo",
    "Storage",
    "Version",
    "check_key",
    "check_uri",
    "storage_from_settings",
]


def storage_from_settings(settings: Settings) -> Storage:
    """GCS when a bucket is configured, else the local folder (the embedded default)."""
    if settings.bucket:
        return GCSStorage(settings.bucket, settings.storage_timeout_s)
    return LocalStorage(settings.storage_dir)
