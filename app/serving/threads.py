"""The event loop's default executor (``asyncio.to_thread``) as a fixed pool, every thread started at once.

The request path hands image decoding, preprocessing and heatmap rendering to ``asyncio.to_thread``.
asyncio's own default pool starts its threads lazily, up to min(32, cpus + 4). CPython's
ThreadPoolExecutor counts a thread as idle only after it has handed back its result, so a
request that submits its next step the instant the previous one finished can find no idle
thread and start another one it does not need. Under a steady load the thread count then
creeps up towards the cap for minutes: bounded, but a soak cannot tell it from a leak, and the
count depends on timing. A pool of the same size whose threads all start with the service makes
the count a constant of the machine from the moment the service is ready.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

DEFAULT_WORKERS = min(32, (os.cpu_count() or 1) + 4)  # asyncio's own default pool size
START_TIMEOUT_S = 30.0


async def install_default_executor(workers: int = DEFAULT_WORKERS, prefix: str = "scorecam-io") -> ThreadPoolExecutor:
    """Make the running loop's default executor a pool of ``workers`` threads, all started now.

    No task can finish before all ``workers`` tasks wait at the barrier, so each submission
    finds every started thread busy and starts a new one. The loop owns the pool from then on:
    ``asyncio.run`` (uvicorn's runner) shuts it down when the loop ends.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix)
    barrier = threading.Barrier(workers, timeout=START_TIMEOUT_S)
    await asyncio.gather(*(asyncio.wrap_future(executor.submit(barrier.wait)) for _ in range(workers)))
    asyncio.get_running_loop().set_default_executor(executor)
    return executor
