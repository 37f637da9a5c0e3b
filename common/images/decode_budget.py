"""Admission of image decodes against a pixel budget, so memory is bounded by design.

A decode's memory grows with the pixels it produces: up to `BYTES_PER_PIXEL` at its peak (the
codec's own buffers, the decoded image, its RGB conversion; WebP's decoder is the hungriest).
Requests whose decode would take the budget over wait for others to finish, briefly, then get
503 + Retry-After: an instance answers "try again" instead of being killed for running out of
memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from common.errors import Overloaded
from common.http.deadline import remaining_s

# Peak bytes per decoded pixel, the sizing rule's factor (docs/deploy.md, "Memory"; the worst
# case is held to it by tests/deploy/test_memory.py).
BYTES_PER_PIXEL = 16
RETRY_AFTER_S = 2


class DecodeBudget:
    """At most `pixels` decoded pixels in memory at once across the process's threads."""

    def __init__(self, pixels: int, wait_s: float) -> None:
        self.pixels = pixels
        self.wait_s = wait_s
        self.in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def admit(self, cost: int) -> Iterator[None]:
        """Hold `cost` pixels of the budget while the block runs (one image over it runs alone)."""
        cost = min(cost, self.pixels)
        left = remaining_s()
        if left is not None and left <= 0:  # its request has timed out: never start the work
            raise Overloaded(
                "the request ran out of time before its image was decoded",
                retry_after_s=RETRY_AFTER_S,
            )
        wait_s = self.wait_s if left is None else min(self.wait_s, left)
        with self._changed:
            if not self._changed.wait_for(
                lambda: self.in_use + cost <= self.pixels, timeout=wait_s
            ):
                raise Overloaded(
                    "too many large images are being decoded at once; retry shortly",
                    retry_after_s=RETRY_AFTER_S,
                )
            self.in_use += cost
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= cost
                self._changed.notify_all()
