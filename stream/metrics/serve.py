"""Prometheus metrics of the prediction API (``bwp serve``).

One :class:`ServeMetrics` per process, on an injected ``CollectorRegistry`` (tests build
a fresh one each), served at the API's own ``/metrics``. Names carry units; labels are
the route template and status, never anything per link or per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# A batch-1 forward pass takes a few ms; keep resolution there, tail to seconds.
_LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass(frozen=True)
class ServeMetrics:
    """Every metric ``bwp serve`` exports. Build with :meth:`create`."""

    registry: CollectorRegistry
    requests: Counter  # route, status
    request_seconds: Histogram  # route
    errors: Counter  # code
    windows: Counter
    batch_windows: Histogram
    batch_requests: Histogram
    model_info: Gauge  # version
    model_reloads: Counter  # result (the worker's watcher counts into it)

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> ServeMetrics:
        """Register every metric on ``registry`` (a fresh one when None)."""
        r = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=r,
            requests=Counter("bwp_serve_requests", "HTTP requests answered, by route template and status.",
                             ["route", "status"], registry=r),
            request_seconds=Histogram("bwp_serve_request_duration_seconds",
                                      "Time from request received to response ready, by route template.",
                                      ["route"], buckets=_LATENCY_BUCKETS, registry=r),
            errors=Counter("bwp_serve_errors", "Requests refused (4xx/5xx), by machine-readable error code.",
                           ["code"], registry=r),
            windows=Counter("bwp_serve_windows", "Windows predicted (one per prediction returned).", registry=r),
            batch_windows=Histogram("bwp_serve_batch_windows", "Windows per forward pass (dynamic batching).",
                                    buckets=_BATCH_BUCKETS, registry=r),
            batch_requests=Histogram("bwp_serve_batch_requests", "Requests merged into one forward pass.",
                                     buckets=_BATCH_BUCKETS, registry=r),
            model_info=Gauge("bwp_serve_model_info", "1 for the model version answering.", ["version"], registry=r),
            model_reloads=Counter("bwp_serve_model_reloads", "Model hot reloads, by result.", ["result"],
                                  registry=r),
        )  # fmt: skip

    def set_model(self, version: str) -> None:
        """Make ``version`` the one ``bwp_serve_model_info`` reports."""
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)
