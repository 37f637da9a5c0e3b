"""The classify Bento: MobileNetV2 (ImageNet, 224x224) behind BentoML's adaptive batching.

The request path, top to bottom in this file: `/classify` reads the stored image, decodes it to
224x224 pixels, runs the model and answers. How the model runs is chosen once, at start: batched,
the pixels of concurrent requests meet in BentoML's adaptive batcher (`CorkDispatcher`, driven
in-process by `batcher.py`) and the model runs once per batch; direct (`CLASSIFY_BATCHING=off`),
each request gets a model call of its own. `predict_batch` is the public batchable API for
callers that send decoded pixels; it shares the model call.

The model runs on ONNX Runtime (default), TensorFlow or OpenVINO (`runtimes.py`). One service
serves them all; the runtime is a build argument (`bentoml build --arg runtime=tensorflow`) that
picks the packages and the one model a Bento packs, and `CLASSIFY_RUNTIME` overrides it when
serving (a runtime of the same family, e.g. `openvino-bf16` from the OpenVINO Bento).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import bentoml
import numpy as np
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

import batcher
import events
from common import http_stack
from common.bento_image import BUILD_ENVS, service_image, with_command
from common.bucket_objects import bucket_objects
from common.config import observability_config, settings
from common.deadline import REQUEST_TIMEOUT_S
from common.errors import ServiceError, error_response
from common.http_guards import JsonOnly
from common.images import set_pixel_limit, to_model_pixels
from common.memory import release_large_buffers_promptly
from common.runtime_table import Runtime
from common.runtime_table import spec as runtime_spec
from common.schemas import (
    MODEL_SIZE,
    ClassifyRequest,
    ClassifyResponse,
    ModelInput,
    ModelOutput,
)
from common.stage_metrics import timed
from common.storage import storage_from_settings
from common.threads import name_runtime_threads, named_pool
from runtimes import class_names, load_runtime, rank

T = TypeVar("T")


class BuildArguments(BaseModel):
    """`bentoml build --arg runtime=NAME`: what a classify Bento is built for. BentoML keeps the
    arguments in the Bento and restores them wherever it is served."""

    runtime: Runtime | None = Field(
        None, description="the runtime served unless CLASSIFY_RUNTIME says otherwise"
    )


# Read and validated once, at import: a bad value stops the service before it serves.
SETTINGS = settings().serving(bentoml.use_arguments(BuildArguments).runtime)
RUNTIME = runtime_spec(SETTINGS.classify_runtime)
batcher.require_dispatcher()
# Storage reads wait on the network with GCS; this many may wait at once (more queue).
READ_THREADS = 32


@bentoml.asgi_app(events.app, path=events.MOUNT_PATH)
@bentoml.service(
    name=RUNTIME.image,
    image=with_command(service_image(RUNTIME.family), "classify-bucket", "bulk"),
    envs=[*BUILD_ENVS, {"name": "CLASSIFY_RUNTIME", "value": RUNTIME.name}],
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
        """Load the model on the configured runtime and run it once (trace, allocate)."""
        release_large_buffers_promptly()
        set_pixel_limit(SETTINGS.max_image_pixels)
        self.storage = storage_from_settings(SETTINGS)
        self.decode_budget = SETTINGS.decode_budget()
        model = self.model_ref
        self.model_name = str(model.tag)
        self.labels = class_names(Path(model.path))
        with name_runtime_threads(RUNTIME.name):
            self.runtime = load_runtime(RUNTIME.name, Path(model.path), SETTINGS.model_threads)
            self.runtime.predict(np.zeros((1, MODEL_SIZE, MODEL_SIZE, 3), np.uint8))
        self._model_threads = named_pool(SETTINGS.concurrent_calls, "classify-model")
        self._read_threads = named_pool(READ_THREADS, "classify-read")
        self._batcher: batcher.InProcessBatcher | None = None
        # The inference strategy, chosen once: every request takes the same path.
        self._probabilities = self._batched if SETTINGS.batching else self._direct
        self._events = events.EventClassifier(
            bucket_objects(self.storage) if SETTINGS.bucket else None,
            SETTINGS.bucket,
            SETTINGS,
            lambda work, *args: _in_pool(self._read_threads, work, *args),
            self._decode,
            self._classify_pixels,
        )

    async def __is_ready__(self) -> bool:
        """Ready once a model call went through the path requests take (the batcher too)."""
        if SETTINGS.batching and self._batcher is None:
            await self._batch(np.zeros((MODEL_SIZE, MODEL_SIZE, 3), np.uint8))
        return True

    @bentoml.api(route="/classify", input_spec=ClassifyRequest, output_spec=ClassifyResponse)
    async def classify(self, gcs_path: str, top_k: int = 5) -> ClassifyResponse | JSONResponse:
        """Classify a stored image with MobileNetV2 and return the top class and the top-k."""
        try:
            probabilities = await self._probabilities(gcs_path)
        except ServiceError as exc:
            return error_response(exc)
        return self._answer(probabilities, top_k)

    async def on_storage_event(self, event: events.StorageEvent) -> events.EventAnswer:
        """A storage event (events.py): the photo it names, classified into the results."""
        return await self._events.handle(event)

    async def _classify_pixels(self, pixels: np.ndarray) -> ClassifyResponse:
        """A decoded photo through the model path requests take, answered with the top 5."""
        if SETTINGS.batching:
            probabilities = await self._batch(pixels)
        else:
            probabilities = await _in_pool(
                self._model_threads, lambda: self._predict(pixels[np.newaxis])[0]
            )
        return self._answer(probabilities, 5)

    def _read(self, gcs_path: str) -> bytes:
        with timed("read"):
            return self.storage.read(gcs_path, SETTINGS.max_upload_bytes)

    def _decode(self, data: bytes) -> np.ndarray:
        with timed("decode"):
            return to_model_pixels(
                data, SETTINGS.max_image_pixels, SETTINGS.resize_mode, self.decode_budget
            )

    def _predict(self, pixels: np.ndarray) -> np.ndarray:
        """The model call every path ends in: a batch of uint8 images in, softmax out."""
        with timed("model"):
            return self.runtime.predict(pixels)

    async def _batched(self, gcs_path: str) -> np.ndarray:
        """Read and decode on a reading thread; the model call shared through the batcher."""
        pixels = await _in_pool(self._read_threads, self._decode_stored, gcs_path)
        return await self._batch(pixels)

    def _decode_stored(self, gcs_path: str) -> np.ndarray:
        return self._decode(self._read(gcs_path))

    async def _batch(self, pixels: np.ndarray) -> np.ndarray:
        if self._batcher is None:  # created in the event loop, which it binds to
            self._batcher = batcher.InProcessBatcher(
                self._predict_on_model_thread,
                SETTINGS.classify_max_batch_size,
                SETTINGS.classify_max_latency_ms,
                SETTINGS.batch_streams,
            )
        return await self._batcher(pixels)

    async def _predict_on_model_thread(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One batch the batcher formed, through the model on a model thread."""
        probabilities = self._model_threads.submit(lambda: self._predict(np.stack(images)))
        return list(await asyncio.wrap_future(probabilities))

    async def _direct(self, gcs_path: str) -> np.ndarray:
        """Read on a reading thread, then decode and the model call on a model thread.

        The event loop (busy with HTTP) sees one hand-off per request, the answer; a request
        whose client left before its turn is dropped before its read (asyncio cancelled it).
        """
        answer: Future[np.ndarray] = Future()
        self._read_threads.submit(
            contextvars.copy_context().run, self._read_then_predict, gcs_path, answer
        )
        return await asyncio.wrap_future(answer)

    def _read_then_predict(self, gcs_path: str, answer: Future[np.ndarray]) -> None:
        if not answer.set_running_or_notify_cancel():
            return
        try:
            data = self._read(gcs_path)
        except BaseException as exc:
            answer.set_exception(exc)
        else:
            self._model_threads.submit(self._decode_and_predict, data, answer)

    def _decode_and_predict(self, data: bytes, answer: Future[np.ndarray]) -> None:
        try:
            answer.set_result(self._predict(self._decode(data)[np.newaxis])[0])
        except BaseException as exc:
            answer.set_exception(exc)

    def _answer(self, probabilities: np.ndarray, top_k: int) -> ClassifyResponse:
        return rank(probabilities, self.labels, top_k, self.model_name, self.runtime.name)

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
        batch = np.stack(
            [
                np.frombuffer(image.pixels, np.uint8).reshape(MODEL_SIZE, MODEL_SIZE, 3)
                for image in images
            ]
        )
        probabilities = self._predict(batch).astype("<f4")
        return [ModelOutput(probabilities=row.tobytes()) for row in probabilities]


# A /classify body is a path and a number; /predict_batch carries base64 pixels, a batch of them.
JSON_LIMITS = {"/classify": 64 * 1024, "/predict_batch": SETTINGS.max_upload_bytes}
http_stack.install(Classify, SETTINGS, JsonOnly, limits=JSON_LIMITS)


async def _in_pool(pool: ThreadPoolExecutor, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` on a thread of `pool`, in this request's context (its deadline)."""
    return await asyncio.wrap_future(pool.submit(contextvars.copy_context().run, work, *args))
