"""The default executor: all its threads start at once and a burst of to_thread calls adds none."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.serving.threads import install_default_executor


def pool_threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def test_every_thread_starts_with_the_pool_and_a_wider_burst_starts_none() -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        await install_default_executor(workers=3, prefix="test-io")
        started = pool_threads("test-io")
        ran_on = await asyncio.gather(*(asyncio.to_thread(lambda: threading.current_thread().name) for _ in range(40)))
        return started, list(ran_on), pool_threads("test-io")

    started, ran_on, after = asyncio.run(scenario())  # asyncio.run shuts the pool down at the end
    assert len(started) == 3
    assert set(ran_on) <= set(started)
    assert sorted(after) == sorted(started)


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(install_default_executor(workers=0))
