"""Keep freed memory in the process (glibc): no page fault per tensor in a loop of forward passes.

glibc's malloc serves a large block (above ``M_MMAP_THRESHOLD``, 128 KiB at start and raised on the
fly as mapped blocks are freed) with a fresh ``mmap`` and returns it with ``munmap``; the top of a
heap is given back past ``M_TRIM_THRESHOLD``. A forward pass allocates and frees its activations
every time, so, depending on where the process's allocations so far left the thresholds, each pass
may fault its pages in again and have the kernel zero them: then a width-16 ResNet-18 forward of 64
images at 32 px takes about 4,500 minor faults and spends 15% of its time in the kernel
(``python -m bench.page_faults``). Whether a process lands there varies from run to run.

:func:`retain_freed_memory` fixes both thresholds at ``limit`` bytes: blocks up to that size come
from the heap and stay there once freed, for the next pass to reuse. The cost is resident memory:
the process keeps its peak heap instead of returning it. Only glibc has ``mallopt``; elsewhere (musl,
macOS, Windows) this is a no-op that says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger("heist.malloc")

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
DEFAULT_LIMIT = 1 << 30  # 1 GiB: larger blocks still map and unmap (a thread arena's heap is 64 MiB at most)
FALLBACK_LIMIT = 32 << 20  # the largest mmap threshold older glibc accepts on 64-bit


def retain_freed_memory(limit: int = DEFAULT_LIMIT) -> bool:
    """Set glibc's mmap and trim thresholds to ``limit`` bytes. True when both were accepted."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        log.info("malloc tuning skipped: not glibc (%s %s)", platform.system(), platform.libc_ver()[0] or "?")
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    value = min(limit, 2**31 - 1)  # mallopt takes an int
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, value)) or bool(libc.mallopt(M_MMAP_THRESHOLD, FALLBACK_LIMIT))
    ok = bool(libc.mallopt(M_TRIM_THRESHOLD, value)) and ok
    if not ok:
        log.warning("glibc refused mallopt(%d bytes): freed memory goes back to the kernel", limit)
    return ok
