"""Idempotency-Key on POST /v1/embeddings: a retried request is answered again, never counted twice."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets

import numpy as np
import pytest

from shared.images import encode_image
from tests.support import InProcessApi, assert_error

RNG = np.random.default_rng(11)


def _body(n: int = 2) -> bytes:
    imgs = [encode_image(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8), "PNG") for _ in range(n)]
    return json.dumps({"input": imgs, "encoding_format": "float"}).encode()


def _usage(api, aid: str) -> tuple[int, int]:
    u = api.admin.get(f"/v1/admin/accounts/{aid}").json()["usage"]
    return u["requests"], u["images"]


def _post(c, body: bytes, key: str | None):
    headers = {"Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})}
    return c.post("/v1/embeddings", content=body, headers=headers)


@pytest.fixture(params=["embedded", "redis"], scope="module")
def idem_api(request, tiny_checkpoint, redis_url):
    store = None
    if request.param == "redis":
        from server.store.redis_backend import RedisStore

        store = RedisStore(redis_url, prefix="test-idem-" + secrets.token_hex(4))
    with InProcessApi(tiny_checkpoint, store=store) as api:
        yield api


def test_a_retry_gets_the_same_answer_and_is_counted_once(idem_api):
    api = idem_api
    aid, key = api.new_account("free")
    c = api.client(key)
    body = _body(3)
    first = _post(c, body, "req-1")
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    again = _post(c, body, "req-1")
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["data"] == first.json()["data"] and again.json()["usage"] == first.json()["usage"]
    assert _usage(api, aid) == (1, 3)
    # the same body under another key (or none) is a new request, counted
    assert _post(c, body, "req-2").status_code == 200 and _post(c, body, None).status_code == 200
    assert _usage(api, aid) == (3, 9)


def test_a_key_reused_for_another_body_is_refused(idem_api):
    aid, key = idem_api.new_account("free")
    c = idem_api.client(key)
    assert _post(c, _body(), "k").status_code == 200
    assert_error(_post(c, _body(), "k"), 422, "idempotency_key_reused", "Idempotency-Key")
    assert _usage(idem_api, aid) == (1, 2)


def test_keys_belong_to_their_account(idem_api):
    body = _body()
    _, k1 = idem_api.new_account("free")
    a2, k2 = idem_api.new_account("free")
    assert _post(idem_api.client(k1), body, "shared").status_code == 200
    r = _post(idem_api.client(k2), body, "shared")
    assert r.status_code == 200 and "idempotent-replayed" not in r.headers
    assert _usage(idem_api, a2) == (1, 2)


def test_a_running_request_holds_its_key(idem_api):
    api = idem_api
    aid, key = api.new_account("free")
    body = _body()
    claim = (hashlib.sha256(b"busy").hexdigest(), hashlib.sha256(body).hexdigest(), "other-request")
    held = asyncio.run(api.state.store.idempotency_claim(aid, *claim, 60_000)) if api.state.store.backend == "embedded" \
        else api._tc.portal.call(api.state.store.idempotency_claim, aid, *claim, 60_000)
    assert held.state == "new"
    r = _post(api.client(key), body, "busy")
    assert_error(r, 409, "idempotency_in_progress", "Idempotency-Key")
    assert r.headers["retry-after"] == "1"
    assert _usage(api, aid) == (0, 0)


def test_a_failed_request_frees_its_key(idem_api):
    api = idem_api
    aid, key = api.new_account("tiny")  # 3 requests per window
    c = api.client(key)
    bad = json.dumps({"input": ["bm90IGFuIGltYWdl"]}).encode()  # base64 of "not an image"
    first = _post(c, bad, "bad")
    assert first.status_code in (400, 422) and first.json()["error"]["type"] == "invalid_image"
    assert _post(c, bad, "bad").status_code == first.status_code  # not 409: the failure released the key
    body = _body(1)
    for i in range(3):
        assert _post(c, _body(1), f"fill-{i}").status_code == 200
    assert_error(_post(c, body, "late"), 429, "rate_limit_exceeded")
    assert _post(c, body, "late").status_code == 429  # refused, not replayed, not held
    assert _usage(api, aid)[0] == 3


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "caf\u00e9"])
def test_malformed_keys(api, key):
    _, k = api.new_account("free")
    headers = {"Authorization": f"Bearer {k}", "Content-Type": "application/json", "Idempotency-Key": key}
    try:
        r = api._tc.post("/v1/embeddings", content=_body(1), headers=headers)
    except UnicodeEncodeError:  # httpx refuses a non-ASCII header value itself
        return
    assert_error(r, 400, "invalid_request_error", "Idempotency-Key")


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_a_request_that_outlived_its_lease_counts_nothing(backend, redis_url):
    """A slow request whose lease ran out while a retry took the key over commits nothing."""
    from server.accounts import make_account
    from server.config import RateLimit
    from server.store import IdempotentAnswer, RequestRecord
    from server.store.memory import MemoryStore
    from server.store.redis_backend import RedisStore

    async def go() -> None:
        store = MemoryStore() if backend == "embedded" else RedisStore(redis_url, prefix="test-lease-" + secrets.token_hex(4))
        acct, _ = make_account("slow-" + secrets.token_hex(3), "free")
        await store.add(acct)
        assert (await store.idempotency_claim(acct.id, "k", "d", "slow", 50)).state == "new"
        await asyncio.sleep(0.2)  # the slow request's lease runs out
        assert (await store.idempotency_claim(acct.id, "k", "d", "retry", 10_000)).state == "new"
        slow = await store.commit(acct.id, RequestRecord(images=2, idempotent=IdempotentAnswer("k", "d", b"1,1|abcd", 60_000, "slow")),
                                  RateLimit())
        assert slow.status == "superseded"
        await store.idempotency_release(acct.id, "k", "d", "slow")  # not its claim any more: kept
        assert (await store.idempotency_claim(acct.id, "k", "d", "third", 10_000)).state == "pending"
        retry = await store.commit(acct.id, RequestRecord(images=2, idempotent=IdempotentAnswer("k", "d", b"1,1|abcd", 60_000, "retry")),
                                   RateLimit())
        assert retry.status == "ok"
        assert (await store.usage(acct.id)).images == 2
        assert (await store.idempotency_claim(acct.id, "k", "d", "fourth", 10_000)).payload == b"1,1|abcd"
        await store.close()

    asyncio.run(go())
