"""API keys and the admin endpoints: missing, wrong and revoked keys, the admin guard, account
listing and errors (in process); keys stored only as hashes in a live server's Redis."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from shared.images import encode_image
from tests.support import SERVER_ADMIN_TOKEN
from tests.support import assert_error as _err

RNG = np.random.default_rng(1)


def _img(h=40, w=48) -> str:
    return encode_image(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_missing_wrong_revoked_keys(api):
    body = {"input": [_img()]}
    _err(api.client(None).post("/v1/embeddings", json=body), 401, "authentication_error", None, "missing API key")
    _err(api.client("heist_" + "x" * 43).post("/v1/embeddings", json=body), 401, "authentication_error", None, "invalid API key")
    _err(api.client(headers={"Authorization": "Basic dXNlcjpwYXNz"}).post("/v1/embeddings", json=body),
         401, "authentication_error")
    aid, key = api.new_account("free")
    with api.client(key) as c:
        assert c.post("/v1/embeddings", json=body).status_code == 200
        info = api.admin.post(f"/v1/admin/accounts/{aid}/revoke").json()
        assert info["revoked"] is True and info["usage"]["requests"] == 1
        _err(c.post("/v1/embeddings", json=body), 403, "permission_error", None, "revoked")


def test_admin_endpoints_guarded(api):
    _err(api.client(None).get("/v1/admin/accounts"), 401, "authentication_error", None, "admin token")
    _err(api.client(SERVER_ADMIN_TOKEN[:-1] + "x").get("/v1/admin/accounts"), 401, "authentication_error")
    aid, key = api.new_account("free", name="listed-user")
    _err(api.client(key).get("/v1/admin/accounts"), 401, "authentication_error")
    rows = api.admin.get("/v1/admin/accounts").json()["data"]
    assert any(r["id"] == aid and r["name"] == "listed-user" for r in rows)
    assert all("key" not in json.dumps(r).lower() or "key_hash" not in r for r in rows)
    assert api.admin.get("/v1/admin/accounts/listed-user").json()["id"] == aid
    _err(api.admin.get("/v1/admin/accounts/acct_nope"), 404, "not_found")
    _err(api.admin.post("/v1/admin/accounts", json={"name": "listed-user", "tier": "free"}), 409, "conflict", "name")
    _err(api.admin.post("/v1/admin/accounts", json={"name": "z", "tier": "platinum"}), 422, "invalid_request_error", "tier")


@pytest.mark.live
def test_keys_stored_only_as_hashes(victim):
    import redis

    aid, key = victim.new_account("free")
    r = redis.Redis.from_url(victim.redis_url)
    text = lambda b: b.decode("latin-1")  # noqa: E731  (values may be binary: cached answers, vectors)

    def value(k: bytes):
        kind = r.type(k)
        if kind == b"hash":
            return {text(f): text(v) for f, v in r.hgetall(k).items()}
        return text(r.get(k)) if kind == b"string" else None
    dump = json.dumps({text(k): value(k) for k in r.scan_iter(match=f"{victim.prefix}:*")})
    assert key not in dump and key[6:] not in dump
    assert hashlib.sha256(key.encode()).hexdigest() in dump


def test_query_log_keeps_what_the_model_saw(tiny_checkpoint):
    """A tier with ``query_log: 5`` keeps each account's last 5 served images as the model saw them
    (decoded, resized, cropped): sent again as the returned PNGs they get the same answers. Refused
    requests are not logged, other tiers log nothing, and the endpoint is admin-only."""
    from shared.schemas import decode_embeddings
    from tests.support import SERVER_TEST_CONFIG, InProcessApi

    conf = {**SERVER_TEST_CONFIG, "tiers": {**SERVER_TEST_CONFIG["tiers"], "logged": {"query_log": 5}}}
    with InProcessApi(tiny_checkpoint, conf) as api:
        aid, key = api.new_account("logged")
        other, other_key = api.new_account("free")
        sent = [_img(40 + i, 48) for i in range(7)]
        with api.client(key) as c:
            first = c.post("/v1/embeddings", json={"input": sent[:3]})
            second = c.post("/v1/embeddings", json={"input": sent[3:]})
            assert first.status_code == second.status_code == 200
            _err(c.post("/v1/embeddings", json={"input": ["not an image"]}), 422, "invalid_image")
        with api.client(other_key) as c:
            assert c.post("/v1/embeddings", json={"input": sent[:2]}).status_code == 200
        _err(api.client(key).get(f"/v1/admin/accounts/{aid}/queries"), 401, "authentication_error")
        log = api.admin.get(f"/v1/admin/accounts/{aid}/queries").json()
        assert log["object"] == "query_log" and log["account_id"] == aid and len(log["images"]) == 5
        assert api.admin.get(f"/v1/admin/accounts/{other}/queries").json()["images"] == []
        _err(api.admin.get("/v1/admin/accounts/acct_nope/queries"), 404, "not_found")
        with api.client(key) as c:
            again = decode_embeddings(c.post("/v1/embeddings", json={"input": log["images"]}).json())
        served = np.concatenate([decode_embeddings(first.json()), decode_embeddings(second.json())])[2:]  # the last 5
        np.testing.assert_allclose(again, served, atol=1e-5)
