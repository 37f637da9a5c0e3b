"""OS-visible thread names, so that per-thread CPU (`top -H`, `/proc/<pid>/task/*/comm`) can
be told apart: Python 3.11 leaves every thread named after the process, and the benchmark
splits a server's CPU by thread name (model, decode, HTTP).
"""

from __future__ import annotations

import os
import threading

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


def name_this_thread(name: str) -> None:
    """For `ThreadPoolExecutor(initializer=name_this_thread, initargs=(name,))`."""
    name_thread(threading.get_native_id(), name)
