"""A deadline on a whole GCS download, not just on each socket read."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress


class ReadDeadline:
    """Cuts a storage response's connection when the read that asked for it runs out of time.

    The client's timeout bounds each socket read, not the whole download: a server that sends
    a byte now and then would hold a reading thread for good. A response hook (requests calls
    it before the body is read) registers the response with the current thread's deadline; one
    watchdog thread per process cuts what is overdue (the socket is shut down, the blocked
    read fails, and the request answers 503), so a read starts no thread of its own.
    """

    TICK_S = 0.1  # how late past its deadline a cut may come

    def __init__(self) -> None:
        self._local = threading.local()
        self._watched: dict[int, tuple[float, object]] = {}  # id(response) -> (deadline, it)
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None

    @contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        self._local.deadline = time.monotonic() + seconds
        self._local.watched = []
        try:
            yield
        finally:
            with self._lock:
                for key in self._local.watched:
                    self._watched.pop(key, None)
            self._local.deadline = None

    def watch(self, response, *args: object, **kwargs: object):  # a requests response hook
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None:
            with self._lock:
                self._watched[id(response)] = (deadline, response)
                if self._watchdog is None:
                    self._watchdog = threading.Thread(
                        target=self._cut_overdue, name="storage-deadline", daemon=True
                    )
                    self._watchdog.start()
            self._local.watched.append(id(response))
        return response

    def _cut_overdue(self) -> None:
        while True:
            time.sleep(self.TICK_S)
            now = time.monotonic()
            with self._lock:
                overdue = [key for key, (deadline, _) in self._watched.items() if deadline <= now]
                responses = [self._watched.pop(key)[1] for key in overdue]
            for response in responses:
                _cut(response)


def _cut(response) -> None:
    """Shut the response's connection down: a read blocked on it returns at once.

    Through a duplicate of the socket's descriptor (urllib3 exposes the descriptor, not the
    socket object): shutting a duplicate down shuts the connection down for both.
    """
    with suppress(OSError, ValueError):
        if response.raw.closed:  # read to the end meanwhile: nothing to cut
            return
        with socket.fromfd(response.raw.fileno(), socket.AF_INET, socket.SOCK_STREAM) as dup:
            dup.shutdown(socket.SHUT_RDWR)
