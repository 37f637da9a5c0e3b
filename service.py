"""The classify Bento: MobileNetV2 (ImageNet, 224x224) behind BentoML's adaptive batching.

The request path, top to bottom in this file: `/classify` reads the stored image on a reading
thread and decodes it to 224x224 pixels; the pixels of concurrent requests meet in BentoML's
adaptive batcher (`CorkDispatcher`, driven in-process by `batcher.py`), and the model runs once
per batch on a model thread. With `CLASSIFY_BATCHING=off` each request gets a model call of its
own. `predict_batch` is the public batchable API for callers that send decoded pixels; it shares
the model call. The model runs on ONNX Runtime (default), TensorFlow or OpenVINO (`runtimes.py`).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
from starlette.responses import JSONResponse

import batcher
from common import http_stack
from common.bento_image import slim_image
from common.config import observability_config, settings
from common.deadline import REQUEST_TIMEOUT_S
from common.errors import ServiceError, error_response
from common.http_guards import JsonOnly
from common.images import set_pixel_limit, to_model_pixels
from common.memory import release_large_buffers_promptly
from common.schemas import (
    MODEL_SIZE,
    ClassifyRequest,
    ClassifyResponse,
    ModelInput,
    ModelOutput,
    Prediction,
)
from common.stage_metrics import timed
from common.storage import storage_from_settings
from common.threads import name_this_thread, name_thread, thread_ids
from runtimes import class_names, load_runtime, stored_model

# Read and validated once, at import: a bad value stops the service before it serves.
SETTINGS = settings()
batcher.require_dispatcher()
# Storage reads wait on the network with GCS; this many may wait at once (more queue).
READ_THREADS = 32

# CPU time of the threads calling the model and decoding, so that everything else the server
# spends per request (HTTP, routing, validation, hand-offs) can be told apart in the benchmark.
# The runtime's own intra-op threads are not in these counters; they carry the runtime's name
# at the OS level (common/threads.py), which is how the benchmark counts them as model work.
MODEL_CPU = bentoml.metrics.Counter(
    name="classify_model_cpu_seconds",
    documentation="CPU seconds of the threads calling the model (intra-op helpers excluded)",
)
DECODE_CPU = bentoml.metrics.Counter(
    name="classify_decode_cpu_seconds",
    documentation="CPU seconds spent decoding and resizing stored images (reading excluded)",
)


def _named_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads carry `name` at the OS level too (per-thread CPU)."""
    return ThreadPoolExecutor(
        threads, thread_name_prefix=name, initializer=name_this_thread, initargs=(name,)
    )


@bentoml.service(
    name="classify",
    image=slim_image(),
    workers=1,
    threads=SETTINGS.concurrent_calls,
    traffic={"timeout": REQUEST_TIMEOUT_S},
    labels={"owner": "image-services", "stage": "classify"},
    **observability_config(SETTINGS),
)
class Classify:
    def __init__(self) -> None:
        """Load the model on the configured runtime and run it once (trace, allocate)."""
        release_large_buffers_promptly()
        set_pixel_limit(SETTINGS.max_image_pixels)
        self.storage = storage_from_settings(SETTINGS)
        self.decode_budget = SETTINGS.decode_budget()
        # Looked up here, not declared on the class: a declared model would be packed into
        # every Bento; each bentofile packs only the model its runtime loads.
        model = bentoml.models.get(
            SETTINGS.classify_model or stored_model(SETTINGS.classify_runtime)
        )
        self.model_name = str(model.tag)
        self.labels = class_names(Path(model.path))
        threads_before = thread_ids()
        self.runtime = load_runtime(
            SETTINGS.classify_runtime, Path(model.path), SETTINGS.model_threads
        )
        self.runtime.predict(np.zeros((1, MODEL_SIZE, MODEL_SIZE, 3), np.uint8))
        for tid in thread_ids() - threads_before:  # the runtime's own pools (intra-op etc.)
            name_thread(tid, self.runtime.name)
        self._model_threads = _named_pool(SETTINGS.concurrent_calls, "classify-model")
        self._read_threads = _named_pool(READ_THREADS, "classify-read")
        self._batcher: batcher.InProcessBatcher | None = None
        self._warmed = False

    async def __is_ready__(self) -> bool:
        """Ready once an image has gone through the whole model path (the batcher included)."""
        if not self._warmed:
            await self._infer(np.zeros((MODEL_SIZE, MODEL_SIZE, 3), np.uint8))
            self._warmed = True
        return True

    def _predict(self, pixels: np.ndarray) -> np.ndarray:
        """The model call every path ends in: a batch of uint8 images in, softmax out."""
        started = time.thread_time()
        try:
            with timed("model"):
                return self.runtime.predict(pixels)
        finally:
            MODEL_CPU.inc(time.thread_time() - started)

    @bentoml.api(route="/classify", input_spec=ClassifyRequest, output_spec=ClassifyResponse)
    async def classify(self, gcs_path: str, top_k: int = 5) -> ClassifyResponse | JSONResponse:
        """Classify a stored image with MobileNetV2 and return the top class and the top-k."""
        try:
            if SETTINGS.batching:
                read = self._read_threads.submit(
                    contextvars.copy_context().run, self._read_and_decode, gcs_path
                )
                probabilities = await self._infer(await asyncio.wrap_future(read))
            else:
                answer: Future[np.ndarray] = Future()
                self._read_threads.submit(
                    contextvars.copy_context().run, self._read_then_predict, gcs_path, answer
                )
                probabilities = await asyncio.wrap_future(answer)
        except ServiceError as exc:
            return error_response(exc)
        return self._answer(probabilities, top_k)

    def _read_and_decode(self, gcs_path: str) -> np.ndarray:
        return self._decode(self._read(gcs_path))

    def _read(self, gcs_path: str) -> bytes:
        with timed("read"):
            return self.storage.read(gcs_path, SETTINGS.max_upload_bytes)

    def _decode(self, data: bytes) -> np.ndarray:
        started = time.thread_time()
        try:
            with timed("decode"):
                return to_model_pixels(
                    data, SETTINGS.max_image_pixels, SETTINGS.resize_mode, self.decode_budget
                )
        finally:
            DECODE_CPU.inc(time.thread_time() - started)

    async def _infer(self, pixels: np.ndarray) -> np.ndarray:
        """Softmax for one image: through the adaptive batcher, or straight to a model thread."""
        if not SETTINGS.batching:
            return await asyncio.wrap_future(
                self._model_threads.submit(lambda: self._predict(pixels[np.newaxis])[0])
            )
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

    def _read_then_predict(self, gcs_path: str, answer: Future[np.ndarray]) -> None:
        """Unbatched: read here, then decode + model on a model thread, queued from here.

        The event loop (busy with HTTP) sees one hand-off per request, the answer; a request
        whose client left before its turn is dropped here (asyncio cancelled `answer`).
        """
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
        top = np.argpartition(probabilities, -top_k)[-top_k:]  # unordered top-k, O(n)
        ranked = top[np.argsort(probabilities[top])[::-1]]
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
            runtime=self.runtime.name,
        )

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
