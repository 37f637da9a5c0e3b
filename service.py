"""The classify Bento: MobileNetV2 (ImageNet, 224x224) behind BentoML's adaptive batching.

`/classify` reads the stored photo, decodes it to 224x224 pixels, runs the model and answers.
The model is a `Classifier` (classify/model.py) on the runtime the Bento was built for
(`bentoml build --arg runtime=tensorflow`; `CLASSIFY_RUNTIME` overrides it: classify/settings.py);
how it runs for concurrent requests, batched or direct, is chosen once (classify/inference.py).
Storage events (`/events/storage`, classify/events.py) take the same path; `predict_batch` is
the public batchable API for callers that send decoded pixels.
"""

from __future__ import annotations

from functools import partial

import bentoml
import numpy as np
from starlette.responses import JSONResponse

from classify import events
from classify.inference import inference_for, warm
from classify.model import Classifier
from classify.photos import Photos
from classify.settings import classify_settings
from common.bento_image import BUILD_ENVS, service_image, with_command
from common.config import observability_config
from common.errors import ServiceError, error_response
from common.http import stack as http_stack
from common.http.deadline import REQUEST_TIMEOUT_S
from common.http.guards import JsonOnly
from common.images.decode import set_pixel_limit
from common.logs import configure_logging
from common.memory import release_large_buffers_promptly
from common.schemas import MODEL_SIZE, ClassifyRequest, ClassifyResponse, ModelInput, ModelOutput
from common.storage import storage_from_settings
from common.threads import named_pool
from common.tracing import configure_tracing
from common.tracing import shutdown as shutdown_tracing

# Log lines in Cloud Logging's format (plain on a terminal), BentoML's own too.
configure_logging()
# Read and validated once, at import: a bad value stops the service before it serves.
SETTINGS = classify_settings()
RUNTIME = SETTINGS.runtime
# Spans over OTLP when OpenTelemetry's variables ask for it (off by default: common/tracing.py).
configure_tracing("classify", SETTINGS.traces_to_google)


@bentoml.asgi_app(events.app, path=events.MOUNT_PATH)
@bentoml.service(
    name=RUNTIME.image,
    image=with_command(service_image(RUNTIME.family), "classify-bucket", "classify.bucket"),
    envs=BUILD_ENVS,
    workers=1,
    threads=SETTINGS.concurrent_calls,
    traffic={"timeout": REQUEST_TIMEOUT_S},
    labels={"owner": "image-services", "stage": "classify"},
    **observability_config(SETTINGS),
)
class Classify:
    # The one model this Bento packs: the runtime's family's import (or `CLASSIFY_MODEL`).
    model_ref = bentoml.models.BentoModel(SETTINGS.classify_model or RUNTIME.stored_model)

    def __init__(self) -> None:
        release_large_buffers_promptly()
        set_pixel_limit(SETTINGS.max_image_pixels)
        self.classifier = Classifier.load(SETTINGS, self.model_ref)
        self.infer = inference_for(self.classifier, SETTINGS)
        self.photos = Photos(storage_from_settings(SETTINGS), SETTINGS)
        self.warmed = False
        storage_threads = named_pool(events.STORAGE_THREADS, "classify-events")
        events.app.state.handler = events.EventClassifier(
            self.photos, self.classifier, self.infer, SETTINGS, storage_threads
        )

    @bentoml.on_shutdown
    def flush_traces(self) -> None:
        """Export the spans still queued before the process goes (Cloud Run's SIGTERM)."""
        shutdown_tracing()

    async def __is_ready__(self) -> bool:
        """Ready once a model call went through the path requests take (the batcher too)."""
        if not self.warmed:
            await warm(self.infer)
            self.warmed = True
        return True

    @bentoml.api(route="/classify", input_spec=ClassifyRequest, output_spec=ClassifyResponse)
    async def classify(self, gcs_path: str, top_k: int = 5) -> ClassifyResponse | JSONResponse:
        """Classify a stored image with MobileNetV2 and return the top class and the top-k."""
        try:
            read = partial(self.photos.read_uri, gcs_path)
            probabilities = await self.infer(read, self.photos.decode)
        except ServiceError as exc:
            return error_response(exc)
        return self.classifier.rank(probabilities, top_k)

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=SETTINGS.classify_max_batch_size,
        max_latency_ms=SETTINGS.classify_max_latency_ms,
    )
    def predict_batch(self, images: list[ModelInput]) -> list[ModelOutput]:
        """Softmax for already-decoded 224x224 RGB images; BentoML batches concurrent calls."""
        if not images:
            return []
        shape = (MODEL_SIZE, MODEL_SIZE, 3)
        batch = np.stack([np.frombuffer(image.pixels, np.uint8).reshape(shape) for image in images])
        probabilities = self.classifier.predict(batch).astype("<f4")
        return [ModelOutput(probabilities=row.tobytes()) for row in probabilities]


# A /classify body is a path and a number; /predict_batch carries base64 pixels, a batch of them.
JSON_LIMITS = {"/classify": 64 * 1024, "/predict_batch": SETTINGS.max_upload_bytes}
http_stack.install(Classify, SETTINGS, JsonOnly, limits=JSON_LIMITS)
