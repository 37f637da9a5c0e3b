"""BentoML's adaptive batcher, called in-process by /classify instead of through HTTP.

A `@bentoml.api(batchable=True)` method runs its batches through BentoML's `CorkDispatcher`:
the adaptive batching algorithm, which learns how long a batch takes and holds requests back
only while waiting for more pays. Another API of the same service reaches a batchable method
only through BentoML's self-call client, though: one more HTTP request per image through the
whole server chain: the event loop spent 4.2-4.9 core-ms per request (0.9-1.5 in-process),
and TensorFlow served 0.57-0.76 of its raw batched speed (benchmarks/analysis.md). This module
drives the same dispatcher class straight from /classify, and lets it run `streams` batches
at once (the dispatcher's own semaphore) so that one batch gathers while another runs.

`CorkDispatcher` lives in `bentoml._internal`: pyproject pins BentoML (1.4.40), the tests run
this path, and if an upgrade moves the class, `available()` is false and the service falls
back to its public batchable routes (`CLASSIFY_BATCHER=routes`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import bentoml

try:
    from bentoml._internal.marshal.dispatcher import CorkDispatcher, NonBlockSema
except ImportError:  # a BentoML release that moved its batcher
    CorkDispatcher = NonBlockSema = None

from common.errors import Overloaded
from common.shedding import RETRY_AFTER_S

BATCH_SIZE = bentoml.metrics.Histogram(
    name="classify_batch_size",
    documentation="Images per model call formed by the in-process adaptive batcher",
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
)


def available() -> bool:
    """Whether this BentoML still has the dispatcher where this module looks for it."""
    return CorkDispatcher is not None


class TooLate(Overloaded):
    """The batcher predicted this request would wait longer than its latency budget."""


class InProcessBatcher:
    """Batches single items from concurrent callers and runs `run_batch` on each batch.

    Created lazily inside the event loop (the dispatcher binds to the running loop).
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], Awaitable[Sequence[Any]]],
        max_batch_size: int,
        max_latency_ms: int,
        streams: int,
    ) -> None:
        if not available():
            raise RuntimeError("this BentoML has no CorkDispatcher: use CLASSIFY_BATCHER=routes")
        self._run_batch = run_batch
        dispatcher = CorkDispatcher(
            max_latency_ms,
            max_batch_size,
            shared_sema=NonBlockSema(streams),  # batches that may run at once
            fallback=self._refuse,
            get_batch_size=lambda _item: 1,
        )
        self._dispatch = dispatcher(self._measured)

    async def __call__(self, item: Any) -> Any:
        """The batch's answer for `item`; 503 (`TooLate`) if the batcher sheds it."""
        return await self._dispatch(item)

    async def _measured(self, items: Sequence[Any]) -> Sequence[Any]:
        BATCH_SIZE.observe(len(items))
        return await self._run_batch(items)

    @staticmethod
    def _refuse() -> Any:
        """Called by the dispatcher when a queued item is cancelled.

        Either the batcher dropped it (predicted too late: 503, as BentoML's routes answer),
        or the caller's own task is being cancelled (client gone): let that cancellation go on.
        """
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        raise TooLate(
            "the model is busy: this request would wait longer than the batcher allows; "
            "retry shortly",
            retry_after_s=RETRY_AFTER_S,
        )
