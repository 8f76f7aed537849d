"""Prometheus metrics and the structured (JSON) request logs, in process."""

from __future__ import annotations

import json
import logging

import numpy as np

from server.logs import JsonFormatter
from shared.images import encode_image
from tests.support import InProcessApi, metric


class _Lines(logging.Handler):
    """The server's JSON log lines, formatted when emitted (the request id and account are context)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_metrics_and_structured_logs(tiny_checkpoint):
    logger = logging.getLogger("heist")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with InProcessApi(tiny_checkpoint) as api:  # started here: its "model loaded" line is logged too
            _, key = api.new_account("free")
            img = encode_image(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
            r = api.client(key).post("/v1/embeddings", json={"input": [img]}, headers={"X-Request-ID": "trace-abc-123"})
            assert r.status_code == 200 and r.headers["x-request-id"] == "trace-abc-123"
            text = api.client(None).get("/metrics").text
            for name in ("heist_requests_total", "heist_request_seconds_bucket", "heist_batch_images_bucket",
                         "heist_images_total", "heist_defence_decisions_total", "heist_queue_images"):
                assert name in text, name
            assert metric(api.client(None), "heist_requests_total", 'route="/v1/embeddings"') > 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [json.loads(x) for x in handler.lines if x.startswith("{")]
    mine = [x for x in lines if x.get("request_id") == "trace-abc-123"]
    assert mine and mine[-1]["status"] == 200 and mine[-1]["account"].startswith("acct_") and mine[-1]["path"] == "/v1/embeddings"
    assert any(x["msg"] == "model loaded" and "policies" in x for x in lines)
