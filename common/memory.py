"""Give freed large image buffers back to the OS at once.

glibc's malloc raises its mmap threshold after large frees (up to 32 MiB), so later image
buffers, which Pillow allocates in blocks of up to 16 MiB, come from per-thread arenas that
keep their peak size: with four decoding threads taking turns, a process held several decodes'
worth of memory it no longer used. A fixed threshold below Pillow's block size keeps those
blocks in their own mappings, unmapped when freed, while the buffers of an ordinary upload (the
body, a reduced-scale decode: a few MiB) are reused from the arenas instead of being mapped,
page-faulted and unmapped each time (benchmarks/decisions.md, D17).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 8 << 20  # below Pillow's 16 MiB image blocks


def release_large_buffers_promptly() -> bool:
    """Fix glibc's mmap threshold; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
