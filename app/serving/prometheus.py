"""Prometheus metrics of one app instance (its own registry, so test apps never collide).

Besides the service's own metrics the registry carries the standard ones, as on prometheus_client's
default registry: ``process_*`` (this, the HTTP process), ``python_info``, ``python_gc_*``, and
``scorecam_worker_process_*`` for the worker process (read from /proc by pid: the worker exposes
nothing itself, the HTTP process reports for it). ``model`` labels take only catalog names, or
``none`` for a request that named no served model (health, docs, an unknown name), so a client
cannot add series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from app.serving.batches import UNMASKED_BATCHES, BatchRecord

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = CONTENT_TYPE_LATEST
CANCELLED_HELP = "Requests stopped before their answer, by reason: client_gone or deadline (their work stops within a batch)."
OOM_HELP = (
    "Forwards halved after the device ran out of memory, by model (each lowers the cap of one precision "
    "and kind of forward in the worker until clean batches grow it back)."
)
DEVICE_MEMORY_HELP = "Memory in use on the device (the worker process's peak RSS on the CPU), as of its last batch."
# The request line's method is the client's text: only these become a label value of their own,
# anything else is "other", so invented methods cannot add series (label values are never
# taken from a request verbatim: endpoints are route templates or "unmatched", statuses ours).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
NO_MODEL = "none"  # the model label of a request that resolved no served model
QUEUE_REQUESTS_HELP = "Requests queued or running in the worker, by model."
QUEUE_FORWARDS_HELP = "Forward passes the queued and running requests still need, by model."
QUEUE_DRAIN_HELP = (
    "Seconds the queued and running requests still need at the measured pace, by model (their sum is the "
    "backlog Retry-After is made of; the autoscaling signal, deploy/kubernetes/hpa.yaml)."
)
# model -> (open requests, their pending forwards, the seconds those take)
QueueLoad = Callable[[], Mapping[str, tuple[int, int, float]]]


class RequestLabels:
    """What the metrics learn about one HTTP request while it runs: the model it was served by."""

    __slots__ = ("model",)

    def __init__(self) -> None:
        self.model = NO_MODEL


# Set by MetricsMiddleware for each request; the object is shared, so a thread or task the
# handler starts (they copy the context) still labels the same request.
_request_labels: ContextVar[RequestLabels | None] = ContextVar("scorecam_request_labels", default=None)


@contextmanager
def labelling_request() -> Iterator[RequestLabels]:
    """The labels of the request the enclosed code serves (MetricsMiddleware wraps each request)."""
    labels = RequestLabels()
    token = _request_labels.set(labels)
    try:
        yield labels
    finally:
        _request_labels.reset(token)


def label_model(name: str) -> None:
    """The current request is served by the catalog's model ``name`` (a no-op outside a request)."""
    labels = _request_labels.get()
    if labels is not None:
        labels.model = name


class ServiceMetrics:
    """Every metric the service exports, registered on a private registry."""

    def __init__(self) -> None:
        # A counter's or histogram's `_created` sample is one more series per label set, a
        # timestamp Prometheus derives itself (counter resets); the text format gains nothing
        # from it. prometheus_client's switch is process-wide: the HTTP process serves only these.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.worker_process = WorkerProcessCollector(r)
        labels = ["endpoint", "method", "status", "model"]
        self.requests = Counter("scorecam_requests", "HTTP requests by endpoint, status and model.", labels, registry=r)
        self.latency = Histogram(
            "scorecam_request_duration_seconds",
            "HTTP request latency, by endpoint and model.",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "scorecam_batch_size", "Inputs per forward batch, by kind.", ["kind"], buckets=BATCH_BUCKETS, registry=r
        )
        self.masked_forwards = Counter(
            "scorecam_masked_forwards", "Masked forward passes run (rate() gives them per second).", registry=r
        )
        self.rejected = Counter("scorecam_rejected", "Requests refused by backpressure, by reason.", ["reason"], registry=r)
        self.cancelled = Counter("scorecam_cancelled", CANCELLED_HELP, ["reason"], registry=r)
        self.worker_restarts = Counter("scorecam_worker_restarts", "Times the worker process was restarted.", registry=r)
        self.oom_splits = Counter("scorecam_oom_splits", OOM_HELP, ["model"], registry=r)
        self.ready = Gauge("scorecam_ready", "1 when the service accepts work.", registry=r)
        self.device_memory = Gauge("scorecam_device_memory_bytes", DEVICE_MEMORY_HELP, ["device"], registry=r)
        self._device = "cpu"

    def watch_device(self, device: str) -> None:
        """The device the worker reports memory for (its label)."""
        self._device = device

    def watch_worker(self, pid: int | None) -> None:
        """The worker process now serving (its ``scorecam_worker_process_*``)."""
        self.worker_process.pid = pid

    def watch_queue(self, load: QueueLoad, models: Sequence[str]) -> None:
        """Report the queue gauges, read from ``load`` at each scrape, for each of ``models``."""
        self.registry.register(QueueCollector(load, models))

    def observe_device_memory(self, value: float) -> None:
        """The worker process's report after a batch."""
        if value:
            self.device_memory.labels(device=self._device).set(value)

    def observe_batch(self, record: BatchRecord) -> None:
        """A batch the worker ran (a ``BatchFeed`` listener): its size, and its forwards when masked."""
        self.batch_size.labels(kind=record.kind).observe(record.size)
        if record.kind not in UNMASKED_BATCHES:
            self.masked_forwards.inc(record.size)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float, model: str = NO_MODEL) -> None:
        method = method if method in HTTP_METHODS else "other"
        self.requests.labels(endpoint=endpoint, method=method, status=str(status), model=model).inc()
        self.latency.labels(endpoint=endpoint, model=model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class QueueCollector:
    """``scorecam_queue_requests``, ``scorecam_queue_pending_forwards`` and ``scorecam_queue_drain_seconds``
    by model, read at scrape time: a series per served model (0 when idle), so a model's queue is never
    a stale value."""

    def __init__(self, load: QueueLoad, models: Sequence[str]) -> None:
        self._load = load
        self._models = tuple(models)

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        return self._families(self._load())

    def _families(self, load: Mapping[str, tuple[int, int, float]]) -> list[Metric]:
        requests = GaugeMetricFamily("scorecam_queue_requests", QUEUE_REQUESTS_HELP, labels=["model"])
        forwards = GaugeMetricFamily("scorecam_queue_pending_forwards", QUEUE_FORWARDS_HELP, labels=["model"])
        drain = GaugeMetricFamily("scorecam_queue_drain_seconds", QUEUE_DRAIN_HELP, labels=["model"])
        for model in self._models:
            depth, pending, seconds = load.get(model, (0, 0, 0.0))
            requests.add_metric([model], depth)
            forwards.add_metric([model], pending)
            drain.add_metric([model], seconds)
        return [requests, forwards, drain]


class WorkerProcessCollector:
    """prometheus_client's process metrics of the worker process, as ``scorecam_worker_process_*``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pid: int | None = None
        self._process = ProcessCollector(namespace="scorecam_worker", pid=lambda: self.pid or 0, registry=None)
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        # No worker yet, or between two (a dead pid's /proc entry is gone: nothing is reported)
        return self._process.collect() if self.pid else []
