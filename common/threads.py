"""OS-visible thread names, so that an operator's `top -H` (or `py-spy`, or the benchmark's
per-thread CPU split) tells the service's threads apart: Python 3.11 leaves every thread named
after the process.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
Item = TypeVar("Item")

_TASKS = "/proc/self/task"


def thread_ids() -> set[int]:
    """Native ids of this process's threads (empty where /proc is missing)."""
    try:
        return {int(tid) for tid in os.listdir(_TASKS)}
    except OSError:
        return set()


def name_thread(tid: int, name: str) -> None:
    """Name thread `tid` of this process (the kernel keeps 15 bytes); a no-op off Linux."""
    try:
        with open(f"{_TASKS}/{tid}/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass  # no /proc, or the thread is gone: names are only a diagnostic aid


def _name_this_thread(name: str) -> None:
    name_thread(threading.get_native_id(), name)


def named_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads carry `name` at the OS level too."""
    return ThreadPoolExecutor(
        threads, thread_name_prefix=name, initializer=_name_this_thread, initargs=(name,)
    )


@contextmanager
def name_runtime_threads(name: str) -> Iterator[None]:
    """Name after the runtime every thread started inside the block (its intra-op pools)."""
    before = thread_ids()
    yield
    for tid in thread_ids() - before:
        name_thread(tid, name)


class BoundedSubmitter:
    """Submits to `pool` with at most `limit` submissions unfinished: `submit` waits for a slot,
    so work queued behind slow workers stays bounded, and no future is kept once its work is
    done (the caller waits for the last ones by shutting the pool down). What the work raises
    is logged to `log`, since no one reads its future."""

    def __init__(self, pool: ThreadPoolExecutor, limit: int, log: logging.Logger) -> None:
        self.pool, self.log = pool, log
        self.slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.unfinished = self.peak = 0  # gauges, for tests and debugging

    def submit(self, work: Callable[..., Any], *args: Any) -> None:
        self.slots.acquire()
        with self._lock:
            self.unfinished += 1
            self.peak = max(self.peak, self.unfinished)
        try:
            future = self.pool.submit(work, *args)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)

    def _done(self, future: Future | None) -> None:
        with self._lock:
            self.unfinished -= 1
        self.slots.release()
        if future is not None and not future.cancelled() and future.exception() is not None:
            error = future.exception()
            self.log.error("%s", error, exc_info=error, extra={"code": "internal"})


async def run_in(pool: ThreadPoolExecutor, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` on a thread of `pool`, in the caller's context (a request's deadline)."""
    return await asyncio.wrap_future(pool.submit(contextvars.copy_context().run, work, *args))


def in_window(
    pool: ThreadPoolExecutor,
    work: Callable[[Item], T],
    items: Iterable[Item],
    window: int,
    stop: threading.Event | None = None,
) -> Iterator[Future[T]]:
    """`work(item)` for each item on `pool`, each future yielded as it finishes, with at most
    `window` submitted and unfinished at once: a stop (Ctrl-C, SIGTERM) leaves no queue behind,
    and what the work holds in memory stays bounded. Once `stop` is set, no item starts."""
    pending = iter(items)
    in_flight: set[Future[T]] = set()
    while True:
        while len(in_flight) < window and not (stop and stop.is_set()):
            try:
                in_flight.add(pool.submit(work, next(pending)))
            except StopIteration:
                break
        if not in_flight:
            return
        finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
        yield from finished
