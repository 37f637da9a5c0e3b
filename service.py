"""The classify Bento: MobileNetV2 (ImageNet, 224x224) behind BentoML adaptive batching.

`POST /classify` reads a stored image, decodes it off the event loop and awaits
`predict_batch`, a `batchable` BentoML API: with batching on, calls from concurrent requests
meet in BentoML's batcher and the model runs once per batch; pixels travel to the batch route
as raw bytes (base64 in JSON), never as JSON lists of numbers. With batching off the same
method runs per request in a worker thread. The model runs on ONNX Runtime (default) or
TensorFlow (`runtimes.py`); whether batching pays depends on the runtime (`CLASSIFY_BATCHING`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from common.auth import BearerAuth, internal_headers
from common.config import settings
from common.docs import DocsAlias
from common.errors import ServiceError, error_response
from common.http_guards import ErrorShape, JsonOnly
from common.images import MODEL_SIZE, decode_image, set_pixel_limit, to_model_pixels
from common.schemas import ClassifyRequest, ClassifyResponse, Prediction
from common.shedding import LoadShedder
from common.storage import storage_from_settings
from runtimes import DEFAULT_RUNTIME, load_runtime

MODEL_TAG = os.environ.get("CLASSIFY_MODEL", "mobilenet_v2:latest")
RUNTIME = os.environ.get("CLASSIFY_RUNTIME", DEFAULT_RUNTIME)
# Whether requests meet in the adaptive batcher. "auto" follows benchmarks/results.md on
# 2 cores: TensorFlow gains from batches (~2x images/s at batch 8+), ONNX Runtime does not, and
# the batched route's extra in-process HTTP hop costs more than it saves.
_BATCHING_CHOICES = {"on": True, "off": False, "auto": RUNTIME == "tensorflow"}
_batching = os.environ.get("CLASSIFY_BATCHING", "auto").lower()
if _batching not in _BATCHING_CHOICES:
    raise ValueError(f"CLASSIFY_BATCHING must be on, off or auto, not {_batching!r}")
BATCHING = _BATCHING_CHOICES[_batching]
MAX_BATCH_SIZE = int(os.environ.get("CLASSIFY_MAX_BATCH_SIZE", "32"))
# The batcher answers 503 to a request it predicts will wait longer than this; small values
# shed most requests under load (see README), so it is sized well above a full batch's time.
MAX_LATENCY_MS = int(os.environ.get("CLASSIFY_MAX_LATENCY_MS", "10000"))
# Unbatched ONNX Runtime is fastest as one single-threaded call per core; everything else as
# one call at a time using every core inside it (measured, benchmarks/results.md).
_PER_CORE_CALLS = RUNTIME == "onnxruntime" and not BATCHING
_CORES = os.cpu_count() or 1
# Threads inside one model call (intra-op); 0 = one per core.
MODEL_THREADS = (
    int(os.environ.get("CLASSIFY_MODEL_THREADS", "1" if _PER_CORE_CALLS else "0")) or None
)
# Model calls that may run at once.
CONCURRENT_CALLS = int(
    os.environ.get("CLASSIFY_CONCURRENT_CALLS", str(_CORES) if _PER_CORE_CALLS else "1")
)
NUM_CLASSES = 1000
PIXEL_BYTES = MODEL_SIZE * MODEL_SIZE * 3


class ModelInput(BaseModel):
    """One 224x224 RGB image as raw uint8 bytes (HWC), base64 in JSON."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    pixels: bytes = Field(min_length=PIXEL_BYTES, max_length=PIXEL_BYTES)


class ModelOutput(BaseModel):
    """Softmax over the 1000 ImageNet classes as little-endian float32 bytes, base64 in JSON."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    probabilities: bytes = Field(min_length=NUM_CLASSES * 4, max_length=NUM_CLASSES * 4)


def load_labels(class_index_path: str) -> list[str]:
    """Human class names by index from Keras' `imagenet_class_index.json` (spaces, not `_`)."""
    with open(class_index_path) as file:
        index = json.load(file)
    return [index[str(i)][1].replace("_", " ") for i in range(NUM_CLASSES)]


@bentoml.service(
    name="classify",
    workers=1,
    threads=CONCURRENT_CALLS,
    traffic={"timeout": 60},
    # BentoML 1.4.40 recycles its inter-service HTTP session every 100 calls while calls are
    # in flight (sporadic 500s under load, upstream #5540/#5544); effectively disable that.
    runner_connection={"max_requests": 1_000_000_000, "max_age": 1e9},
    labels={"owner": "image-services", "stage": "classify"},
)
class Classify:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.settings = settings()
        set_pixel_limit(self.settings.max_image_pixels)
        self.storage = storage_from_settings(self.settings)
        stored_model = self.model_ref
        self.model_name = str(stored_model.tag)
        self.labels = load_labels(stored_model.path_of("imagenet_class_index.json"))
        self.runtime = load_runtime(RUNTIME, Path(stored_model.path), MODEL_THREADS)
        self.runtime.predict(np.zeros((1, MODEL_SIZE, MODEL_SIZE, 3), np.uint8))  # warm / trace
        self._warmed_through_api = False
        self._self_client_authorized = False
        self._model_limiter = anyio.CapacityLimiter(CONCURRENT_CALLS)

    async def __is_ready__(self) -> bool:
        """Ready once one image has gone through the real route, batcher included."""
        if not self._warmed_through_api:
            blank = ModelInput(pixels=bytes(PIXEL_BYTES))
            await self._infer(blank)
            self._warmed_through_api = True
        return True

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    def predict_batch(self, images: list[ModelInput]) -> list[ModelOutput]:
        """Run MobileNetV2 once on a batch of 224x224 RGB images (internal; used by /classify)."""
        if not images:
            return []
        batch = np.stack(
            [
                np.frombuffer(image.pixels, np.uint8).reshape(MODEL_SIZE, MODEL_SIZE, 3)
                for image in images
            ]
        )
        probabilities = self.runtime.predict(batch).astype("<f4")
        return [ModelOutput(probabilities=row.tobytes()) for row in probabilities]

    @bentoml.api(route="/classify", input_spec=ClassifyRequest, output_spec=ClassifyResponse)
    async def classify(self, gcs_path: str, top_k: int = 5) -> ClassifyResponse | JSONResponse:
        """Classify a stored image with MobileNetV2 and return the top class and the top-k."""
        try:
            pixels = await anyio.to_thread.run_sync(self._load_pixels, gcs_path)
        except ServiceError as exc:
            return error_response(exc)
        probabilities = await self._infer(ModelInput(pixels=pixels.tobytes()))
        return self._answer(probabilities, top_k)

    def _load_pixels(self, gcs_path: str) -> np.ndarray:
        data = self.storage.read(gcs_path, self.settings.max_upload_bytes)
        image = decode_image(data, self.settings.max_image_pixels)
        return to_model_pixels(image, self.settings.resize_mode)

    async def _infer(self, image: ModelInput) -> np.ndarray:
        if BATCHING:
            (output,) = await self._self_client().predict_batch([image])
        else:
            (output,) = await anyio.to_thread.run_sync(
                self.predict_batch.local, [image], limiter=self._model_limiter
            )
        if isinstance(output, dict):  # the self-call client may hand back plain JSON
            output = ModelOutput.model_validate(output)
        return np.frombuffer(output.probabilities, dtype="<f4")

    def _self_client(self):
        """The client for calls to our own routes, carrying the internal-call credential.

        BentoML creates its self-call session lazily from `default_headers` (and recreates it
        from the same dict), so adding the header before the first call covers every call; if
        a BentoML upgrade changed that, the warm-up call in `__is_ready__` would get 401 and
        the service would never report ready.
        """
        client = self.to_async
        if not self._self_client_authorized:
            client.default_headers.update(internal_headers())
            self._self_client_authorized = True
        return client

    def _answer(self, probabilities: np.ndarray, top_k: int) -> ClassifyResponse:
        ranked = np.argsort(probabilities)[::-1][:top_k]
        predictions = [
            Prediction(label=self.labels[i], index=int(i), confidence=float(probabilities[i]))
            for i in ranked
        ]
        best = predictions[0]
        return ClassifyResponse(
            label=best.label,
            confidence=best.confidence,
            index=best.index,
            top_k=predictions,
            model=self.model_name,
        )


Classify.add_asgi_middleware(DocsAlias)
Classify.add_asgi_middleware(ErrorShape)
Classify.add_asgi_middleware(BearerAuth, settings=settings())
Classify.add_asgi_middleware(LoadShedder, max_in_flight=settings().max_in_flight)
Classify.add_asgi_middleware(JsonOnly, paths={"/classify", "/predict_batch"})
