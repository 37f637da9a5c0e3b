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
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import bentoml

try:
    from bentoml._internal.marshal.dispatcher import CorkDispatcher, NonBlockSema
except ImportError:  # a BentoML release that moved its batcher
    CorkDispatcher = NonBlockSema = None

from common.errors import Overloaded
from common.http.shedding import RETRY_AFTER_S


@functools.cache
def batch_size_histogram(max_batch_size: int):  # -> prometheus_client.Histogram
    """Images per model call, under BentoML's own name, labels and buckets for it
    (`bentoml_service_adaptive_batch_size`: what BentoML's dashboards chart), so that the
    batches /classify forms show where BentoML's own batches would.

    Registered in no registry: BentoML registers the same name itself when its batched route
    (`predict_batch`) is first called, and a second registration would fail. BentoML's
    workers keep metrics in multiprocess files, which /metrics reads by name, so both series
    appear there side by side (`method_name` tells them apart)."""
    import prometheus_client
    from bentoml._internal.utils.metrics import exponential_buckets

    return prometheus_client.Histogram(
        "bentoml_service_adaptive_batch_size",
        "Service adaptive batch size",
        labelnames=BATCH_LABELS,
        buckets=exponential_buckets(1, 2, max_batch_size),
        registry=None,
    )


BATCH_LABELS = ("runner_name", "worker_index", "method_name", "service_version", "service_name")


def batch_labels(service_name: str, method_name: str) -> dict[str, str]:
    """BentoML's labels for the histogram, from the serving process's context."""
    from bentoml._internal.context import server_context

    return {
        "runner_name": service_name,
        "worker_index": str(server_context.worker_index),
        "method_name": method_name,
        "service_version": str(server_context.bento_version),
        "service_name": str(server_context.bento_name),
    }


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
        labels: dict[str, str],
    ) -> None:
        require_dispatcher()
        self._run_batch = run_batch
        self._batch_sizes = batch_size_histogram(max_batch_size).labels(**labels)
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
        self._batch_sizes.observe(len(items))
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
