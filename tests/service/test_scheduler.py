"""The worker's queue on its own: admission by pending forwards, round robin, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest
import numpy as np

from app.errors import Cancelled, DeadlineExceeded, InvalidOption, QueueFull, ServiceUnavailable
from app.service.request_queue import Scheduler
from app.service.work import Demand, WorkItem
from app.service.worker_protocol import JobState


def item(loop: asyncio.AbstractEventLoop, kind: str = "scorecam", model: str = "m", cost: int = 10, ttl: float = 60) -> WorkItem:
    return WorkItem(kind=kind, model=model, x=np.zeros(1, dtype=np.uint8), deadline=time.monotonic() + ttl, cost=cost,  # type: ignore[arg-type]
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


def test_a_request_over_the_forward_budget_is_refused_even_on_an_empty_queue(loop: asyncio.AbstractEventLoop) -> None:
    """It could never fit: not a retryable QueueFull, and a fresh server is not locked by it."""
    scheduler = open_scheduler(max_forwards=10)
    with pytest.raises(InvalidOption, match="MAX_QUEUE_FORWARDS"):
        scheduler.submit(item(loop, cost=500))
    assert scheduler.depth() == 0
    scheduler.submit(item(loop, cost=10))


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
        closed.check(Demand("predict"), time.monotonic() + 60)
    scheduler = open_scheduler(max_forwards=100, max_requests=2)
    scheduler.check(Demand("scorecam", "m", forwards=100), time.monotonic() + 60)
    assert scheduler.depth() == 0 and scheduler.pending_forwards() == 0
    scheduler.submit(item(loop, cost=90))
    scheduler.check(Demand("predict", forwards=10), time.monotonic() + 60)
    with pytest.raises(QueueFull, match="MAX_QUEUE_FORWARDS"):
        scheduler.check(Demand("predict", forwards=11), time.monotonic() + 60)
    scheduler.submit(item(loop, cost=1))
    with pytest.raises(QueueFull, match="MAX_QUEUE_REQUESTS"):
        scheduler.check(Demand("predict"), time.monotonic() + 60)
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


def test_cancelling_a_queued_item_frees_capacity_at_once(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler(max_forwards=50)
    first = item(loop, cost=50)
    scheduler.submit(first)
    scheduler.cancel(first)
    scheduler.submit(item(loop, cost=50))


def test_a_cancelled_started_item_stays_counted_until_the_worker_drops_it(loop: asyncio.AbstractEventLoop) -> None:
    """Started work is on the device: it counts in the bounds and gauges, and gets no further batch."""
    scheduler = open_scheduler(max_forwards=50, max_requests=1)
    started = item(loop, cost=50)
    scheduler.submit(started)
    [taken] = scheduler.take_pending(("scorecam", "m"), 8)
    taken.state = JobState(done=0, total=50, finished=False, group="g")  # its job runs in the worker
    scheduler.activate(taken)
    assert scheduler.next_group("m") == [taken]
    scheduler.cancel(started)
    assert (scheduler.depth(), scheduler.pending_forwards()) == (1, 50)
    with pytest.raises(QueueFull, match="MAX_QUEUE_REQUESTS"):
        scheduler.submit(item(loop, cost=1))
    assert scheduler.next_group("m") == []  # no batch after the one that was running
    [(dropped, error)] = scheduler.purge(time.monotonic())
    assert dropped is started and isinstance(error, Cancelled)
    assert (scheduler.depth(), scheduler.pending_forwards()) == (0, 0)
    scheduler.submit(item(loop, cost=50))


def test_an_expired_started_item_gets_no_further_batch(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler()
    running = item(loop, ttl=60)
    scheduler.submit(running)
    scheduler.take_pending(("scorecam", "m"), 8)
    scheduler.activate(running)
    running.deadline = time.monotonic() - 1  # its deadline passed during the batch
    assert scheduler.next_group("m") == []
    [(dropped, error)] = scheduler.purge(time.monotonic())
    assert dropped is running and isinstance(error, DeadlineExceeded)


def test_history_is_a_bounded_ring(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = Scheduler(max_forwards=10, max_requests=10, history_size=3)
    items = [item(loop) for _ in range(5)]
    for i in items:
        scheduler.record_batch("scorecam", "m", [i], 4, 0.01, "fp32")
    history = scheduler.history()
    assert [r.request_ids for r in history] == [(i.request_id,) for i in items[2:]]


def test_wait_idle_times_out_while_work_is_open(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler()
    scheduler.submit(item(loop))
    assert scheduler.wait_idle(0.01) is False
    scheduler.drain_all()
    assert scheduler.wait_idle(0.01) is True


def test_work_that_cannot_finish_behind_the_queue_before_its_deadline_is_refused_at_once(
    loop: asyncio.AbstractEventLoop,
) -> None:
    scheduler = open_scheduler(max_forwards=100_000)
    for _ in range(5):  # measured: 100 masked forwards per second
        scheduler.record_batch("scorecam", "m", [], 10, 0.1, "fp32")
    scheduler.submit(item(loop, cost=1000, ttl=60))
    with pytest.raises(QueueFull, match="deadline"):
        scheduler.submit(item(loop, cost=1000, ttl=15))  # about 10 s of its own, shared with 10 s of backlog
    scheduler.submit(item(loop, cost=10, ttl=5))  # small: shares batches, done in well under 5 s


def test_an_idle_queue_admits_what_fits_the_forward_budget_whatever_the_estimate(loop: asyncio.AbstractEventLoop) -> None:
    """Slow batches lower the estimate, but never make an idle server refuse (the service refuses
    what could not finish alone at the measured ceiling, with a 422)."""
    scheduler = open_scheduler(max_forwards=100_000)
    for _ in range(20):
        scheduler.record_batch("scorecam", "m", [], 1, 10.0, "fp32")  # 0.1 forwards/s
    scheduler.submit(item(loop, cost=1000, ttl=5))


def test_the_estimate_is_kept_per_model_and_precision(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = open_scheduler(max_forwards=100_000)
    for _ in range(5):
        scheduler.record_batch("scorecam", "m", [], 4, 4.0, "fp16")  # emulated: 1 forward/s
        scheduler.record_batch("scorecam", "m", [], 100, 0.1, "fp32")  # 1000 forwards/s
    scheduler.submit(item(loop, cost=100, ttl=60))  # busy from now on
    scheduler.submit(item(loop, cost=2000, ttl=10))  # fp32: about 2 s, not 2000
    assert scheduler.ceiling("m", "fp32") == pytest.approx(4000.0)
    assert scheduler.ceiling("other", "fp32") is None  # never measured: bounds nothing
