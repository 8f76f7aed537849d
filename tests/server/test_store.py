"""The account store, both backends (the Redis one on the shared real Redis: those cases are ``live``)."""

from __future__ import annotations

import asyncio
import secrets

import numpy as np
import pytest

from server.accounts import hash_key, make_account
from server.config import RateLimit
from server.defences.b4b import bitmap_to_bits
from server.store import AccountExists, HistoryAppend, RequestRecord, StoreUnavailable, open_store
from tests.support import cleanup_prefix, free_port

RNG = np.random.default_rng(0)


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.live),
                        pytest.param("cluster", marks=pytest.mark.live)])
def store(request):
    """Each backend: embedded, the shared Redis, a private local Redis Cluster (tests/server/conftest.py)."""
    prefix = "heist-unit-" + secrets.token_hex(4)
    redis_url = None
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_url")
    elif request.param == "cluster":  # private to the test run: nothing to clean up
        redis_url = request.getfixturevalue("redis_cluster").url
    s = open_store(redis_url, prefix)
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


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_unreachable_redis_raises_store_unavailable(scheme):
    async def go():
        s = open_store(f"{scheme}://127.0.0.1:{free_port()}/0", "x", timeout_s=0.3)
        assert await s.ping() is False
        with pytest.raises(StoreUnavailable):
            await s.by_key_hash("0" * 64)
        with pytest.raises(StoreUnavailable):
            await s.commit("acct_x", RequestRecord(1), RateLimit(requests=1))
        await s.close()
    run(go())


def test_store_commit_writes_history_bitmap_gauges_atomically(store):
    async def go():
        a, _ = make_account("h1", "free")
        b, _ = make_account("h2", "free")
        await store.add(a)
        await store.add(b)
        v = RNG.normal(size=(5, 4)).astype(np.float32)
        rec = RequestRecord(images=5, counters={"similar_hits": 2}, gauges={"b4b_coverage": 0.25},
                            history=HistoryAppend(v, maxlen=3, global_maxlen=100), coverage_bits=[3, 9, 81919],
                            sybil_pairs=[f"{a.id}|{b.id}"])
        assert (await store.commit(a.id, rec, RateLimit())).ok
        h = await store.history_since(a.id, "0-0")
        assert 3 <= len(h) <= 5 and np.allclose(np.frombuffer(h[-1].vector, "<f4"), v[-1])  # MAXLEN (~ on Redis)
        assert [e.id for e in await store.history_since(a.id, h[0].id)] == [e.id for e in h[1:]]
        g = await store.history_since(None, "0-0")
        assert len(g) == 5 and {e.account for e in g} == {a.id}
        bits = bitmap_to_bits(await store.coverage_bitmap(a.id), 81920)
        assert list(np.flatnonzero(bits)) == [3, 9, 81919]
        stats = await store.defence_stats(a.id)
        assert stats["b4b_coverage"] == 0.25 and stats["coverage_bits"] == 3
        assert (await store.usage(a.id)).counters == {"similar_hits": 2}
        assert await store.sybil_pairs() == [(f"{a.id}|{b.id}", 1)]
        # a refused commit (rate limited) writes nothing
        full = RateLimit(window_s=60, requests=1)
        rec2 = RequestRecord(images=1, counters={"similar_hits": 5}, history=HistoryAppend(v[:1], 3), coverage_bits=[1])
        assert (await store.commit(a.id, rec2, full)).status == "rate_limited"
        assert (await store.usage(a.id)).counters == {"similar_hits": 2}
        assert (await store.defence_stats(a.id))["coverage_bits"] == 3
        assert await store.spend_token("t1", 5) and not await store.spend_token("t1", 5)
        await store.add_counters(a.id, {"pow_challenges": 1})
        assert (await store.usage(a.id)).counters["pow_challenges"] == 1
        await store.close()
    asyncio.run(go())


def test_query_log_keeps_each_accounts_last_images(store):
    """Raw image bytes in, the last ``keep`` per account out, oldest first; accounts apart; on a
    cluster the log lives in the account's slot."""
    async def go():
        a, b = make_account("qa", "free")[0], make_account("qb", "free")[0]
        await store.add(a)
        await store.add(b)
        imgs = [bytes([i]) * 3072 for i in range(7)]  # one 32 x 32 RGB image each, byte value i
        assert await store.query_log(a.id) == []
        await store.log_queries(a.id, imgs[:4], keep=5)
        await store.log_queries(b.id, [imgs[6]], keep=5)
        await store.log_queries(a.id, imgs[4:], keep=5)
        assert await store.query_log(a.id) == imgs[2:]
        assert await store.query_log(b.id) == [imgs[6]]
        if hasattr(store, "r"):
            if hasattr(store.r, "keyslot"):
                key = f"{store._acct(a.id)}:qlog"
                assert store.r.keyslot(key) == store.r.keyslot(f"{store._acct(a.id)}:usage")
            await store.close()
    run(go())
