"""The endpoint's Prometheus metrics (`GET /metrics`), in a registry of its own so two servers in one process (tests,
the monitor stage) never mix their counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ftflow_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("ftflow_request_latency_seconds", "Arrival to response, queueing included",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("ftflow_time_to_first_token_seconds", "Arrival to the first token of a "
                                     "streamed answer", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.streams_closed = Counter("ftflow_streams_closed", "Streams that ended before their answer: the client "
                                      "left, stopped reading (stalled), or the model failed", ["reason"], registry=r)
        self.tokens_in = Counter("ftflow_prompt_tokens", "Prompt tokens received", registry=r)
        self.tokens_out = Counter("ftflow_completion_tokens", "Completion tokens generated", registry=r)
        # With continuous batching, the requests prefilled together as they join the decode batch.
        self.batch_size = Histogram("ftflow_batch_size", "Requests per model batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.decode_rows = Histogram("ftflow_decode_rows", "Requests in each continuous decode step",
                                     buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("ftflow_queue_depth", "Requests waiting for the model", registry=r)
        self.cache_hits = Counter("ftflow_cache_hits", "Responses served from the cache", registry=r)
        self.cache_misses = Counter("ftflow_cache_misses", "Cacheable requests the model answered", registry=r)
        self.cache_hit_rate = Gauge("ftflow_cache_hit_rate", "Cache hits over cacheable requests", registry=r)
        self.cache_entries = Gauge("ftflow_cache_entries", "Responses held in the cache", registry=r)
        self.adapters = Gauge("ftflow_adapters_loaded", "Adapters attached to the base", registry=r)
        self.reloads = Counter("ftflow_model_reloads", "Times a moved alias was loaded", registry=r)
        self.model = Gauge("ftflow_model_info", "The model version serving (value 1)", ["model", "version"],
                           registry=r)

    def serving(self, name: str, version: str) -> None:
        self.model.clear()
        self.model.labels(model=name, version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
