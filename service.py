"""The classify Bento: MobileNetV2 (ImageNet, 224x224) behind BentoML adaptive batching.

`POST /classify` reads and decodes a stored image off the event loop. With batching on, the
decoded images of concurrent requests meet in BentoML's adaptive batcher and the model runs
once per batch, up to two batches at once: by default the batcher is driven in-process
(`batcher.py`); with `CLASSIFY_BATCHER=routes`, /classify awaits `predict_batch` or
`predict_batch_2` in turn, two identical `batchable` BentoML APIs reached through BentoML's
self-call client, pixels travelling as raw bytes (base64 in JSON). With batching off, decode
and model run per request on a small pool of model threads, fed straight from the reading
thread. The model runs on ONNX Runtime (default), TensorFlow or OpenVINO (FP32, or INT8 or BF16
as opt-ins; see `runtimes.py`); whether batching pays depends on the runtime
(`CLASSIFY_BATCHING`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

import batcher
from common.auth import BearerAuth, internal_headers
from common.config import observability_config, settings
from common.docs import DocsAlias
from common.errors import ServiceError, error_response
from common.http_guards import ErrorShape, JsonOnly
from common.images import MODEL_SIZE, set_pixel_limit, to_model_pixels
from common.memory import release_large_buffers_promptly
from common.schemas import ClassifyRequest, ClassifyResponse, Prediction
from common.shedding import LoadShedder
from common.storage import storage_from_settings
from common.threads import name_this_thread, name_thread, thread_ids
from runtimes import DEFAULT_RUNTIME, NUM_CLASSES, class_names, load_runtime

MODEL_TAG = os.environ.get("CLASSIFY_MODEL", "mobilenet_v2:latest")
RUNTIME = os.environ.get("CLASSIFY_RUNTIME", DEFAULT_RUNTIME)
# Whether requests meet in the adaptive batcher. "auto" follows benchmarks/results.md on
# 2 cores: TensorFlow serves more with batches than without, ONNX Runtime and OpenVINO do not
# (README, "How classify batches").
_BATCHING_CHOICES = {"on": True, "off": False, "auto": RUNTIME == "tensorflow"}
_batching = os.environ.get("CLASSIFY_BATCHING", "auto").lower()
if _batching not in _BATCHING_CHOICES:
    raise ValueError(f"CLASSIFY_BATCHING must be on, off or auto, not {_batching!r}")
BATCHING = _BATCHING_CHOICES[_batching]
# How /classify reaches the batcher: "in-process" drives BentoML's batching engine directly
# (batcher.py: TensorFlow at concurrency 32 on 2 cores, paired runs: 103-112 vs 86-90 req/s,
# the event loop 0.9-1.5 vs 4.2-4.6 core-ms per request); "routes" goes through the public
# `batchable` APIs over BentoML's self-call HTTP client. The first falls back to the second if
# a BentoML release moved the engine.
BATCHER = os.environ.get("CLASSIFY_BATCHER", "in-process")
if BATCHER not in ("in-process", "routes"):
    raise ValueError(f"CLASSIFY_BATCHER must be in-process or routes, not {BATCHER!r}")
if BATCHER == "in-process" and not batcher.available():
    logging.getLogger(__name__).warning(
        "this BentoML has no CorkDispatcher where batcher.py looks: batching through routes"
    )
    BATCHER = "routes"
# Largest batch. Small batches keep a single-threaded call's activations in the CPU's caches:
# TensorFlow on 2 cores served ~25% more with batches of up to 2 than of up to 32, in two
# thirds of the memory; ONNX Runtime and OpenVINO the same either way, in less memory
# (measured: README, "How classify batches"; benchmarks/analysis.md).
MAX_BATCH_SIZE = int(os.environ.get("CLASSIFY_MAX_BATCH_SIZE", "2"))
if MAX_BATCH_SIZE < 2:
    raise ValueError(
        f"CLASSIFY_MAX_BATCH_SIZE must be 2 or more, not {MAX_BATCH_SIZE} "
        "(CLASSIFY_BATCHING=off serves one image per call)"
    )
# The batcher answers 503 to a request it predicts will wait longer than this; small values
# shed most requests under load (see README), so it is sized well above a full batch's time.
MAX_LATENCY_MS = int(os.environ.get("CLASSIFY_MAX_LATENCY_MS", "10000"))
_CORES = os.cpu_count() or 1
# Batches that may run at once (1 or 2): while one batch runs, the next gathers and its model
# call keeps a core busy. In-process, the batcher's semaphore admits this many; through routes,
# BentoML runs one batch at a time per batchable route, so `predict_batch_2`, a second
# identical route, is the second stream. With TensorFlow on 2 cores (routes), two
# single-threaded streams served 12-56% more than one two-thread stream in five paired runs at
# concurrency 32 (benchmarks/analysis.md).
BATCH_STREAMS = int(os.environ.get("CLASSIFY_BATCH_STREAMS", "2" if _CORES > 1 else "1"))
if BATCH_STREAMS not in (1, 2):
    raise ValueError(f"CLASSIFY_BATCH_STREAMS must be 1 or 2, not {BATCH_STREAMS}")
# Threads inside one model call (intra-op); 0 = the runtime's choice (adaptive for ONNX Runtime,
# THROUGHPUT streams for OpenVINO). TensorFlow shares one intra-op pool between overlapping calls,
# and its per-op barriers stall when a batch stream's threads compete for the same cores: give
# each batch stream its share of the cores.
_tf_stream_threads = max(1, _CORES // BATCH_STREAMS) if RUNTIME == "tensorflow" else 0
MODEL_THREADS = (
    int(os.environ.get("CLASSIFY_MODEL_THREADS", "0"))
    or (_tf_stream_threads if BATCHING else 0)
    or None
)
# Model calls that may run at once. Unbatched: two per core, each runtime splitting the cores
# between overlapping calls (runtimes.py), so that a core stays busy while another call waits
# for the GIL to hand back its result (measured on 2 cores, ONNX Runtime at concurrency 32:
# ~160 vs ~149 req/s with one per core; TensorFlow ~80-90 vs ~55 with one call at a time).
# OpenVINO: four per core, so that each one-core stream always has a request queued while the
# calling threads decode and hand answers back (INT8 at concurrency 32, paired runs on 2 cores:
# 285-373 vs 232-275 req/s with two per core; 16 calls no better than 8; ONNX Runtime: no gain).
# Batched: one call per batch stream.
_CALLS_PER_CORE = 4 if RUNTIME.startswith("openvino") else 2
CONCURRENT_CALLS = int(
    os.environ.get(
        "CLASSIFY_CONCURRENT_CALLS", str(BATCH_STREAMS if BATCHING else _CALLS_PER_CORE * _CORES)
    )
)
BATCH_ROUTES = ("predict_batch", "predict_batch_2")[:BATCH_STREAMS]
# the batchable routes' settings (one batch at a time each, see BATCH_STREAMS)
_BATCH_API = {
    "batchable": True,
    "batch_dim": 0,
    "max_batch_size": MAX_BATCH_SIZE,
    "max_latency_ms": MAX_LATENCY_MS,
}
# Storage reads wait on the network with GCS; this many may wait at once (more queue).
READ_THREADS = 32
PIXEL_BYTES = MODEL_SIZE * MODEL_SIZE * 3

# CPU time of the calling thread in the two expensive steps, so that everything else the server
# spends per request (HTTP, routing, validation, hand-offs) can be told apart from them. The
# runtime's own intra-op threads are not in these counters; they carry the runtime's name at the
# OS level (common/threads.py), which is how the benchmark counts them as model work.
MODEL_CPU = bentoml.metrics.Counter(
    name="classify_model_cpu_seconds",
    documentation="CPU seconds of the threads calling the model (intra-op helpers excluded)",
)
DECODE_CPU = bentoml.metrics.Counter(
    name="classify_decode_cpu_seconds",
    documentation="CPU seconds spent decoding and resizing stored images (reading excluded)",
)


class ModelInput(BaseModel):
    """One 224x224 RGB image as raw uint8 bytes (HWC), base64 in JSON."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    pixels: bytes = Field(min_length=PIXEL_BYTES, max_length=PIXEL_BYTES)


class ModelOutput(BaseModel):
    """Softmax over the 1000 ImageNet classes as little-endian float32 bytes, base64 in JSON."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    probabilities: bytes = Field(min_length=NUM_CLASSES * 4, max_length=NUM_CLASSES * 4)


def _named_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads carry `name` at the OS level too (per-thread CPU)."""
    return ThreadPoolExecutor(
        threads, thread_name_prefix=name, initializer=name_this_thread, initargs=(name,)
    )


@bentoml.service(
    name="classify",
    workers=1,
    threads=CONCURRENT_CALLS,
    traffic={"timeout": 60},
    # BentoML 1.4.40 recycles its inter-service HTTP session every 100 calls while calls are
    # in flight (sporadic 500s under load, upstream #5540/#5544); effectively disable that.
    runner_connection={"max_requests": 1_000_000_000, "max_age": 1e9},
    labels={"owner": "image-services", "stage": "classify"},
    **observability_config(settings()),
)
class Classify:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.settings = settings()
        release_large_buffers_promptly()
        set_pixel_limit(self.settings.max_image_pixels)
        self.storage = storage_from_settings(self.settings)
        self.decode_budget = self.settings.decode_budget()
        stored_model = self.model_ref
        self.model_name = str(stored_model.tag)
        self.labels = class_names(Path(stored_model.path))
        threads_before = thread_ids()
        self.runtime = load_runtime(RUNTIME, Path(stored_model.path), MODEL_THREADS)
        self.runtime.predict(np.zeros((1, MODEL_SIZE, MODEL_SIZE, 3), np.uint8))  # warm / trace
        for tid in thread_ids() - threads_before:  # the runtime's own pools (intra-op etc.)
            name_thread(tid, self.runtime.name)
        self._warmed_through_api = False
        self._self_client_authorized = False
        # model calls: unbatched ones, and the in-process batcher's batches (through routes,
        # BentoML runs the batches on its own threads)
        self._model_threads = _named_pool(CONCURRENT_CALLS, "classify-model")
        self._read_threads = _named_pool(READ_THREADS, "classify-read")
        self._next_batch_route = itertools.cycle(BATCH_ROUTES)
        self._batcher: batcher.InProcessBatcher | None = None

    async def __is_ready__(self) -> bool:
        """Ready once an image has gone through the batcher (each batch route in turn)."""
        if not self._warmed_through_api:
            for _ in range(BATCH_STREAMS):  # each batch stream (route) in turn
                await self._infer(np.zeros((MODEL_SIZE, MODEL_SIZE, 3), np.uint8))
            self._warmed_through_api = True
        return True

    @bentoml.api(**_BATCH_API)
    def predict_batch(self, images: list[ModelInput]) -> list[ModelOutput]:
        """Run MobileNetV2 once on a batch of 224x224 RGB images (internal; used by /classify)."""
        return self._run_batch(images)

    @bentoml.api(**_BATCH_API)
    def predict_batch_2(self, images: list[ModelInput]) -> list[ModelOutput]:
        """The second batch stream, the same as `predict_batch` (internal; used by /classify)."""
        return self._run_batch(images)

    def _run_batch(self, images: list[ModelInput]) -> list[ModelOutput]:
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

    @bentoml.api(route="/classify", input_spec=ClassifyRequest, output_spec=ClassifyResponse)
    async def classify(self, gcs_path: str, top_k: int = 5) -> ClassifyResponse | JSONResponse:
        """Classify a stored image with MobileNetV2 and return the top class and the top-k."""
        try:
            if BATCHING:
                read = self._read_threads.submit(self._read_and_decode, gcs_path)
                probabilities = await self._infer(await asyncio.wrap_future(read))
            else:
                answer: Future[np.ndarray] = Future()
                self._read_threads.submit(self._read_then_queue, gcs_path, answer)
                probabilities = await asyncio.wrap_future(answer)
        except ServiceError as exc:
            return error_response(exc)
        return self._answer(probabilities, top_k)

    def _read_then_queue(self, gcs_path: str, answer: Future[np.ndarray]) -> None:
        """Read in an I/O thread, then queue decode + model on the model threads from here.

        The event loop (busy with HTTP) sees one hand-off per request, the answer: when each
        step went back through it, the cores sat ~15% idle under load. A request whose client
        left before its turn is dropped here (asyncio cancelled `answer`).
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

    def _read_and_decode(self, gcs_path: str) -> np.ndarray:
        return self._decode(self._read(gcs_path))

    def _read(self, gcs_path: str) -> bytes:
        return self.storage.read(gcs_path, self.settings.max_upload_bytes)

    def _decode(self, data: bytes) -> np.ndarray:
        started = time.thread_time()
        try:
            return to_model_pixels(
                data, self.settings.max_image_pixels, self.settings.resize_mode, self.decode_budget
            )
        finally:
            DECODE_CPU.inc(time.thread_time() - started)

    def _predict(self, pixels: np.ndarray) -> np.ndarray:
        started = time.thread_time()
        try:
            return self.runtime.predict(pixels)
        finally:
            MODEL_CPU.inc(time.thread_time() - started)

    async def _infer(self, pixels: np.ndarray) -> np.ndarray:
        """Softmax for one image: through the batcher, or straight to a model thread."""
        if not BATCHING:
            return await asyncio.wrap_future(
                self._model_threads.submit(lambda: self._predict(pixels[np.newaxis])[0])
            )
        if BATCHER == "in-process":
            if self._batcher is None:  # created in the event loop, which it binds to
                self._batcher = batcher.InProcessBatcher(
                    self._run_batch_on_model_threads, MAX_BATCH_SIZE, MAX_LATENCY_MS, BATCH_STREAMS
                )
            return await self._batcher(pixels)
        route = getattr(self._self_client(), next(self._next_batch_route))  # round robin
        (output,) = await route([ModelInput(pixels=pixels.tobytes())])
        if isinstance(output, dict):  # the self-call client may hand back plain JSON
            output = ModelOutput.model_validate(output)
        return np.frombuffer(output.probabilities, dtype="<f4")

    async def _run_batch_on_model_threads(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One batch of decoded images through the model, on a model thread (in-process batcher)."""
        probabilities = self._model_threads.submit(lambda: self._predict(np.stack(images)))
        return list(await asyncio.wrap_future(probabilities))

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


Classify.add_asgi_middleware(DocsAlias)
Classify.add_asgi_middleware(ErrorShape)
Classify.add_asgi_middleware(BearerAuth, settings=settings())
Classify.add_asgi_middleware(LoadShedder, max_in_flight=settings().max_in_flight)
Classify.add_asgi_middleware(JsonOnly, paths={"/classify", "/predict_batch", "/predict_batch_2"})
