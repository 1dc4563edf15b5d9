"""Prometheus metrics of one app instance (its own registry, so test apps never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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


class ServiceMetrics:
    """Every metric the service exports, registered on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "scorecam_requests", "HTTP requests by endpoint and status.", ["endpoint", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "scorecam_request_duration_seconds", "HTTP request latency.", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("scorecam_queue_requests", "Requests queued or running in the worker.", registry=r)
        self.queue_forwards = Gauge(
            "scorecam_queue_pending_forwards", "Forward passes the queued and running requests still need.", registry=r
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

    def observe_device_memory(self, value: float) -> None:
        """The worker process's report after a batch."""
        if value:
            self.device_memory.labels(device=self._device).set(value)

    def observe_batch(self, record: BatchRecord) -> None:
        """A batch the worker ran (a ``BatchFeed`` listener): its size, and its forwards when masked."""
        self.batch_size.labels(kind=record.kind).observe(record.size)
        if record.kind not in UNMASKED_BATCHES:
            self.masked_forwards.inc(record.size)

    def set_queue(self, depth: int, forwards: int) -> None:
        self.queue_depth.set(depth)
        self.queue_forwards.set(forwards)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "other"
        self.requests.labels(endpoint=endpoint, method=method, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
