"""Keep freed memory in a worker for its next request, instead of handing it back to the kernel (glibc's malloc).

Every request allocates and frees megabytes: the upload, the decoded photo (3 MB for 1 MP), its
copies and resizes. glibc gives such blocks back to the kernel as soon as they are freed (a block
over its mmap threshold is unmapped; a thread's arena is trimmed once its free top passes the trim
threshold, and a gthread worker serves every request from a thread), so the next request touches
fresh pages and pays a page fault for every 4 KB of them. On the 2-core VM the gateway's benchmark
runs on, that was most of the decoding stage (bench/gateway.py; docs/benchmarks.md): a 3 MB copy
took 8 ms instead of 0.9.

:func:`keep_freed_memory` raises both thresholds once per process (gunicorn.conf.py calls it in each
worker after the fork) and caps the number of arenas, so what a worker keeps stays bounded: up to
``keep_mb`` of free memory per arena, ``ARENAS`` arenas. Elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
# glibc refuses an mmap threshold above half its largest heap (64 MB on 64-bit): blocks from 32 MB up (a whole
# 12 MP photo) are still mapped and unmapped each time; everything smaller is reused.
MMAP_THRESHOLD = 32 << 20
ARENAS = 2  # threads share two arenas: at most 2 x keep_mb of free memory kept per process
DEFAULT_KEEP_MB = 64


def keep_freed_memory(keep_mb: int = DEFAULT_KEEP_MB) -> bool:
    """Keep up to ``keep_mb`` MB of freed memory per malloc arena for reuse (0: leave glibc's defaults). Returns
    whether the settings took."""
    if keep_mb <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not _is_glibc(libc):
        return False
    took = all(
        mallopt(parameter, value)
        for parameter, value in (
            (_M_ARENA_MAX, ARENAS),
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, keep_mb << 20),
        )
    )
    if not took:
        log.warning("malloc: glibc refused a setting; freed memory goes back to the kernel as before")
    return took


def _is_glibc(libc: ctypes.CDLL) -> bool:
    """musl has a mallopt that takes no such parameters: only glibc's (gnu_get_libc_version) is asked."""
    return getattr(libc, "gnu_get_libc_version", None) is not None
