"""The request queue on its own: admission by pending forwards, round robin, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from app.errors import Cancelled, DeadlineExceeded, InvalidOption, QueueFull, ServiceUnavailable
from app.protocol.messages import JobState
from app.serving.batches import BatchRecord
from app.serving.lifecycle import Lifecycle, Phase
from app.serving.request_queue import RequestQueue
from app.serving.requests import Demand
from app.serving.work import WorkItem


def item(loop: asyncio.AbstractEventLoop, kind: str = "scorecam", model: str = "m", cost: int = 10, ttl: float = 60) -> WorkItem:
    demand = Demand(kind, model, forwards=cost)
    return WorkItem(demand, np.zeros(1, dtype=np.uint8), time.monotonic() + ttl, loop, loop.create_future())


def record_batch(queue: RequestQueue, size: int, seconds: float, precision: str) -> None:
    """A masked batch of model "m" as the dispatcher publishes it."""
    queue.observe_batch(BatchRecord(0, "scorecam", "m", (), size, seconds, precision=precision))


@pytest.fixture
def loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def open_queue(**kwargs: int) -> RequestQueue:
    return RequestQueue(**{"max_forwards": 100, "max_requests": 10, **kwargs}, lifecycle=Lifecycle(Phase.SERVING))


def test_closed_until_opened(loop: asyncio.AbstractEventLoop) -> None:
    queue = RequestQueue(max_forwards=100, max_requests=10)
    with pytest.raises(ServiceUnavailable, match="starting"):
        queue.submit(item(loop))


def test_admission_counts_pending_forwards(loop: asyncio.AbstractEventLoop) -> None:
    queue = open_queue(max_forwards=100)
    queue.submit(item(loop, cost=60))
    queue.submit(item(loop, cost=40))
    with pytest.raises(QueueFull) as refused:
        queue.submit(item(loop, cost=1))
    assert refused.value.retry_after_s >= 1
    assert queue.pending_forwards() == 100


def test_a_request_over_the_forward_budget_is_refused_even_on_an_empty_queue(loop: asyncio.AbstractEventLoop) -> None:
    """It could never fit: not a retryable QueueFull, and a fresh server is not locked by it."""
    queue = open_queue(max_forwards=10)
    with pytest.raises(InvalidOption, match="MAX_QUEUE_FORWARDS"):
        queue.submit(item(loop, cost=500))
    assert queue.depth() == 0
    queue.submit(item(loop, cost=10))


def test_request_count_limit(loop: asyncio.AbstractEventLoop) -> None:
    queue = open_queue(max_requests=2)
    queue.submit(item(loop, cost=1))
    queue.submit(item(loop, cost=1))
    with pytest.raises(QueueFull, match="MAX_QUEUE_REQUESTS"):
        queue.submit(item(loop, cost=1))


def test_check_answers_like_submit_without_admitting(loop: asyncio.AbstractEventLoop) -> None:
    """The API's check before reading an upload: the same refusals, and nothing is enqueued."""
    closed = RequestQueue(max_forwards=100, max_requests=10)
    with pytest.raises(ServiceUnavailable):
        closed.check(Demand("predict"), time.monotonic() + 60)
    queue = open_queue(max_forwards=100, max_requests=2)
    queue.check(Demand("scorecam", "m", forwards=100), time.monotonic() + 60)
    assert queue.depth() == 0 and queue.pending_forwards() == 0
    queue.submit(item(loop, cost=90))
    queue.check(Demand("predict", forwards=10), time.monotonic() + 60)
    with pytest.raises(QueueFull, match="MAX_QUEUE_FORWARDS"):
        queue.check(Demand("predict", forwards=11), time.monotonic() + 60)
    queue.submit(item(loop, cost=1))
    with pytest.raises(QueueFull, match="MAX_QUEUE_REQUESTS"):
        queue.check(Demand("predict"), time.monotonic() + 60)
    assert queue.depth() == 2


def test_lanes_take_turns(loop: asyncio.AbstractEventLoop) -> None:
    queue = open_queue()
    for kind, model in [("scorecam", "a"), ("scorecam", "a"), ("predict", "a"), ("scorecam", "b")]:
        queue.submit(item(loop, kind=kind, model=model, cost=1))
    turns = []
    for _ in range(3):
        lane = queue.next_lane(0)
        assert lane is not None
        turns.append(lane)
        queue.take_pending(lane, 10)
    assert turns == [("scorecam", "a"), ("predict", "a"), ("scorecam", "b")]
    assert queue.next_lane(0) is None


def test_purge_drops_expired_and_cancelled(loop: asyncio.AbstractEventLoop) -> None:
    queue = open_queue()
    expired, cancelled, alive = item(loop, ttl=-1), item(loop), item(loop)
    for i in (expired, cancelled, alive):
        queue.submit(i)
    cancelled.cancel()
    dropped = {id(i): e for i, e in queue.purge(time.monotonic())}
    assert isinstance(dropped[id(expired)], DeadlineExceeded) and "while queued" in dropped[id(expired)].message
    assert isinstance(dropped[id(cancelled)], Cancelled)
    assert queue.depth() == 1


def test_cancelling_a_queued_item_frees_capacity_at_once(loop: asyncio.AbstractEventLoop) -> None:
    queue = open_queue(max_forwards=50)
    first = item(loop, cost=50)
    queue.submit(first)
    queue.cancel(first)
    queue.submit(item(loop, cost=50))


def test_a_cancelled_started_item_stays_counted_until_the_worker_drops_it(loop: asyncio.AbstractEventLoop) -> None:
    """Started work is on the device: it counts in the bounds and gauges, and gets no further batch."""
    queue = open_queue(max_forwards=50, max_requests=1)
    started = item(loop, cost=50)
    queue.submit(started)
    [taken] = queue.take_pending(("scorecam", "m"), 8)
    taken.state = JobState(done=0, total=50, finished=False, group="g")  # its job runs in the worker
    queue.activate(taken)
    assert queue.next_group("m") == [taken]
    queue.cancel(started)
    assert (queue.depth(), queue.pending_forwards()) == (1, 50)
    with pytest.raises(QueueFull, match="MAX_QUEUE_REQUESTS"):
        queue.submit(item(loop, cost=1))
    assert queue.next_group("m") == []  # no batch after the one that was running
    [(dropped, error)] = queue.purge(time.monotonic())
    assert dropped is started and isinstance(error, Cancelled)
    assert (queue.depth(), queue.pending_forwards()) == (0, 0)
    queue.submit(item(loop, cost=50))


def test_an_expired_started_item_gets_no_further_batch(loop: asyncio.AbstractEventLoop) -> None:
    queue = open_queue()
    running = item(loop, ttl=60)
    queue.submit(running)
    queue.take_pending(("scorecam", "m"), 8)
    queue.activate(running)
    running.deadline = time.monotonic() - 1  # its deadline passed during the batch
    assert queue.next_group("m") == []
    [(dropped, error)] = queue.purge(time.monotonic())
    assert dropped is running and isinstance(error, DeadlineExceeded)


def test_wait_idle_times_out_while_work_is_open(loop: asyncio.AbstractEventLoop) -> None:
    queue = open_queue()
    queue.submit(item(loop))
    assert queue.wait_idle(0.01) is False
    queue.drain_all()
    assert queue.wait_idle(0.01) is True


def test_work_that_cannot_finish_behind_the_queue_before_its_deadline_is_refused_at_once(
    loop: asyncio.AbstractEventLoop,
) -> None:
    queue = open_queue(max_forwards=100_000)
    for _ in range(5):  # measured: 100 masked forwards per second
        record_batch(queue, 10, 0.1, "fp32")
    queue.submit(item(loop, cost=1000, ttl=60))
    with pytest.raises(QueueFull, match="deadline"):
        queue.submit(item(loop, cost=1000, ttl=15))  # about 10 s of its own, shared with 10 s of backlog
    queue.submit(item(loop, cost=10, ttl=5))  # small: shares batches, done in well under 5 s


def test_an_idle_queue_admits_what_fits_the_forward_budget_whatever_the_estimate(loop: asyncio.AbstractEventLoop) -> None:
    """Slow batches lower the estimate, but never make an idle server refuse (the service refuses
    what could not finish alone at the measured ceiling, with a 422)."""
    queue = open_queue(max_forwards=100_000)
    for _ in range(20):
        record_batch(queue, 1, 10.0, "fp32")  # 0.1 forwards/s
    queue.submit(item(loop, cost=1000, ttl=5))


def test_the_estimate_is_kept_per_model_and_precision(loop: asyncio.AbstractEventLoop) -> None:
    queue = open_queue(max_forwards=100_000)
    for _ in range(5):
        record_batch(queue, 4, 4.0, "fp16")  # emulated: 1 forward/s
        record_batch(queue, 100, 0.1, "fp32")  # 1000 forwards/s
    queue.submit(item(loop, cost=100, ttl=60))  # busy from now on
    queue.submit(item(loop, cost=2000, ttl=10))  # fp32: about 2 s, not 2000
    assert queue.ceiling("m", "fp32") == pytest.approx(4000.0)
    assert queue.ceiling("other", "fp32") is None  # never measured: bounds nothing
