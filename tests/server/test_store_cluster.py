"""The Redis store on a real local Redis Cluster (3 masters, ``testbed.services.start_redis_cluster``):
the store contract, where the keys really land (CLUSTER KEYSLOT, which node holds them), that a
script spanning slots is refused, and ``heist-server serve`` answering on a cluster."""

from __future__ import annotations

import asyncio
import json
import secrets

import httpx
import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster as SyncCluster
from redis.exceptions import RedisClusterException, ResponseError

from server.accounts import hash_key, make_account
from server.config import RateLimit
from server.defences.b4b import bitmap_to_bits
from server.store import AccountExists, HistoryAppend, IdempotentAnswer, RequestRecord
from server.store.redis_backend import _COMMIT, RedisStore
from shared.images import encode_image
from tests.support import SERVER_TEST_CONFIG, Victim

pytestmark = pytest.mark.live

RNG = np.random.default_rng(7)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def cstore(redis_cluster):
    return RedisStore(redis_cluster.url, prefix="heist-cl-" + secrets.token_hex(4))


def _sync(cluster) -> SyncCluster:
    return SyncCluster.from_url(cluster.url.replace("+cluster", ""), decode_responses=True)


def _keys_by_node(cluster, prefix: str) -> dict[str, int]:
    """Every key under ``prefix`` -> the port of the node that holds it (SCAN on each node itself)."""
    where: dict[str, int] = {}
    for port, url in zip(cluster.ports, cluster.node_urls(), strict=True):
        with redis.Redis.from_url(url, decode_responses=True) as node:
            for k in node.scan_iter(match=f"{prefix}:*", count=1000):
                where[k] = port
    return where


def test_store_contract_on_a_cluster(cstore):
    async def go():
        s = cstore
        assert s.clustered and await s.ping()
        a, ka = make_account("alice-" + secrets.token_hex(3), "free")
        b, _ = make_account("bob-" + secrets.token_hex(3), "free")
        await s.add(a)
        await s.add(b)
        with pytest.raises(AccountExists):
            await s.add(make_account(a.name, "standard")[0])
        assert (await s.by_key_hash(hash_key(ka))).id == a.id and await s.by_key_hash(hash_key(ka + "x")) is None
        assert (await s.get(a.name)).id == a.id and (await s.get(a.id)).name == a.name
        assert {x.id for x in await s.list()} == {a.id, b.id}
        # a request with history, bitmap, gauges, counters and a sybil pair
        limit = RateLimit(window_s=60, requests=3, images=100)
        assert await s.rate_check(a.id, limit, 4) is None
        v = RNG.normal(size=(4, 8)).astype(np.float32)
        pair = "|".join(sorted((a.id, b.id)))
        rec = RequestRecord(images=4, counters={"similar_hits": 1}, gauges={"b4b_coverage": 0.5},
                            history=HistoryAppend(v, maxlen=100, global_maxlen=100), coverage_bits=[0, 7, 1000],
                            sybil_pairs=[pair])
        got = await s.commit(a.id, rec, limit)
        assert (got.status, got.requests, got.images) == ("ok", 1, 4) and 0 < got.reset_s <= 60
        rq, im, reset = await s.window(a.id, limit)
        assert (rq, im) == (1, 4) and 0 < reset <= 60
        wb = RNG.normal(size=(1, 8)).astype(np.float32)
        assert (await s.commit(b.id, RequestRecord(1, history=HistoryAppend(wb, 100, 100), sybil_pairs=[pair]), limit)).ok
        # per-account and global history (the global entries came in the second step)
        h = await s.history_since(a.id, "0-0")
        assert len(h) == 4 and np.allclose(np.frombuffer(h[2].vector, "<f4"), v[2]) and {e.account for e in h} == {a.id}
        g = await s.history_since(None, "0-0")
        assert [e.account for e in g] == [a.id] * 4 + [b.id]
        assert np.allclose(np.frombuffer(g[-1].vector, "<f4"), wb[0])
        assert [e.id for e in await s.history_since(None, g[3].id)] == [g[4].id]
        assert list(np.flatnonzero(bitmap_to_bits(await s.coverage_bitmap(a.id), 1024))) == [0, 7, 1000]
        stats = await s.defence_stats(a.id)
        assert (stats["b4b_coverage"], stats["history_len"], stats["coverage_bits"]) == (0.5, 4, 3)
        assert await s.sybil_pairs() == [(pair, 2)]
        u = await s.usage(a.id)
        assert (u.requests, u.images, u.counters) == (1, 4, {"similar_hits": 1})
        # refused commits write nothing, neither in the account's slot nor globally
        for _ in range(2):
            assert (await s.commit(a.id, RequestRecord(1), limit)).ok
        assert await s.rate_check(a.id, limit, 1) is not None
        late = await s.commit(a.id, RequestRecord(1, history=HistoryAppend(v[:1], 100, 100), sybil_pairs=[pair]), limit)
        assert late.status == "rate_limited" and 0 < late.retry_after <= 60
        assert await s.revoke(b.id) and (await s.get(b.id)).revoked and not await s.revoke("acct_missing")
        gone = await s.commit(b.id, RequestRecord(1, history=HistoryAppend(wb, 100, 100), sybil_pairs=[pair]), limit)
        assert gone.status == "revoked" and (await s.commit("acct_missing", RequestRecord(1), limit)).status == "missing"
        assert len(await s.history_since(None, "0-0")) == 5 and await s.sybil_pairs() == [(pair, 2)]
        assert (await s.usage(a.id)).requests == 3 and await s.get("acct_missing") is None
        # spent PoW tokens, counters outside a request
        tok = secrets.token_hex(8)
        assert await s.spend_token(tok, 5) and not await s.spend_token(tok, 5)
        await s.add_counters(a.id, {"pow_challenges": 2})
        assert (await s.usage(a.id)).counters["pow_challenges"] == 2
        assert s.global_write_failures == 0
        await s.close()

    run(go())


def test_idempotency_on_a_cluster(cstore):
    async def go():
        s = cstore
        acct, _ = make_account("idem-" + secrets.token_hex(3), "free")
        await s.add(acct)
        assert (await s.idempotency_claim(acct.id, "k1", "d1", "lease-1", 10_000)).state == "new"
        assert (await s.idempotency_claim(acct.id, "k1", "d1", "lease-2", 10_000)).state == "pending"
        assert (await s.idempotency_claim(acct.id, "k1", "other", "lease-2", 10_000)).state == "mismatch"
        ans = IdempotentAnswer("k1", "d1", b"2,3|\x00\x01\xff", 60_000, "lease-1")
        assert (await s.commit(acct.id, RequestRecord(2, idempotent=ans), RateLimit())).ok
        done = await s.idempotency_claim(acct.id, "k1", "d1", "lease-3", 10_000)
        assert (done.state, done.payload) == ("done", b"2,3|\x00\x01\xff")
        # a failed request frees its key; a released claim of another lease is kept
        assert (await s.idempotency_claim(acct.id, "k2", "d2", "lease-a", 10_000)).state == "new"
        await s.idempotency_release(acct.id, "k2", "d2", "someone-else")
        assert (await s.idempotency_claim(acct.id, "k2", "d2", "lease-b", 10_000)).state == "pending"
        await s.idempotency_release(acct.id, "k2", "d2", "lease-a")
        assert (await s.idempotency_claim(acct.id, "k2", "d2", "lease-b", 10_000)).state == "new"
        # a request whose lease ran out and was taken over counts nothing
        assert (await s.idempotency_claim(acct.id, "k3", "d3", "slow", 50)).state == "new"
        await asyncio.sleep(0.2)
        assert (await s.idempotency_claim(acct.id, "k3", "d3", "retry", 10_000)).state == "new"
        slow = IdempotentAnswer("k3", "d3", b"x", 60_000, "slow")
        assert (await s.commit(acct.id, RequestRecord(2, idempotent=slow), RateLimit())).status == "superseded"
        assert (await s.usage(acct.id)).images == 2
        await s.close()

    run(go())


def test_an_accounts_keys_share_one_slot_and_accounts_spread_over_the_nodes(redis_cluster, cstore):
    async def go() -> list[str]:
        ids: list[str] = []
        owners: set[int] = set()
        rc = _sync(redis_cluster)
        while len(owners) < len(redis_cluster.ports) and len(ids) < 60:  # until every node holds some account
            acct, _ = make_account("spread-" + secrets.token_hex(4), "free")
            await cstore.add(acct)
            ans = IdempotentAnswer("k" * 64, "d", b"1,1|ab", 60_000, "l")
            assert (await cstore.idempotency_claim(acct.id, "k" * 64, "d", "l", 60_000)).state == "new"
            rec = RequestRecord(1, gauges={"g": 1.0}, history=HistoryAppend(RNG.normal(size=(1, 4)).astype(np.float32), 10, 10),
                                coverage_bits=[5], idempotent=ans)
            assert (await cstore.commit(acct.id, rec, RateLimit(window_s=60, requests=10))).ok
            ids.append(acct.id)
            owners.add(rc.get_node_from_key(cstore._acct(acct.id)).port)
        rc.close()
        assert len(await cstore.list()) == len(ids)  # one pipeline over every node
        await cstore.close()
        return ids

    ids = run(go())
    where = _keys_by_node(redis_cluster, cstore.p)
    rc = _sync(redis_cluster)
    suffixes = {"", ":usage", ":dstats", ":hist", ":cov", ":idem:" + "k" * 64}
    for aid in ids:
        mine = {k for k in where if f"{{{aid}}}" in k}
        assert {k.split("}", 1)[1] for k in mine if ":rl:" not in k} == suffixes, mine
        assert sum(":rl:" in k for k in mine) == 1
        slots = {rc.cluster_keyslot(k) for k in mine}  # the server's CLUSTER KEYSLOT
        assert slots == {rc.cluster_keyslot(f"{{{aid}}}")}, (aid, slots)
        assert len({where[k] for k in mine}) == 1  # ... and one node holds them all
    assert len({where[k] for k in where if "{" in k}) == 3, "accounts spread over every node"
    # the global and lookup keys have slots of their own, on whichever node owns them
    assert rc.cluster_keyslot(f"{cstore.p}:hist") != rc.cluster_keyslot(f"{cstore.p}:sybil")
    assert f"{cstore.p}:hist" in where and f"{cstore.p}:accounts" in where
    rc.close()


def test_a_script_spanning_slots_is_refused(redis_cluster, cstore):
    """The single-Redis commit (global stream and sybil ZSET in the account's script) cannot run on a cluster:
    the client refuses it before sending, and a node refuses it (CROSSSLOT) when sent anyway."""
    async def go():
        acct, _ = make_account("xslot-" + secrets.token_hex(3), "free")
        await cstore.add(acct)
        cstore.clustered = False  # the one-Redis layout, on the cluster
        rec = RequestRecord(1, history=HistoryAppend(np.ones((1, 4), np.float32), 10, 10))
        with pytest.raises(RedisClusterException, match="same key slot"):  # a layout bug, never a StoreUnavailable
            await cstore.commit(acct.id, rec, RateLimit())
        cstore.clustered = True
        await cstore.close()
        return acct.id

    aid = run(go())
    rc = _sync(redis_cluster)
    key = cstore._acct(aid)
    node = rc.get_node_from_key(key)
    keys = [key, f"{key}:usage", f"{key}:dstats", f"{key}:hist", f"{cstore.p}:hist", f"{key}:cov", f"{cstore.p}:sybil",
            f"{key}:idem:-"]
    with redis.Redis(host=node.host, port=node.port) as direct, pytest.raises(ResponseError, match="same slot"):
        direct.eval(_COMMIT, len(keys), *keys, f"{key}:rl:", 60, 0, 0, 1, 0, 0, aid, 10, 10, 1, b"z", 0, 0, "0")
    rc.close()


def test_concurrent_creations_of_one_name_leave_one_account(redis_cluster, cstore):
    name = "dup-" + secrets.token_hex(3)
    accts = [make_account(name, "free")[0] for _ in range(8)]

    async def go():
        got = await asyncio.gather(*(cstore.add(a) for a in accts), return_exceptions=True)
        assert sum(g is None for g in got) == 1 and all(isinstance(g, AccountExists) for g in got if g is not None), got
        winner = (await cstore.get(name)).id
        assert [a.id for a in await cstore.list()] == [winner]
        await cstore.close()
        return winner

    winner = run(go())
    left = set(_keys_by_node(redis_cluster, cstore.p))  # the losers rolled their profile and key back
    p = cstore.p
    won = next(a for a in accts if a.id == winner)
    assert left == {f"{p}:name:{name}", f"{p}:accounts", f"{p}:acct:{{{winner}}}", f"{p}:key:{won.key_hash}"}


def test_a_lost_global_step_keeps_the_request_counted(cstore, monkeypatch, caplog):
    """The second step (global stream, sybil ZSET) failing after the account's script: the request stays
    counted and its commit ok; the loss is logged and counted, never raised."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    def broken(*a, **kw):
        raise RedisConnectionError("node gone")

    async def go():
        acct, _ = make_account("lost-" + secrets.token_hex(3), "free")
        await cstore.add(acct)
        monkeypatch.setattr(cstore.rb, "pipeline", broken)
        rec = RequestRecord(2, history=HistoryAppend(np.ones((2, 4), np.float32), 10, 10), sybil_pairs=[f"{acct.id}|acct_z"])
        assert (await cstore.commit(acct.id, rec, RateLimit())).ok
        monkeypatch.undo()
        assert (await cstore.usage(acct.id)).images == 2 and len(await cstore.history_since(acct.id, "0-0")) == 2
        assert await cstore.history_since(None, "0-0") == [] and await cstore.sybil_pairs() == []
        assert cstore.global_write_failures == 1
        await cstore.close()

    with caplog.at_level("WARNING", logger="heist.store"):
        run(go())
    assert "global history/sybil write lost" in caplog.text


def test_the_server_answers_on_a_cluster(server_factory, redis_cluster):
    """``heist-server serve`` with REDIS_URL=redis+cluster://...: embeddings served and counted, and the
    similar-query defence's global index (the second commit step) sees one image sent by two accounts."""
    prefix = "heist-cl-srv-" + secrets.token_hex(4)
    sim = {"name": "similar_query", "params": {"tau": 0.999}}
    config = {**SERVER_TEST_CONFIG, "tiers": {**SERVER_TEST_CONFIG["tiers"], "sim": {"defences": [sim]}}}
    v = Victim(server_factory(redis_cluster.url, prefix, config=config), redis_cluster.url, prefix)
    assert httpx.get(v.url + "/readyz").status_code == 200
    img = encode_image(RNG.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    ids = []
    for _ in range(2):
        aid, key = v.new_account("sim")
        ids.append(aid)
        r = v.client(key).post("/v1/embeddings", content=json.dumps({"input": [img]}),
                               headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 1
    for aid in ids:
        assert v.admin.get(f"/v1/admin/accounts/{aid}").json()["usage"]["requests"] == 1
    d = v.admin.get(f"/v1/admin/accounts/{ids[1]}/defences").json()
    assert d["sybil_hits"] == 1 and d["sybil_peers"] == {ids[0]: 1} and d["history"] == 1
    assert {a["id"] for a in v.admin.get("/v1/admin/accounts").json()["data"]} == set(ids)
    where = _keys_by_node(redis_cluster, prefix)
    assert f"{prefix}:hist" in where and f"{prefix}:sybil" in where
    assert len({where[k] for k in where if f"{{{ids[0]}}}" in k}) == 1
    v.admin.close()
