"""How many inputs one forward may take after running out of memory: a cap per (precision, kind).

The tuned batch size is measured once, on bf16 Score-CAM batches; the forwards that share the
device differ in what one input costs (an fp32 forward keeps twice bf16's activations, a head
forward only the layers after the target layer). So an out-of-memory halves the cap of the
forwards that failed and no other: the key is (precision, kind of forward). A cap is not
forever either: the memory may have been taken by a passing peak (other jobs' activations, the
allocator's fragments), so after ``regrow_after`` clean batches at a cap it is doubled, until it
is back at the tuned size; a doubling that runs out of memory again doubles the clean batches the
next one waits for (at most ``MAX_REGROW_AFTER``), so a cap that really is the limit costs one
failed forward every few hundred batches. Caps live in the process: a restarted worker starts at
the tuned size.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

MASKED_FORWARDS = "masked"  # Score-CAM's masked images through the whole network
METRIC_FORWARDS = "metrics"  # deletion/insertion images (faithfulness metrics) through the whole network
PREDICTIONS = "predictions"  # plain images through the whole network
HEAD_FORWARDS = "heads"  # Recipro-CAM's masked feature maps through the head after the layer
FORWARD_KINDS: tuple[str, ...] = (MASKED_FORWARDS, METRIC_FORWARDS, PREDICTIONS, HEAD_FORWARDS)

REGROW_AFTER = 32  # clean batches at a halved cap before it is doubled
MAX_REGROW_AFTER = 1024  # the longest wait after doublings that kept running out of memory

CapKey = tuple[str, str]  # (precision, kind of forward)


@dataclass
class _Cap:
    size: int
    clean: int = 0  # batches run at ``size`` without running out of memory since it was set


class BatchCaps:
    """The halved caps of one model's forwards, by (precision, kind); thread-safe.

    Args:
        regrow_after: clean batches at a halved cap before it is doubled.
    """

    def __init__(self, regrow_after: int = REGROW_AFTER) -> None:
        self.regrow_after = regrow_after
        self._caps: dict[CapKey, _Cap] = {}
        self._patience: dict[CapKey, int] = {}  # clean batches the next doubling of a key waits for
        self._regrown: set[CapKey] = set()  # keys whose last change was a doubling
        self._lock = threading.Lock()

    def limit(self, key: CapKey, tuned: int) -> int:
        """Inputs per forward for ``key``: the tuned size, or less after an out-of-memory."""
        with self._lock:
            cap = self._caps.get(key)
        return tuned if cap is None else min(cap.size, tuned)

    def halve(self, key: CapKey, failed: int) -> int:
        """A forward of ``failed`` inputs ran out of memory: the key's cap becomes half of it."""
        with self._lock:
            if key in self._regrown:  # the doubling did not fit: wait twice as long before the next one
                self._patience[key] = min(MAX_REGROW_AFTER, 2 * self._patience.get(key, self.regrow_after))
                self._regrown.discard(key)
            cap = self._caps.get(key)
            size = max(1, failed // 2) if cap is None else max(1, min(cap.size, failed // 2))
            self._caps[key] = _Cap(size)
            return size

    def clean(self, key: CapKey, largest: int, tuned: int) -> int | None:
        """A batch ran without running out of memory, its largest forward ``largest`` inputs: the
        new cap when this one doubled it (None: unchanged, or no cap). Forwards smaller than the
        cap (a tail) prove nothing about it and do not count."""
        with self._lock:
            cap = self._caps.get(key)
            if cap is None or largest < cap.size:
                return None
            cap.clean += 1
            if cap.clean < self._patience.get(key, self.regrow_after):
                return None
            self._regrown.add(key)
            if 2 * cap.size >= tuned:
                del self._caps[key]
                return tuned
            self._caps[key] = _Cap(2 * cap.size)
            return 2 * cap.size

    def halved(self) -> dict[CapKey, int]:
        """The caps below the tuned size now (for logs and tests)."""
        with self._lock:
            return {key: cap.size for key, cap in self._caps.items()}
