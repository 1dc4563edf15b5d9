"""The measured pace admission prices work at: its clamp, its ceiling, and recovery from an optimistic figure."""

from __future__ import annotations

import pytest

from app.serving.admission.throughput import HEADROOM, MAX_SLOWDOWN, MIN_BATCHES, RECENT_BATCHES, Throughput

REAL = 100.0  # forwards/s: the device's real pace in these tests


def run(throughput: Throughput, batches: int, rate: float, size: int = 32) -> None:
    for _ in range(batches):
        throughput.observe("m", "fp32", size, size / rate)


def test_one_optimistic_early_batch_is_forgotten() -> None:
    """An unsynchronised CUDA batch measures kernel launches: 20x the real pace, once. It used to
    hold the rate at a quarter of it (5x real) and the ceiling at 80x, for good."""
    throughput = Throughput()
    run(throughput, 1, 20 * REAL)
    run(throughput, RECENT_BATCHES, REAL)
    assert throughput.rate("m", "fp32") == pytest.approx(REAL, rel=0.01)
    assert throughput.ceiling("m", "fp32") == pytest.approx(HEADROOM * REAL)


def test_an_optimistic_warm_up_estimate_is_forgotten_too() -> None:
    throughput = Throughput()
    throughput.expect("m", "fp32", 20 * REAL)
    assert throughput.rate("m", "fp32") == 20 * REAL  # before any batch: the warm-up's figure
    run(throughput, RECENT_BATCHES, REAL)
    assert throughput.rate("m", "fp32") == pytest.approx(REAL, rel=0.01)


def test_a_burst_of_slow_batches_lowers_the_rate_at_most_max_slowdown_times() -> None:
    throughput = Throughput()
    run(throughput, RECENT_BATCHES, REAL)
    run(throughput, 10, REAL / 100)  # a held or emulated batch: 100x slower, ten times
    assert throughput.rate("m", "fp32") == pytest.approx(REAL / MAX_SLOWDOWN)
    assert throughput.ceiling("m", "fp32") == pytest.approx(HEADROOM * REAL)


def test_a_lasting_slowdown_is_the_real_pace() -> None:
    throughput = Throughput()
    run(throughput, RECENT_BATCHES, REAL)
    run(throughput, 2 * RECENT_BATCHES, REAL / 10)
    assert throughput.rate("m", "fp32") == pytest.approx(REAL / 10, rel=0.01)


def test_no_ceiling_before_min_batches() -> None:
    throughput = Throughput()
    run(throughput, MIN_BATCHES - 1, REAL)
    assert throughput.ceiling("m", "fp32") is None
    run(throughput, 1, REAL)
    assert throughput.ceiling("m", "fp32") == pytest.approx(HEADROOM * REAL)


def test_the_queue_prices_work_at_the_recovered_pace() -> None:
    """Through the dispatcher's batch feed, as the service wires it: the ceiling a request's
    feasibility is checked against comes back down once the optimistic batch is old."""
    from app.protocol.messages import MASKED_BATCH
    from app.serving.batches import BatchFeed
    from app.serving.request_queue import RequestQueue

    queue = RequestQueue(max_forwards=10_000, max_requests=10)
    feed = BatchFeed()
    feed.subscribe(queue.observe_batch)
    feed.publish(MASKED_BATCH, "m", ("r0",), 32, 32 / (20 * REAL), "fp32")
    for i in range(RECENT_BATCHES):
        feed.publish(MASKED_BATCH, "m", (f"r{i + 1}",), 32, 32 / REAL, "fp32")
    assert queue.ceiling("m", "fp32") == pytest.approx(HEADROOM * REAL)
