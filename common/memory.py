"""Give freed image buffers back to the OS at once.

glibc's malloc raises its mmap threshold after large frees, so later multi-megabyte image
buffers come from per-thread arenas that keep their peak size: with four decoding threads
taking turns, a process held several decodes' worth of memory it no longer used. A fixed
threshold keeps every allocation of a megabyte or more in its own mapping, unmapped when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 20


def release_large_buffers_promptly() -> bool:
    """Fix glibc's mmap threshold; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
