"""When to retry: 503s (queue full, service starting) after the server's Retry-After."""

from __future__ import annotations

from dataclasses import dataclass

RETRY_STATUSES = frozenset({503})


@dataclass(frozen=True)
class RetryPolicy:
    """Retry 503s after Retry-After (``default_wait_s`` when absent), each wait capped at ``max_wait_s``.

    The cap keeps a misconfigured server from stalling a caller for minutes.
    """

    max_retries: int = 3
    default_wait_s: float = 1.0
    max_wait_s: float = 30.0

    def wait_s(self, attempt: int, status: int, retry_after_s: float | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up."""
        if status not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        wait = self.default_wait_s if retry_after_s is None else retry_after_s
        return min(max(wait, 0.0), self.max_wait_s)
