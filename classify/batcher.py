"""BentoML's adaptive batcher, driven in-process by /classify.

A `@bentoml.api(batchable=True)` method runs its batches through BentoML's `CorkDispatcher`:
the adaptive batching algorithm, which learns how long a batch takes and holds requests back
only while waiting for more pays. Another API of the same service could reach that method only
through BentoML's self-call HTTP client, one more request per image through the whole server
chain (its cost: benchmarks/decisions.md, D5). This module drives the same dispatcher class
straight from /classify, and lets it run `streams` batches at once (the dispatcher's own
semaphore) so that one batch gathers while another runs.

`CorkDispatcher` lives in `bentoml._internal`, so pyproject pins BentoML, the tests run this
path, and a BentoML without the class stops the service at start (`require_dispatcher`)
instead of serving without batching.
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
from common.http.shedding import RETRY_AFTER_S

BATCH_SIZE = bentoml.metrics.Histogram(
    name="classify_batch_size",
    documentation="Images per model call formed by the in-process adaptive batcher",
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
)


class DispatcherMissing(RuntimeError):
    """This BentoML has no `CorkDispatcher` where the batcher looks for it."""


def require_dispatcher() -> None:
    """Stop the service at start if this BentoML moved its adaptive batcher."""
    if CorkDispatcher is None:
        raise DispatcherMissing(
            f"BentoML {bentoml.__version__} has no CorkDispatcher in "
            "bentoml._internal.marshal.dispatcher, which classify's adaptive batcher drives: "
            "install the BentoML version pyproject.toml pins"
        )


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
        require_dispatcher()
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
