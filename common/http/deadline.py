"""Each request's deadline, so that work still queued when its request has timed out is never
started (the client has had BentoML's 504 by then; a decode would only burn a core for nobody).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# BentoML's `traffic.timeout` for both services: past it the client gets a 504.
REQUEST_TIMEOUT_S = 60

_deadline: ContextVar[float | None] = ContextVar("request_deadline", default=None)


def remaining_s() -> float | None:
    """Seconds left to the current request, or None outside a request."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


@contextmanager
def request_deadline(timeout_s: float = REQUEST_TIMEOUT_S) -> Iterator[None]:
    """The deadline of the request running inside the block, for everything it runs: its
    worker threads too (anyio copies the context into them; `contextvars.copy_context` for the
    services' own pools). Set where requests are admitted (common/http/shedding.py)."""
    token = _deadline.set(time.monotonic() + timeout_s)
    try:
        yield
    finally:
        _deadline.reset(token)
