"""ApiClient and Idempotency-Key: one key per logical request, kept across its retries (502, 504, 409)."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np

from shared.client import IDEMPOTENCY_HEADER, ApiClient

MODEL = {"object": "list", "data": [{"id": "m", "architecture": "resnet", "input_size": 32, "representation_dim": 4,
                                      "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
                                      "outputs": ["representation"], "max_images_per_request": 2}]}


def _answer(n: int) -> dict:
    return {"object": "list", "model": "m", "usage": {"images": n, "prompt_tokens": n, "total_tokens": n},
            "data": [{"object": "embedding", "index": i, "embedding": [float(i)] * 4} for i in range(n)]}


def test_one_key_per_request_kept_across_retries():
    seen: list[tuple[str, int]] = []
    failures = {502: 1, 504: 1, 409: 1}  # each request meets each failure once, in this order

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODEL)
        key = request.headers[IDEMPOTENCY_HEADER]
        n = len(json.loads(request.content)["input"])
        tries = sum(1 for k, _ in seen if k == key)
        seen.append((key, n))
        order = list(failures)
        if tries < len(order):
            st = order[tries]
            if st == 409:
                return httpx.Response(409, headers={"Retry-After": "0"},
                                      json={"error": {"type": "idempotency_in_progress", "message": "busy"}})
            return httpx.Response(st, text="bad gateway")
        return httpx.Response(200, json=_answer(n), headers={"idempotent-replayed": "true"} if tries == 3 else {})

    async def go() -> tuple[np.ndarray, dict]:
        async with ApiClient("http://x", "sk-test", transport=httpx.MockTransport(handler), backoff_s=0.001,
                             concurrency=2) as c:
            out = await c.embed(np.zeros((5, 32, 32, 3), np.uint8), batch_size=2)
            return out, c.stats.as_dict()

    out, stats = asyncio.run(go())
    assert out.shape == (5, 4)
    keys = [k for k, _ in seen]
    assert len(set(keys)) == 3  # three requests (2 + 2 + 1 images), one key each
    assert all(keys.count(k) == 4 for k in set(keys))  # three failures then the answer, same key
    assert stats["bad_gateway"] == 6 and stats["replayed"] == 3 and stats["ok_requests"] == 3
