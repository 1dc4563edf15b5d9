"""glibc allocator settings for the server and the CLI (never set by the library itself).

Each masked batch allocates the same large activation tensors; by default glibc maps the large
ones fresh (``mmap``) and hands freed memory back to the kernel (trim), so the next batch faults
every page in again: about 1.08 million minor page faults (≈ 4 GB zeroed) per fp32 explanation of
a photo, twice that from a worker thread (../shared/PERFORMANCE-NOTES.md). Raising the mmap and
trim thresholds keeps freed tensors in the heap for the next batch. Measured here (2 cores,
AVX512-BF16, 200 masks, fp32, batch 8): 475,000 → 0 page faults and 2.7 → 1.6 s per explanation
from a worker thread. The cost: the heap keeps its peak size instead of shrinking.

``GLIBC_TUNABLES`` with ``glibc.malloc.*`` entries wins: then nothing is changed here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# mallopt(3) parameters and the values set (mallopt takes a C int: at most 2**31 - 1).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, 1 << 30),  # tensors up to 1 GiB come from the heap
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, 2**31 - 1),  # keep up to 2 GiB of freed heap
    ("M_TOP_PAD", M_TOP_PAD, 256 << 20),  # grow the heap in 256 MiB steps
)


def tune_malloc() -> bool:
    """Set the thresholds above via ``mallopt``; False where glibc is absent or the user chose."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        log.debug("GLIBC_TUNABLES sets malloc options: allocator left as configured")
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc (musl, macOS): nothing to tune this way
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = all(mallopt(param, value) == 1 for _, param, value in SETTINGS)
    log.debug("malloc options %s: %s", "set" if done else "partly refused", ", ".join(f"{n}={v}" for n, _, v in SETTINGS))
    return done
