"""glibc allocator settings for the server and the CLI (never set by the library itself).

Each masked batch allocates the same large activation tensors; by default glibc maps the large
ones fresh (``mmap``) and hands freed memory back to the kernel (trim), so the next batch faults
every page in again: about 1.08 million minor page faults (≈ 4 GB zeroed) per fp32 explanation of
a photo, twice that from a worker thread (../shared/PERFORMANCE-NOTES.md). Raising the mmap and
trim thresholds keeps freed tensors in the heap for the next batch. Measured here (2 cores,
AVX512-BF16, 200 masks, fp32, batch 8): 475,000 → 0 page faults and 2.7 → 1.6 s per explanation
from a worker thread. The cost: the heap keeps its peak size instead of shrinking.

That trade suits the worker process (and ``scorecam explain``), not the HTTP process: it runs no
masked batch, and a large request (a 40-megapixel image rendered as heatmap, overlay and raw map)
would keep its peak for good. The HTTP process gets ``limit_arenas`` instead (at most
``ARENA_MAX`` glibc arenas, as the container's ``MALLOC_ARENA_MAX=2``: each thread of the thread
pool would otherwise grow an arena of its own) and ``release_free_memory`` after a large request.

``GLIBC_TUNABLES`` with ``glibc.malloc.*`` entries wins (and ``MALLOC_ARENA_MAX`` for the arenas):
then nothing is changed here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

# mallopt(3) parameters and the values set (mallopt takes a C int: at most 2**31 - 1).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 2  # the container's MALLOC_ARENA_MAX
ARENA_MAX_ENV = "MALLOC_ARENA_MAX"
SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, 1 << 30),  # tensors up to 1 GiB come from the heap
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, 2**31 - 1),  # keep up to 2 GiB of freed heap
    ("M_TOP_PAD", M_TOP_PAD, 256 << 20),  # grow the heap in 256 MiB steps
)


def _glibc_function(name: str) -> Any | None:
    """``name`` from the C library when it is glibc's (None on musl, macOS, Windows)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None


def _mallopt() -> Any | None:
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        log.debug("GLIBC_TUNABLES sets malloc options: allocator left as configured")
        return None
    mallopt = _glibc_function("mallopt")
    if mallopt is not None:
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
    return mallopt


def tune_malloc() -> bool:
    """Set the thresholds above via ``mallopt``; False where glibc is absent or the user chose."""
    mallopt = _mallopt()
    if mallopt is None:
        return False  # not glibc (musl, macOS), or GLIBC_TUNABLES chose: nothing to tune this way
    done = all(mallopt(param, value) == 1 for _, param, value in SETTINGS)
    log.debug("malloc options %s: %s", "set" if done else "partly refused", ", ".join(f"{n}={v}" for n, _, v in SETTINGS))
    return done


def limit_arenas(arenas: int = ARENA_MAX) -> bool:
    """At most ``arenas`` glibc arenas in this process, and ``MALLOC_ARENA_MAX`` for the processes it
    starts (the fork server and its workers read it when they start), unless the user set either.

    Why: glibc gives threads up to 8 arenas per core; each keeps the free memory of what its thread
    allocated, so a request rendered in one pool thread leaves its peak in that thread's arena."""
    if ARENA_MAX_ENV in os.environ:
        return False  # glibc read it at this process's start; the children inherit it
    mallopt = _mallopt()
    if mallopt is None:
        return False
    os.environ[ARENA_MAX_ENV] = str(arenas)
    return bool(mallopt(M_ARENA_MAX, arenas) == 1)


def release_free_memory() -> bool:
    """Give the free pages of every glibc arena back to the kernel (``malloc_trim(0)``); False where
    there is no glibc. Costs milliseconds per hundred megabytes freed: call it after large work."""
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    trim(0)
    return True
