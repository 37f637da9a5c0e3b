"""How classify runs the model for concurrent requests, chosen once at start: one object with
one call, `await infer(pixels)`, one decoded image in, its softmax out.

- `Batched`: the images of concurrent requests meet in BentoML's adaptive batcher
  (`batcher.py`) and the model runs once per batch.
- `Direct` (`CLASSIFY_BATCHING=off`): each image gets a model call of its own, on one of a
  fixed number of model threads.
Which one a runtime gets by default is measured (docs/performance.md, batching).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from classify.batcher import InProcessBatcher, require_dispatcher
from classify.model import Classifier
from classify.settings import ClassifySettings
from common.schemas import MODEL_SIZE
from common.threads import named_pool, run_in

# A BentoML without its batcher stops classify at start, not at its first batched request.
require_dispatcher()


class Inference(Protocol):
    async def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """One (224, 224, 3) uint8 image's softmax, through the model path requests take."""
        ...


class Direct:
    """One model call per image, at most `calls` at once."""

    def __init__(self, classifier: Classifier, calls: int) -> None:
        self._predict = classifier.predict
        self._threads = named_pool(calls, "classify-model")

    async def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return await run_in(self._threads, self._one, pixels)

    def _one(self, pixels: np.ndarray) -> np.ndarray:
        return self._predict(pixels[np.newaxis])[0]


class Batched:
    """Concurrent images share model calls: BentoML's adaptive batcher forms the batches, and
    `streams` of them may run at once (one gathers while another runs)."""

    def __init__(self, classifier: Classifier, settings: ClassifySettings) -> None:
        self._predict = classifier.predict
        self._threads = named_pool(settings.concurrent_calls, "classify-model")
        self._limits = (
            settings.classify_max_batch_size,
            settings.classify_max_latency_ms,
            settings.batch_streams,
        )
        self._batcher: InProcessBatcher | None = None

    async def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if self._batcher is None:  # created in the event loop, which it binds to
            self._batcher = InProcessBatcher(self._run_batch, *self._limits)
        return await self._batcher(pixels)

    async def _run_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        probabilities = self._threads.submit(lambda: self._predict(np.stack(images)))
        return list(await asyncio.wrap_future(probabilities))


def inference_for(classifier: Classifier, settings: ClassifySettings) -> Inference:
    """The strategy `settings` choose (`CLASSIFY_BATCHING`, else the runtime's measured default)."""
    if settings.batching:
        return Batched(classifier, settings)
    return Direct(classifier, settings.concurrent_calls)


async def warm(infer: Inference) -> None:
    """One image through the path requests take (the batcher too), before the service is ready."""
    await infer(np.zeros((MODEL_SIZE, MODEL_SIZE, 3), np.uint8))
