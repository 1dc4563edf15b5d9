"""When to retry, and how long to wait: what the sync and async clients share, free of I/O.

Retried: connect errors, and the answers 429, 502, 503 and 504. Waits: the answer's Retry-After
(seconds or an HTTP date) when it has one, else exponential backoff with full jitter (a uniform
draw in [0, min(max_backoff_s, backoff_s * 2**retry)]), so clients refused together do not come
back together. Bounded three ways: ``max_retries``, ``max_wait_s`` per wait (a longer Retry-After
ends the retries: the error carries ``retry_after_s`` for the caller), ``max_total_s`` in all.

A retry must not run work twice. A GET is always safe to repeat. A POST (predict, explain) is
retried only when it never reached the service (a connect error) or when the service refused it
before any work (429/503 in the service's own error shape). A POST whose connection broke or timed
out after it was sent, or that a proxy answered 502/504, may be running on the server: it is not
retried, as a retried explanation would queue the same masked forwards a second time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from scorecam_client.errors import InvalidOptionsError, is_service_error, retry_after

RETRY_STATUSES = frozenset({429, 502, 503, 504})
REFUSED_STATUSES = frozenset({429, 503})  # with the service's error shape: refused before any work
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # the request never left


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry; ``RetryPolicy(max_retries=0)`` turns retries off.

    ``random`` draws the jitter in [0, 1) (tests pass a constant).
    """

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_wait_s: float = 30.0
    max_total_s: float = 60.0
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_retries", "backoff_s", "max_backoff_s", "max_wait_s", "max_total_s"):
            if getattr(self, name) < 0:
                raise InvalidOptionsError(f"RetryPolicy.{name} must be 0 or more, not {getattr(self, name)}")

    def backoff(self, retry: int) -> float:
        """The wait before retry ``retry`` (0 first) without a Retry-After: full jitter."""
        return self.random() * min(self.max_backoff_s, self.backoff_s * 2.0**retry)

    def start(self, method: str, clock: Callable[[], float] = time.monotonic) -> Attempts:
        """The retry state of one call, its first attempt about to go."""
        return Attempts(self, method.upper(), clock)


def retryable_answer(method: str, response: httpx.Response) -> bool:
    """Whether an error answer (its body loaded) may be retried for ``method``."""
    status = response.status_code
    if status not in RETRY_STATUSES:
        return False
    return method in SAFE_METHODS or (status in REFUSED_STATUSES and is_service_error(response))


def retryable_failure(method: str, error: httpx.RequestError) -> bool:
    """Whether a request that got no answer may be retried for ``method`` (not for a redirect loop
    or an undecodable body: those would fail again)."""
    return isinstance(error, NOT_SENT) or (isinstance(error, httpx.TransportError) and method in SAFE_METHODS)


class Attempts:
    """One call's tries: after each failure, how long to wait before the next, or None to give up."""

    def __init__(self, policy: RetryPolicy, method: str, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.method = method
        self.clock = clock
        self.started = clock()
        self.count = 1  # attempts made, the current one included

    def after_answer(self, response: httpx.Response) -> float | None:
        if not retryable_answer(self.method, response):
            return None
        after = retry_after(response)
        if after is not None and after > self.policy.max_wait_s:
            return None  # the server asks for longer than the policy waits: the caller decides
        return self._next(after)

    def after_failure(self, error: httpx.RequestError) -> float | None:
        return self._next(None) if retryable_failure(self.method, error) else None

    def _next(self, retry_after_s: float | None) -> float | None:
        if self.count > self.policy.max_retries:
            return None
        wait = self.policy.backoff(self.count - 1) if retry_after_s is None else retry_after_s
        wait = min(wait, self.policy.max_wait_s)
        if self.clock() - self.started + wait > self.policy.max_total_s:
            return None
        self.count += 1
        return wait
