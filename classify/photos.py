"""Stored photos as the model takes them: read from storage within the size limit, decoded
within the pixel limit and the process's decode budget, normalized to 224x224. The same steps
for `/classify`, storage events and `classify-bucket`; each stage is timed on `/metrics`."""

from __future__ import annotations

import numpy as np

from classify.settings import ClassifySettings
from common.images.decode import to_model_pixels
from common.stage_metrics import timed
from common.storage import Storage, Version


class Photos:
    def __init__(self, storage: Storage, settings: ClassifySettings) -> None:
        self.storage = storage
        self.max_bytes = settings.max_upload_bytes
        self.max_pixels = settings.max_image_pixels
        self.mode = settings.resize_mode
        self.budget = settings.decode_budget()

    def read(self, key: str, version: Version | None = None) -> tuple[bytes, Version]:
        """The object's bytes (at `version`, when given) and the version read."""
        with timed("read"):
            return self.storage.read(key, version, self.max_bytes)

    def decode(self, data: bytes) -> np.ndarray:
        with timed("decode"):
            return to_model_pixels(data, self.max_pixels, self.mode, self.budget)

    def load(self, key: str, version: Version | None = None) -> tuple[np.ndarray, Version]:
        """Read and decode: the model's pixels and the version they came from."""
        data, read = self.read(key, version)
        return self.decode(data), read

    def read_uri(self, uri: str) -> bytes:
        """The bytes of the photo at a client's path (`/classify`'s `gcs_path`)."""
        return self.read(self.storage.key_of(uri))[0]
