"""Account store (both backends, the Redis one on a real Redis), keys, config, images, batcher."""

from __future__ import annotations

import asyncio
import secrets
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import cleanup_prefix, free_port  # noqa: I001

from server.accounts import hash_key, key_matches, make_account
from server.config import ConfigError, RateLimit, load_config
from server.store import AccountExists, RequestRecord, StoreUnavailable, open_store
from shared.images import ImageError, ImageLimits, decode_image, encode_image, resize_center_crop
from shared.schemas import decode_embedding, encode_embedding


@pytest.fixture(params=["embedded", "redis"])
def store(request, redis_url):
    prefix = "heist-unit-" + secrets.token_hex(4)
    s = open_store(redis_url if request.param == "redis" else None, prefix)
    yield s
    asyncio.run(s.close()) if request.param == "embedded" else None
    if request.param == "redis":
        cleanup_prefix(redis_url, prefix)


def run(coro):
    return asyncio.run(coro)


def test_accounts_lifecycle(store):
    async def go():
        acct, key = make_account("alice", "free")
        await store.add(acct)
        with pytest.raises(AccountExists):
            await store.add(make_account("alice", "standard")[0])
        got = await store.by_key_hash(hash_key(key))
        assert got.id == acct.id and got.tier == "free" and not got.revoked
        assert await store.by_key_hash(hash_key(key + "x")) is None
        assert (await store.get("alice")).id == acct.id and (await store.get(acct.id)).name == "alice"
        assert [a.id for a in await store.list()] == [acct.id]
        assert await store.revoke(acct.id) and (await store.get(acct.id)).revoked
        assert not await store.revoke("acct_missing") and await store.get("acct_missing") is None
        assert (await store.commit(acct.id, RequestRecord(1), RateLimit())).status == "revoked"
        assert (await store.commit("acct_missing", RequestRecord(1), RateLimit())).status == "missing"
        if hasattr(store, "r"):
            await store.close()
    run(go())


def test_commit_is_atomic_and_rate_limit_exact_under_concurrency(store):
    async def go():
        acct, _ = make_account("bob", "free")
        await store.add(acct)
        limit = RateLimit(window_s=60, requests=20, images=1000)
        results = await asyncio.gather(*[store.commit(acct.id, RequestRecord(3, {"pow_bits": 2}), limit) for _ in range(50)])
        assert sum(r.ok for r in results) == 20
        limited = [r for r in results if not r.ok]
        assert all(r.status == "rate_limited" and 0 < r.retry_after <= 60 for r in limited)
        u = await store.usage(acct.id)
        assert (u.requests, u.images, u.counters) == (20, 60, {"pow_bits": 40})
        assert await store.rate_check(acct.id, limit, 1) is not None  # exhausted: read-only check agrees
        img_limit = RateLimit(window_s=60, images=65)
        assert await store.rate_check(acct.id, img_limit, 5) is None
        assert await store.rate_check(acct.id, img_limit, 6) is not None
        assert (await store.commit(acct.id, RequestRecord(6), img_limit)).status == "rate_limited"
        if hasattr(store, "r"):
            await store.close()
    run(go())


def test_embedded_store_windows_roll_over_and_spent_tokens_expire():
    """The embedded store on an injected clock: a new rate window starts empty, a spent PoW token
    stays spent until its TTL, then is forgotten (and the store holds no expired tokens)."""
    from server.store.memory import MemoryStore

    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])

    async def go():
        acct, _ = make_account("carol", "free")
        await store.add(acct)
        limit = RateLimit(window_s=60, requests=2)
        assert [(await store.commit(acct.id, RequestRecord(1), limit)).status for _ in range(3)] == ["ok", "ok", "rate_limited"]
        now[0] += 60  # next window
        assert (await store.commit(acct.id, RequestRecord(1), limit)).status == "ok"
        assert (await store.usage(acct.id)).requests == 3
        assert await store.spend_token("t1", 10) and not await store.spend_token("t1", 10)
        now[0] += 5
        assert not await store.spend_token("t1", 10)  # still inside its TTL: a replay
        assert await store.spend_token("t2", 100)
        now[0] += 6
        assert await store.spend_token("t3", 100)  # t1 expired: forgotten on this call
        assert set(store._spent) == {"t2", "t3"}
        assert await store.spend_token("t1", 10)  # an expired token id is new again (its HMAC expiry refuses it anyway)

    run(go())


def test_unreachable_redis_raises_store_unavailable():
    async def go():
        s = open_store(f"redis://127.0.0.1:{free_port()}/0", "x", timeout_s=0.3)
        assert await s.ping() is False
        with pytest.raises(StoreUnavailable):
            await s.by_key_hash("0" * 64)
        with pytest.raises(StoreUnavailable):
            await s.commit("acct_x", RequestRecord(1), RateLimit(requests=1))
        await s.close()
    run(go())


def test_keys_random_hashed_constant_time():
    (a, ka), (_b, kb) = make_account("a", "free"), make_account("b", "free")
    assert ka != kb and ka.startswith("heist_") and len(ka) >= 40
    assert a.key_hash == hash_key(ka) and ka not in a.key_hash and key_matches(ka, a.key_hash) and not key_matches(kb, a.key_hash)


def test_config_validation_errors(tmp_path):
    cfg = load_config(env={"REDIS_URL": "redis://h:1/0", "HEIST_MAX_BATCH": "8"})
    assert cfg.redis_url == "redis://h:1/0" and cfg.max_batch == 8 and "free" in cfg.tiers
    with pytest.raises(ConfigError, match=r"max_batch \(env HEIST_MAX_BATCH\)"):
        load_config(env={"HEIST_MAX_BATCH": "zero"})
    with pytest.raises(ConfigError, match="redis_url"):
        load_config(env={"REDIS_URL": "http://nope"})
    f = tmp_path / "c.json"
    f.write_text('{"admin_token": "x"}')
    with pytest.raises(ConfigError, match="must come from the environment"):
        load_config(f, env={})
    f.write_text('{"tiers": {"free": {"rate_limit": {"requests": 0}}}, "bogus": 1}')
    with pytest.raises(ConfigError, match="bogus"):
        load_config(f, env={})
    f2 = tmp_path / "c.toml"
    f2.write_text('max_images_per_request = 4\n[tiers.gold]\noutputs = ["representation", "projection"]\n')
    assert load_config(f2, env={}).tiers["gold"].outputs == ("representation", "projection")
    from server.app import create_app
    f.write_text('{"tiers": {"x": {"defences": [{"name": "no-such-defence"}]}}}')
    with pytest.raises(ConfigError, match="unknown defence 'no-such-defence'"):
        create_app(load_config(f, env={}))


def test_image_decoding_and_preprocessing():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)
    img = decode_image(encode_image(arr, "PNG", data_uri=True), 0, ImageLimits())
    assert img.size == (60, 30) and img.mode == "RGB"
    assert resize_center_crop(img, 32).shape == (32, 32, 3)
    rgba = encode_image(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "PNG")
    assert decode_image(rgba, 0, ImageLimits()).mode == "RGB"
    with pytest.raises(ImageError) as e:
        decode_image(encode_image(arr, "PNG"), 5, ImageLimits(max_pixels=100))
    assert e.value.status == 413 and e.value.param == "input[5]"
    with pytest.raises(ImageError) as e:
        decode_image(encode_image(arr, "JPEG"), 1, ImageLimits(formats=("PNG",)))
    assert e.value.status == 415
    v = np.linspace(-1, 1, 7, dtype=np.float32)
    assert np.array_equal(decode_embedding(encode_embedding(v, "base64")), v)
    assert np.allclose(decode_embedding(encode_embedding(v, "float")), v)


def test_batcher_batches_distinct_requests(tiny_checkpoint):
    from server.batcher import Batcher
    from shared.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    sizes = []
    b = Batcher(ck, torch.device("cpu"), max_batch=16, max_wait_ms=20, on_batch=lambda n, s: sizes.append(n))
    b.start()
    rng = np.random.default_rng(1)
    jobs = [rng.integers(0, 256, (int(rng.integers(1, 5)), 32, 32, 3), dtype=np.uint8) for _ in range(24)]
    jobs.append(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))  # larger than max_batch: chunked

    async def go():
        return await asyncio.gather(*[b.submit(j, projections=i % 2 == 0) for i, j in enumerate(jobs)])
    try:
        out = asyncio.run(go())
    finally:
        b.stop()
    for i, (j, (reps, projs)) in enumerate(zip(jobs, out, strict=False)):
        ref_r, ref_p = b.run_sync(j, projections=True)
        np.testing.assert_allclose(reps, ref_r, rtol=1e-4, atol=1e-5)
        assert (projs is not None) == (i % 2 == 0)
        if projs is not None:
            np.testing.assert_allclose(projs, ref_p, rtol=1e-4, atol=1e-5)
    assert max(sizes) > 4 and sum(sizes) == sum(len(j) for j in jobs) and b.queued_images == 0


def test_batcher_drops_requests_cancelled_while_queued(tiny_checkpoint):
    """A request whose client went away while queued is not computed, its images leave the queue
    count, and the requests batched around it still get their answers (one wake-up per batch)."""
    from server.batcher import Batcher
    from shared.checkpoint import load_checkpoint

    sizes, gate = [], threading.Event()
    b = Batcher(load_checkpoint(tiny_checkpoint), torch.device("cpu"), max_batch=16, max_wait_ms=0,
                on_batch=lambda n, s: (sizes.append(n), gate.wait(10)))  # the worker holds after each batch
    b.start()
    rng = np.random.default_rng(2)
    first = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    small = [rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8) for _ in range(3)]

    async def go():
        head = await b.submit(first)  # answered; the worker now waits at the gate
        tasks = [asyncio.ensure_future(b.submit(x)) for x in small]
        await asyncio.sleep(0.01)  # all three queued
        tasks[1].cancel()
        await asyncio.sleep(0.01)
        gate.set()
        return [head, *await asyncio.gather(*tasks, return_exceptions=True)]
    try:
        out = asyncio.run(go())
    finally:
        gate.set()
        b.stop()
    assert isinstance(out[2], asyncio.CancelledError)
    for x, (reps, _) in ((small[0], out[1]), (small[2], out[3])):
        np.testing.assert_allclose(reps, b.run_sync(x)[0], rtol=1e-4, atol=1e-5)
    assert sizes == [4, 6] and b.queued_images == 0  # the cancelled 3 images never ran


def test_batcher_wait_counts_from_when_the_first_job_was_queued(tiny_checkpoint):
    """max_wait bounds how long a request waits for company, counted from when it was queued: a job
    that already waited (behind the previous forward pass) is batched with what is there, at once."""
    from server.batcher import Batcher, _Job
    from shared.checkpoint import load_checkpoint

    b = Batcher(load_checkpoint(tiny_checkpoint), torch.device("cpu"), max_batch=64, max_wait_ms=300)
    img = np.zeros((2, 32, 32, 3), np.uint8)
    waited = _Job(img, False, queued_at=time.monotonic() - 1.0)
    b._q.put(_Job(img, False))  # already queued: joins the batch
    t0 = time.monotonic()
    jobs, carry, stop = b._collect(waited)
    assert time.monotonic() - t0 < 0.1 and len(jobs) == 2 and carry is None and not stop
    t0 = time.monotonic()
    jobs, _, _ = b._collect(_Job(img, False))  # fresh and alone: waits its max_wait for company
    assert 0.25 < time.monotonic() - t0 < 1.0 and len(jobs) == 1


def test_frozen_batcher_matches_eager_model(tiny_checkpoint):
    """The served (TorchScript-frozen) encoder and head give the eager checkpoint's answers."""
    from server.batcher import Batcher
    from shared.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    jit = Batcher(ck, torch.device("cpu"), max_batch=16, jit=True)
    eager = Batcher(ck, torch.device("cpu"), max_batch=16, jit=False)
    assert all(isinstance(m, torch.jit.ScriptModule) for m in jit._served.values()) and len(jit._served) == 2
    assert not eager._served
    imgs = np.random.default_rng(3).integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)  # not a multiple of the trace batch
    (r1, p1), (r2, p2) = jit.run_sync(imgs, projections=True), eager.run_sync(imgs, projections=True)
    np.testing.assert_allclose(r1, r2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-5)
    r3, p3 = jit.run_sync(imgs[:5], projections=False)  # the encoder-only module: no head output
    assert p3 is None
    np.testing.assert_allclose(r3, r2[:5], rtol=1e-4, atol=1e-5)


def test_native_thread_limits_apply_on_the_event_loop_thread(tiny_checkpoint):
    """OpenMP thread counts are per thread. The similar-query defence searches FAISS on the event
    loop's thread, so ``faiss_threads`` must hold there, not only in the thread that loads the model
    (where it was set before: the loop's searches then spun on every core against inference).
    numpy's BLAS (the defences' matrix products) is limited to ``blas_threads`` too, and startup
    objects are frozen out of the garbage collector's scans (``gc_freeze``)."""
    import gc

    import faiss
    from threadpoolctl import threadpool_info, threadpool_limits

    from server.app import create_app
    from server.config import ServerConfig
    from server.store.memory import MemoryStore

    app = create_app(ServerConfig(checkpoint=tiny_checkpoint, faiss_threads=1, blas_threads=1, torch_threads=1),
                     store=MemoryStore())
    faiss.omp_set_num_threads(3)  # what this thread would otherwise search with
    restore = threadpool_limits(limits=3, user_api="blas")

    gc.unfreeze()

    async def inside() -> tuple[int, list[int], int, float]:
        async with app.router.lifespan_context(app):  # read on the loop's own thread
            return (faiss.omp_get_max_threads(), [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"],
                    gc.get_freeze_count(), sys.getswitchinterval())
    old_interval = sys.getswitchinterval()
    try:
        omp, blas, frozen, interval = asyncio.run(inside())
        assert omp == 1 and blas and set(blas) == {1}
        assert interval == pytest.approx(0.2e-3)  # the server's default switch interval
        assert frozen > 10_000  # torch, FastAPI and the model's objects
    finally:
        faiss.omp_set_num_threads(1)
        restore.restore_original_limits()
        gc.unfreeze()
        sys.setswitchinterval(old_interval)
