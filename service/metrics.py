"""All Prometheus metrics of the service, defined here and nowhere else.

The names are a contract with dashboards and alerts (docs/architecture.md, "Metrics"): do not
rename; a new metric goes into that table too. Each app gets its own registry so several apps
can live in one process (tests) without clashing.

Example::

    >>> from service.metrics import ServiceMetrics
    >>> m = ServiceMetrics()
    >>> m.batch_size.observe(4)
    >>> b"qaembed_batch_size_count 1.0" in m.render()[0]
    True
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class ServiceMetrics:
    """Every metric, registered at construction (so all appear in /metrics from the start)."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if process:
            process_collector.ProcessCollector(registry=r)
            platform_collector.PlatformCollector(registry=r)
            gc_collector.GCCollector(registry=r)
        self.requests = Counter("qaembed_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.request_errors = Counter("qaembed_request_errors", "Failed HTTP requests by route and error type",
                                      ["route", "error_type"], registry=r)
        self.request_duration = Histogram("qaembed_request_duration_seconds", "HTTP request duration",
                                          ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("qaembed_queue_wait_seconds", "Time a text waits in the batching queue",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.tokenize_duration = Histogram("qaembed_tokenize_duration_seconds", "Tokenization time per request",
                                           buckets=FAST_BUCKETS, registry=r)
        self.inference_duration = Histogram("qaembed_inference_duration_seconds", "Forward pass time per batch",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("qaembed_batch_size", "Texts per forward pass",
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("qaembed_batch_tokens", "Padded tokens (batch x longest) per forward pass",
                                      buckets=BATCH_TOKEN_BUCKETS, registry=r)
        self.queue_size = Gauge("qaembed_queue_size", "Texts waiting in the batching queue", registry=r)
        self.queue_capacity = Gauge("qaembed_queue_capacity", "Capacity of the batching queue (texts)",
                                    registry=r)
        self.documents = Gauge("qaembed_documents", "Documents in the search index", registry=r)
        self.search_duration = Histogram("qaembed_search_duration_seconds", "Index search time per request",
                                         buckets=FAST_BUCKETS, registry=r)
        self.ready = Gauge("qaembed_ready", "1 when the service is ready to serve", registry=r)
        self.model_info = Gauge("qaembed_model_info", "The model being served (value is always 1)",
                                ["name", "version", "variant", "backend", "device"], registry=r)
        self.feedback = Counter("qaembed_feedback", "Relevance feedback received, by label", ["label"],
                                registry=r)
        self.reloads = Counter("qaembed_reloads", "Model reloads by result (done, unchanged, failed)", ["result"],
                               registry=r)

    def set_model(self, name: str, version: str, variant: str, backend: str, device: str) -> None:
        """Exactly one model_info series: the model now serving."""
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, variant=variant, backend=backend, device=device).set(1)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
