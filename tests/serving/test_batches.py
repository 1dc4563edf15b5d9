"""The batch feed: every batch numbered, handed to each listener, a failing listener isolated."""

from __future__ import annotations

from app.serving.batches import BatchFeed, BatchRecord


def test_listeners_get_every_batch_in_order_and_a_broken_one_does_not_stop_the_rest() -> None:
    feed = BatchFeed()
    seen: list[BatchRecord] = []

    def broken(record: BatchRecord) -> None:
        raise ValueError("a listener's bug")

    feed.subscribe(broken)
    feed.subscribe(seen.append)
    first = feed.publish("scorecam", "m", ("r1", "r2"), 8, 0.1, "fp32")
    second = feed.publish("predict", "m", ("r3",), 1, 0.01)
    assert seen == [first, second]
    assert (first.seq, second.seq) == (1, 2)
    assert first.request_ids == ("r1", "r2") and first.precision == "fp32" and second.precision is None
    feed.unsubscribe(seen.append)
    feed.publish("predict", "m", ("r4",), 1, 0.01)
    assert len(seen) == 2
