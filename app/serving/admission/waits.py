"""How long queued work will take, at each item's own (model, precision) pace.

The queue's ``Retry-After`` is the backlog's seconds; a new request is refused when the time it
would wait behind the open work exceeds its share of the deadline (app/serving/request_queue.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from app.protocol.messages import METRICS_PRECISION
from app.serving.admission.throughput import Throughput
from app.serving.requests import PREDICT_LANE, Demand
from app.serving.work import WorkItem


def backlog_seconds(throughput: Throughput, items: Iterable[WorkItem]) -> float:
    """Seconds of work the items still need, each at its own (model, precision) pace."""
    total = 0.0
    for item in items:
        mask, metric = item.remaining_parts()
        total += throughput.seconds(item.model, item.demand.precision, mask)
        total += throughput.seconds(item.model, METRICS_PRECISION, metric)
    return total


def estimated_finish_s(throughput: Throughput, items: Sequence[WorkItem], demand: Demand) -> float | None:
    """Seconds until ``demand`` would finish behind ``items``; None when not estimated.

    Not estimated for predictions (one forward, served between masked batches), on an idle
    queue (the service refuses what cannot finish alone, at the measured ceiling, before it
    gets here) and before its pace is known (measured, or the warm-up's). Jobs share batches
    fairly, so a request waits for at most the whole backlog, and for less when it is small:
    about its own time times the number of jobs sharing the device.
    """
    if demand.kind == PREDICT_LANE or not items or not throughput.known(demand.model, demand.precision):
        return None
    mask, metric = demand.forwards - demand.metric_forwards, demand.metric_forwards
    own = throughput.seconds(demand.model, demand.precision, mask)
    own += throughput.seconds(demand.model, METRICS_PRECISION, metric)
    return min(backlog_seconds(throughput, items) + own, own * (len(items) + 1))
