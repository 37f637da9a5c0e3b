"""How long each stage of a request takes, as Prometheus histograms on `/metrics`.

What an operator watches on Cloud Run to tell where time goes when latency rises: storage reads
(classify), image decoding, the model call (one per batch), storage writes (preprocess). The
benchmarks read the same series.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import bentoml

from common import tracing

# From a 224 px BMP's decode (~0.1 ms) to a slow storage read near its timeout (10 s).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

STAGE_SECONDS = bentoml.metrics.Histogram(
    name="stage_duration_seconds",
    documentation="Seconds spent in each stage of a request: read, decode, model, write",
    labelnames=["stage"],
    buckets=BUCKETS,
)


@contextmanager
def timed(stage: str, attributes: Mapping[str, int | str] | None = None) -> Iterator[None]:
    """Observe the block's wall time under `stage`, whether it succeeds or fails; with tracing
    on, the block is also the stage's span in the photo's trace."""
    started = time.perf_counter()
    try:
        if tracing.enabled():
            with tracing.stage_span(stage, attributes):
                yield
        else:
            yield
    finally:
        STAGE_SECONDS.labels(stage=stage).observe(time.perf_counter() - started)
