"""How classify turns a stored photo into softmax for concurrent requests, chosen once at start:
one object with one call, `await infer(read, decode)`: `read()` fetches the photo's bytes (I/O),
`decode(data)` makes the model's 224x224 pixels (CPU); the answer is that photo's softmax.

- `Direct` (the default where batching does not pay): a reading thread reads, then hands decode
  and the model call to one of a fixed number of model threads; the event loop, busy with HTTP,
  sees one hand-off per request, the answer (benchmarks/decisions.md, D2), and no more photos are
  decoded at once than there are model threads (the memory the deploy is sized by).
- `Batched`: a reading thread reads and decodes; the pixels of concurrent requests meet in
  BentoML's adaptive batcher (`batcher.py`) and the model runs once per batch.
Which one a runtime gets by default is measured (docs/performance.md, batching).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol

import numpy as np

from classify.batcher import InProcessBatcher, batch_labels, require_dispatcher
from classify.model import Classifier
from classify.settings import ClassifySettings
from common import tracing
from common.schemas import MODEL_SIZE
from common.threads import named_pool, run_in

# A BentoML without its batcher stops classify at start, not at its first batched request.
require_dispatcher()
# Storage reads wait on the network with GCS; this many may wait at once (more queue).
READ_THREADS = 32

Read = Callable[[], bytes]
Decode = Callable[[bytes], np.ndarray]


class Inference(Protocol):
    async def __call__(self, read: Read, decode: Decode) -> np.ndarray:
        """The softmax (1000,) of the photo `read` fetches and `decode` decodes."""
        ...


class Direct:
    """One model call per photo, at most `calls` at once."""

    def __init__(self, classifier: Classifier, calls: int) -> None:
        self._predict = classifier.predict
        self._reading = named_pool(READ_THREADS, "classify-read")
        self._model = named_pool(calls, "classify-model")

    async def __call__(self, read: Read, decode: Decode) -> np.ndarray:
        answer: Future[np.ndarray] = Future()
        run = contextvars.copy_context().run  # the request's context (its deadline)
        self._reading.submit(run, self._read_then_predict, read, decode, answer)
        return await asyncio.wrap_future(answer)  # cancelled (client gone): never read

    def _read_then_predict(self, read: Read, decode: Decode, answer: Future[np.ndarray]) -> None:
        if not answer.set_running_or_notify_cancel():
            return
        try:
            data = read()
        except BaseException as exc:
            answer.set_exception(exc)
            return
        run = contextvars.copy_context().run
        self._model.submit(run, self._decode_and_predict, data, decode, answer)

    def _decode_and_predict(self, data: bytes, decode: Decode, answer: Future[np.ndarray]) -> None:
        try:
            answer.set_result(self._predict(decode(data)[np.newaxis])[0])
        except BaseException as exc:
            answer.set_exception(exc)


class Batched:
    """Concurrent photos share model calls: BentoML's adaptive batcher forms the batches, and
    `streams` of them may run at once (one gathers while another runs)."""

    def __init__(self, classifier: Classifier, settings: ClassifySettings) -> None:
        self._predict = classifier.predict
        self._reading = named_pool(READ_THREADS, "classify-read")
        self._model = named_pool(settings.concurrent_calls, "classify-model")
        self._limits = (
            settings.classify_max_batch_size,
            settings.classify_max_latency_ms,
            settings.batch_streams,
        )
        self._batcher: InProcessBatcher | None = None
        self._service_name = settings.runtime.image  # the classify service's name

    async def __call__(self, read: Read, decode: Decode) -> np.ndarray:
        pixels = await run_in(self._reading, lambda: decode(read()))
        if self._batcher is None:  # created in the event loop, which it binds to
            labels = batch_labels(self._service_name, "classify")
            self._batcher = InProcessBatcher(self._run_batch, *self._limits, labels=labels)
        # the photo's own model span: its wait in the batcher and the call of the batch it joined
        with tracing.stage_span("model") as span:
            probabilities, batch_size = await self._batcher(pixels)
            if span is not None:
                span.set_attribute("classify.batch_size", batch_size)
        return probabilities

    async def _run_batch(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        probabilities = self._model.submit(lambda: self._predict(np.stack(images)))
        return [(row, len(images)) for row in await asyncio.wrap_future(probabilities)]


def inference_for(classifier: Classifier, settings: ClassifySettings) -> Inference:
    """The strategy `settings` choose (`CLASSIFY_BATCHING`, else the runtime's measured default)."""
    if settings.batching:
        return Batched(classifier, settings)
    return Direct(classifier, settings.concurrent_calls)


async def warm(infer: Inference) -> None:
    """One photo through the path requests take (the batcher too), before the service is ready."""
    blank = np.zeros((MODEL_SIZE, MODEL_SIZE, 3), np.uint8)
    await infer(lambda: b"", lambda _: blank)
