"""The worker's queue on its own: admission by pending forwards, round robin, deadlines."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from app.errors import Cancelled, DeadlineExceeded, QueueFull, ServiceUnavailable
from app.service.scheduler import Scheduler
from app.service.work import WorkItem


def item(loop: asyncio.AbstractEventLoop, kind: str = "scorecam", model: str = "m", cost: int = 10, ttl: float = 60) -> WorkItem:
    return WorkItem(kind=kind, model=model, x=torch.zeros(1), deadline=time.monotonic() + ttl, cost=cost,  # type: ignore[arg-type]
                    loop=loop, future=loop.create_future())


@pytest.fixture
def loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def open_scheduler(**kwargs: int) -> Scheduler:
    scheduler = Scheduler(**{"max_forwards": 100, "max_requests": 10, **kwargs})
    scheduler.open()
    return scheduler


def test_closed_until_opened(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = Scheduler(max_forwards=100, max_requests=10)
    with pytest.raises(ServiceUnavailable, match="starting"):
        scheduler.submit(item(loop))


def test_admission_counts_pending_forwards(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler(max_forwards=100)
    scheduler.submit(item(loop, cost=60))
    scheduler.submit(item(loop, cost=40))
    with pytest.raises(QueueFull) as refused:
        scheduler.submit(item(loop, cost=1))
    assert refused.value.retry_after_s >= 1
    assert scheduler.pending_forwards() == 100


def test_one_oversized_request_runs_when_the_queue_is_empty(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler(max_forwards=10)
    scheduler.submit(item(loop, cost=500))
    assert scheduler.depth() == 1


def test_request_count_limit(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler(max_requests=2)
    scheduler.submit(item(loop, cost=1))
    scheduler.submit(item(loop, cost=1))
    with pytest.raises(QueueFull, match="MAX_QUEUE_REQUESTS"):
        scheduler.submit(item(loop, cost=1))


def test_check_answers_like_submit_without_admitting(loop: asyncio.AbstractEventLoop) -> None:
    """The API's check before reading an upload: the same refusals, and nothing is enqueued."""
    closed = Scheduler(max_forwards=100, max_requests=10)
    with pytest.raises(ServiceUnavailable):
        closed.check("predict", 1, time.monotonic() + 60)
    scheduler = open_scheduler(max_forwards=100, max_requests=2)
    scheduler.check("scorecam", 100, time.monotonic() + 60)
    assert scheduler.depth() == 0 and scheduler.pending_forwards() == 0
    scheduler.submit(item(loop, cost=90))
    scheduler.check("predict", 10, time.monotonic() + 60)
    with pytest.raises(QueueFull, match="MAX_QUEUE_FORWARDS"):
        scheduler.check("predict", 11, time.monotonic() + 60)
    scheduler.submit(item(loop, cost=1))
    with pytest.raises(QueueFull, match="MAX_QUEUE_REQUESTS"):
        scheduler.check("predict", 1, time.monotonic() + 60)
    assert scheduler.depth() == 2


def test_lanes_take_turns(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler()
    for kind, model in [("scorecam", "a"), ("scorecam", "a"), ("predict", "a"), ("scorecam", "b")]:
        scheduler.submit(item(loop, kind=kind, model=model, cost=1))
    turns = []
    for _ in range(3):
        lane = scheduler.next_lane(0)
        assert lane is not None
        turns.append(lane)
        scheduler.take_pending(lane, 10)
    assert turns == [("scorecam", "a"), ("predict", "a"), ("scorecam", "b")]
    assert scheduler.next_lane(0) is None


def test_purge_drops_expired_and_cancelled(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler()
    expired, cancelled, alive = item(loop, ttl=-1), item(loop), item(loop)
    for i in (expired, cancelled, alive):
        scheduler.submit(i)
    cancelled.cancel()
    dropped = {id(i): e for i, e in scheduler.purge(time.monotonic())}
    assert isinstance(dropped[id(expired)], DeadlineExceeded) and "while queued" in dropped[id(expired)].message
    assert isinstance(dropped[id(cancelled)], Cancelled)
    assert scheduler.depth() == 1


def test_cancel_frees_capacity_at_once(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler(max_forwards=50)
    first = item(loop, cost=50)
    scheduler.submit(first)
    scheduler.cancel(first)
    scheduler.submit(item(loop, cost=50))


def test_history_is_a_bounded_ring(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = Scheduler(max_forwards=10, max_requests=10, history_size=3)
    items = [item(loop) for _ in range(5)]
    for i in items:
        scheduler.record_batch("scorecam", "m", [i], 4, 0.01)
    history = scheduler.history()
    assert [r.request_ids for r in history] == [(i.request_id,) for i in items[2:]]


def test_wait_idle_times_out_while_work_is_open(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler()
    scheduler.submit(item(loop))
    assert scheduler.wait_idle(0.01) is False
    scheduler.drain_all()
    assert scheduler.wait_idle(0.01) is True


def test_work_that_cannot_finish_before_its_deadline_is_refused_at_once(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler(max_forwards=100_000)
    for _ in range(5):  # measured: 100 masked forwards per second
        scheduler.record_batch("scorecam", "m", [], 10, 0.1)
    with pytest.raises(QueueFull, match="deadline"):
        scheduler.submit(item(loop, cost=1000, ttl=5))  # about 10 s of work
    scheduler.submit(item(loop, cost=1000, ttl=60))
    scheduler.submit(item(loop, cost=10, ttl=5))  # small: shares batches, done in well under 5 s
