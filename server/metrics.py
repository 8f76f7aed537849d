"""Prometheus metrics (one registry per app, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.defences.keys import Counters, Gauges

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self, max_batch: int) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("heist_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("heist_request_seconds", "request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("heist_images", "images embedded and returned", ["output", "tier"], registry=r)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch})
        self.batch_size = Histogram("heist_batch_images", "images per forward pass", buckets=[b for b in buckets if b <= max_batch], registry=r)
        self.batch_seconds = Histogram("heist_batch_seconds", "forward pass time", buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("heist_queue_images", "images waiting for the batcher", registry=r)
        self.defence = Counter("heist_defence_decisions", "gate decisions", ["tier", "decision"], registry=r)
        self.defence_actions = Counter("heist_defence_actions", "defence decisions per image or request "
                                       "(similar_query hit/miss/sybil/refuse, pow free/challenge_<reason>/paid)",
                                       ["defence", "action"], registry=r)
        self.pow_bits_paid = Counter("heist_pow_bits_paid", "sum of PoW difficulty bits paid", registry=r)
        self.hists = {
            Gauges.B4B_COVERAGE: Histogram("heist_b4b_coverage", "B4B coverage of the requesting account", registry=r,
                                           buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)),
            Gauges.B4B_SIGMA: Histogram("heist_b4b_sigma", "B4B noise sigma given", registry=r,
                                        buckets=(1e-6, 1e-4, 1e-3, 0.01, 0.1, 0.5, 1, 2, 5, 10)),
            Counters.POW_BITS_ASKED: Histogram("heist_pow_bits_asked", "PoW difficulty asked in challenges", registry=r,
                                               buckets=(8, 12, 16, 18, 20, 22, 24, 26, 28, 32, 40)),
        }
        self.store_errors = Counter("heist_store_unavailable", "requests refused because the store was unreachable", registry=r)

    def on_batch(self, n: int, seconds: float) -> None:
        self.batch_size.observe(n)
        self.batch_seconds.observe(seconds)

    def observe(self, name: str, value: float) -> None:
        self.hists[name].observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
