"""The preprocess Bento: upload an image, get back where its normalized 224x224 image is stored.

No TensorFlow here: this service only decodes, normalizes, encodes and stores. The upload is
parsed once, in memory, by `UploadGuard`; decoding is admitted against the decode budget.
"""

from __future__ import annotations

import hashlib
import time

import bentoml
from starlette.responses import JSONResponse

from common.bento_image import BUILD_ENVS, service_image
from common.config import observability_config, settings
from common.errors import EmptyUpload, ServiceError, UploadTooLarge, error_response
from common.http import stack as http_stack
from common.http.deadline import REQUEST_TIMEOUT_S
from common.images.decode import (
    STORED_CONTENT_TYPE,
    STORED_SUFFIX,
    encode_stored,
    load_model_image,
    set_pixel_limit,
)
from common.logs import configure_logging
from common.memory import release_large_buffers_promptly
from common.schemas import PreprocessResponse, ResizeMode
from common.stage_metrics import timed
from common.storage import storage_from_settings
from common.tracing import configure_tracing
from common.tracing import shutdown as shutdown_tracing
from preprocess.uploads import PreprocessForm, UploadGuard

# Log lines in Cloud Logging's format (plain on a terminal), BentoML's own too.
configure_logging()
# Read and validated once, at import: a bad value stops the service before it serves.
SETTINGS = settings()
# Spans over OTLP when OpenTelemetry's variables ask for it (off by default: common/tracing.py).
configure_tracing("preprocess", SETTINGS.traces_to_google)
# CPU of the image work itself (decode, resize, encode), so that what the server spends around
# it per upload (HTTP, the form, hashing, storage) can be told apart (benchmarks/pipeline.py).
IMAGE_CPU = bentoml.metrics.Counter(
    name="preprocess_image_cpu_seconds",
    documentation="CPU seconds decoding, normalizing and encoding uploads",
)


@bentoml.service(
    name="preprocess",
    image=service_image(),
    envs=BUILD_ENVS,
    workers=1,
    threads=4,  # Pillow releases the GIL while decoding and resizing
    traffic={"timeout": REQUEST_TIMEOUT_S},
    labels={"owner": "image-services", "stage": "preprocess"},
    **observability_config(SETTINGS),
)
class Preprocess:
    def __init__(self) -> None:
        self.settings = SETTINGS
        release_large_buffers_promptly()
        set_pixel_limit(self.settings.max_image_pixels)
        self.storage = storage_from_settings(self.settings)
        self.decode_budget = self.settings.decode_budget()

    @bentoml.on_shutdown
    def flush_traces(self) -> None:
        """Export the spans still queued before the process goes (Cloud Run's SIGTERM)."""
        shutdown_tracing()

    @bentoml.api(route="/preprocess", input_spec=PreprocessForm, output_spec=PreprocessResponse)
    def preprocess(
        self, image: bytes, mode: ResizeMode | None = None
    ) -> PreprocessResponse | JSONResponse:
        """Normalize an uploaded image to 224x224 RGB, store it (lossless BMP), return its path."""
        try:
            self._check_size(image)
            return self._store(image, mode or self.settings.resize_mode)
        except ServiceError as exc:
            return error_response(exc)

    def _check_size(self, upload: bytes) -> None:
        if not upload:
            raise EmptyUpload("the uploaded file is empty")
        if len(upload) > self.settings.max_upload_bytes:
            raise UploadTooLarge(
                f"the upload is {len(upload):,} bytes; "
                f"the limit is {self.settings.max_upload_bytes:,}"
            )

    def _store(self, data: bytes, mode: ResizeMode) -> PreprocessResponse:
        started = time.thread_time()
        try:
            with timed("decode"):
                image = load_model_image(
                    data, self.settings.max_image_pixels, mode, self.decode_budget
                )
                stored = encode_stored(image)
        finally:
            IMAGE_CPU.inc(time.thread_time() - started)
        digest = hashlib.sha256(stored).hexdigest()
        key = f"{self.settings.storage_prefix}{digest}{STORED_SUFFIX}"
        with timed("write"):
            uri, _created = self.storage.put_if_absent(key, stored, STORED_CONTENT_TYPE)
        return PreprocessResponse(
            gcs_path=uri, width=image.width, height=image.height, sha256=digest
        )


http_stack.install(
    Preprocess,
    SETTINGS,
    UploadGuard,
    path="/preprocess",
    max_upload_bytes=SETTINGS.max_upload_bytes,
)
