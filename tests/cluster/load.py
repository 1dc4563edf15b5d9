"""A bounded closed-loop load through the balancer: client threads alternating predictions and explanations.

Each thread uses the Python client (clients/python), so a 503 with Retry-After is retried as a user's
client would; every call's outcome is kept (start, end, what failed) for the tests to judge.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Self

from scorecam_client import RetryPolicy, ScoreCamClient, ScoreCamClientError

RETRY = RetryPolicy(max_retries=8, backoff_s=0.1, max_backoff_s=1.0, max_wait_s=5.0, max_total_s=60.0)


@dataclass(frozen=True)
class Outcome:
    kind: str  # "predict" or "explain"
    started: float  # epoch seconds
    ended: float
    error: ScoreCamClientError | None

    @property
    def ok(self) -> bool:
        return self.error is None


class Load:
    """``threads`` clients, each running at most ``max_calls`` calls until ``stop``."""

    def __init__(self, url: str, image: bytes, threads: int = 3, max_calls: int = 200) -> None:
        self.url, self.image, self.max_calls = url, image, max_calls
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True) for i in range(threads)]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 60.0) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        return self.outcomes

    def wait_calls(self, count: int, timeout_s: float = 60.0) -> None:
        """Until ``count`` calls have finished (a deadline, not a synchronising sleep)."""
        deadline = time.monotonic() + timeout_s
        while len(self.outcomes) < count:
            assert time.monotonic() < deadline, f"only {len(self.outcomes)} of {count} calls finished in {timeout_s} s"
            time.sleep(0.01)

    def _run(self, index: int) -> None:
        with ScoreCamClient(self.url, api_key="", timeout=60, retry=RETRY) as client:
            for call in range(self.max_calls):
                if self._stop.is_set():
                    return
                kind = "explain" if (index + call) % 2 else "predict"
                started, error = time.time(), None
                try:
                    if kind == "explain":
                        client.explain(self.image)
                    else:
                        client.predict(self.image)
                except ScoreCamClientError as failure:
                    error = failure
                with self._lock:
                    self.outcomes.append(Outcome(kind, started, time.time(), error))
