"""shared.client.ApiClient over real HTTP against real servers (heist-server + Redis, uvicorn).

- answers in input order and equal to the model's own outputs; errors (401/403/4xx) are clear;
- 429 with Retry-After from a real rate-limited tier is waited out; give-up is clear;
- 503 with Retry-After from a real outage (the server's Redis stopped, then restarted);
- the image budget stops the client before it overspends (server counters agree);
- 428 proof of work: the server's own PoW defence (``pow`` with fixed_bits) when it is registered,
  and always a small uvicorn app implementing the contract with shared.pow (tokens spent once).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time

import numpy as np
import pytest
import torch
from fastapi import FastAPI, Request  # module level: FastAPI resolves annotations from globals

from shared.client import ApiAuthError, ApiClient, ApiGiveUp, ApiRequestError, BudgetExceeded
from testbed.services import ThreadedServer
from tests.support import SERVER_TEST_CONFIG, Victim, cleanup_prefix

pytestmark = [pytest.mark.timeout(120), pytest.mark.live]


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _usage(victim, account_id: str) -> dict:
    r = victim.admin.get(f"/v1/admin/accounts/{account_id}")
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def test_embed_order_and_values_match_the_model(victim, tiny_checkpoint):
    from shared.checkpoint import load_checkpoint
    from shared.probe import extract_features

    acct, key = victim.new_account("unlimited")
    imgs = _images(21)
    client = ApiClient(victim.url, key, concurrency=3)
    got = client.embed_sync(imgs, batch_size=4)  # 6 requests, concurrent, order must hold
    ref = extract_features(load_checkpoint(tiny_checkpoint).encoder, imgs)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    assert client.stats.images == 21 and client.stats.ok_requests == 6
    assert _usage(victim, acct)["images"] == 21


def test_errors_are_clear(victim):
    with pytest.raises(ApiAuthError, match="401.*invalid API key"):
        ApiClient(victim.url, "heist_" + "x" * 40).embed_sync(_images(2))
    _, key = victim.new_account("free")
    with pytest.raises(ApiAuthError, match="403.*projection"):
        ApiClient(victim.url, key).embed_sync(_images(2), output="projection")
    with pytest.raises(ValueError, match="uint8"):
        ApiClient(victim.url, key).embed_sync(_images(2).astype(np.float32))
    tiny = np.zeros((1, 2, 2, 3), np.uint8)  # valid PNG, but too small? the server resizes: must work
    assert ApiClient(victim.url, key).embed_sync(tiny).shape[0] == 1
    huge = np.zeros((1, 600, 600, 3), np.uint8)  # over the test server's max_image_pixels
    with pytest.raises(ApiRequestError, match="413"):
        ApiClient(victim.url, key).embed_sync(huge)


def test_budget_stops_before_overspending(victim):
    acct, key = victim.new_account("unlimited")
    client = ApiClient(victim.url, key, concurrency=1, budget=10)
    with pytest.raises(BudgetExceeded, match="budget of 10"):
        client.embed_sync(_images(20), batch_size=4)
    assert _usage(victim, acct)["images"] <= 10
    assert client.stats.images == _usage(victim, acct)["images"]


@pytest.fixture(scope="module")
def limited_server(server_factory, redis_url):
    cfg = json.loads(json.dumps(SERVER_TEST_CONFIG))
    cfg["tiers"]["burst"] = {"rate_limit": {"window_s": 1, "requests": 2}}
    prefix = "heist-test-rl-" + secrets.token_hex(3)
    v = Victim(server_factory(redis_url, prefix, config=cfg), redis_url, prefix)
    yield v
    v.admin.close()
    cleanup_prefix(redis_url, prefix)


def test_429_retry_after_is_honoured(limited_server):
    acct, key = limited_server.new_account("burst")
    client = ApiClient(limited_server.url, key, concurrency=1)
    t0 = time.monotonic()
    out = client.embed_sync(_images(10), batch_size=2)  # 5 requests at 2 per second
    assert out.shape[0] == 10
    assert client.stats.rate_limited >= 1 and client.stats.retries >= 1
    assert time.monotonic() - t0 >= 1.0  # it really waited
    assert _usage(limited_server, acct)["images"] == 10


def test_429_give_up_is_clear(limited_server):
    _, key = limited_server.new_account("burst")
    client = ApiClient(limited_server.url, key, concurrency=1, max_wait_s=0.5)
    with pytest.raises(ApiGiveUp, match="max_wait_s"):
        client.embed_sync(_images(10), batch_size=2)
    client = ApiClient(limited_server.url, key, concurrency=1, max_retries=0)
    with pytest.raises(ApiGiveUp, match="gave up"):
        client.embed_sync(_images(10), batch_size=2)


def test_503_store_outage_is_waited_out(redis_server_factory, server_factory):
    r = redis_server_factory()
    v = Victim(server_factory(r.url, "heist-test-503"), r.url, "heist-test-503")
    acct, key = v.new_account("unlimited")
    r.stop()

    def restart():
        time.sleep(1.5)
        r.start()  # same port, same AOF

    t = threading.Thread(target=restart)
    t.start()
    client = ApiClient(v.url, key, concurrency=1, max_wait_s=30)
    out = client.embed_sync(_images(4), batch_size=4)
    t.join()
    assert out.shape == (4, 32)
    assert client.stats.unavailable >= 1
    assert _usage(v, acct)["images"] == 4
    subprocess_redis_shutdown(r.port)
    v.admin.close()


def subprocess_redis_shutdown(port: int) -> None:
    import subprocess

    subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)


# ---- proof of work -------------------------------------------------------------------------------

class PowApp(ThreadedServer):
    """A small real uvicorn app implementing the 428 contract with shared.pow (tokens spent once)."""

    def __init__(self, bits: int) -> None:
        from fastapi.responses import JSONResponse

        from shared import pow as hashcash
        from shared.images import ImageLimits, preprocess

        secret = secrets.token_bytes(16)
        spent: set[str] = set()
        self.served = 0
        self.replays = 0
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": "pow-test", "architecture": "mean", "input_size": 32,
                                                "representation_dim": 3, "projection_dim": None,
                                                "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]},
                                                "outputs": ["representation"], "max_images_per_request": 4}]}

        @app.post("/v1/embeddings")
        async def embeddings(request: Request):
            body = await request.body()
            header = request.headers.get(hashcash.HEADER)
            ok = False
            if header:
                try:
                    stamp = hashcash.verify_solution(secret, header, "acct", body)
                    ok = stamp.token_id not in spent
                    if ok:
                        spent.add(stamp.token_id)
                    else:
                        self.replays += 1
                except hashcash.PowError:
                    ok = False
            if not ok:
                ch = hashcash.make_challenge(secret, "acct", body, bits)
                return JSONResponse({"error": {"type": "pow_required", "message": "solve it", "param": None},
                                     "challenge": ch.as_dict()}, status_code=428)
            payload = json.loads(body)
            imgs = preprocess(payload["input"], 32, ImageLimits())
            self.served += len(imgs)
            vecs = torch.as_tensor(imgs).float().mean((1, 2)) if imgs.ndim == 4 else None
            from shared.schemas import encode_embedding

            return {"object": "list", "model": "pow-test", "usage": {"images": len(imgs)},
                    "data": [{"object": "embedding", "index": i, "embedding": encode_embedding(v.numpy(), payload["encoding_format"])}
                             for i, v in enumerate(vecs)]}

        super().__init__(app, start_timeout_s=4.0)


@pytest.mark.parametrize("workers", [1, 2])
def test_pow_contract_app(workers):
    from shared import pow as hashcash

    with PowApp(bits=12) as app:
        client = ApiClient(app.url, "k", concurrency=2, pow_workers=workers)
        imgs = _images(6)
        out = client.embed_sync(imgs, batch_size=4)  # 2 requests, 2 challenges
        assert out.shape == (6, 3)
        from shared.images import ImageLimits, encode_image, preprocess

        ref = preprocess([encode_image(im) for im in imgs], 32, ImageLimits()).mean((1, 2))
        np.testing.assert_allclose(out, ref, rtol=1e-5)
        assert client.stats.pow_challenges == 2 and client.stats.pow_hashes > 0 and client.stats.pow_max_bits == 12
        assert app.served == 6 and app.replays == 0
        assert hashcash.work_of  # the solver is shared.pow's
    with PowApp(bits=12) as app:
        # a replayed solution is refused with a fresh challenge, which the client solves again
        import httpx

        body = json.dumps({"input": [], "encoding_format": "float"}).encode()
        r = httpx.post(app.url + "/v1/embeddings", content=body)
        assert r.status_code == 428 and r.json()["challenge"]["difficulty"] == 12


def test_pow_server_defence(server_factory, redis_url):
    """The server's own PoW gate (when the defences issue has registered it)."""
    from server.defences import REGISTRY
    if "pow" not in REGISTRY:
        pytest.skip("server has no 'pow' defence yet (covered by test_pow_contract_app)")
    cfg = json.loads(json.dumps(SERVER_TEST_CONFIG))
    cfg["tiers"]["pow"] = {"defences": [{"name": "pow", "params": {"fixed_bits": 12}}]}
    prefix = "heist-test-pow-" + secrets.token_hex(3)
    v = Victim(server_factory(redis_url, prefix, config=cfg), redis_url, prefix)
    try:
        acct, key = v.new_account("pow")
        client = ApiClient(v.url, key, concurrency=2, pow_workers=2)
        out = client.embed_sync(_images(10), batch_size=4)
        assert out.shape == (10, 32)
        assert client.stats.pow_challenges == 3 and client.stats.pow_max_bits == 12
        assert _usage(v, acct)["images"] == 10
    finally:
        v.admin.close()
        cleanup_prefix(redis_url, prefix)


def test_embed_sync_and_async_share_stats(victim):
    _, key = victim.new_account("unlimited")

    async def go():
        async with ApiClient(victim.url, key) as c:
            a = await c.embed(_images(5), batch_size=2)
            info = await c.models()
            return a, info, c.stats

    a, info, stats = asyncio.run(go())
    assert a.shape == (5, info.representation_dim) and stats.requests == 3 and stats.wall > 0
