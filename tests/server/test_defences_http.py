"""Defences over HTTP, in process (``create_app`` behind the ASGI transport, embedded store): PoW
refusal cases, a correct solution served once, keyed noise, similar-query noise and sybil pairs, B4B
stats and per-account transforms, calibrated PoW from a profile file; bad defence configs refused."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from shared.images import encode_image
from shared.pow import make_challenge, solve, work_of
from shared.schemas import decode_embeddings
from tests.support import InProcessApi

RNG = np.random.default_rng(7)
IMGS = [encode_image(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(6)]


def _body(*imgs: str) -> bytes:
    return json.dumps({"input": list(imgs), "encoding_format": "base64"}).encode()


def _post(client, body: bytes, solution: str | None = None):
    headers = {"Content-Type": "application/json"}
    if solution:
        headers["X-PoW-Solution"] = solution
    return client.post("/v1/embeddings", content=body, headers=headers)


def _pow_refused(r, reason: str | None) -> dict:
    assert r.status_code == 428, r.text
    body = r.json()
    assert body["error"]["type"] == "pow_required" and body["error"]["param"] == "X-PoW-Solution"
    if reason:
        assert f"({reason})" in body["error"]["message"], body["error"]["message"]
    ch = body["challenge"]
    assert ch["algorithm"] == "SHA-256" and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", ch["expires_at"])
    return ch


def _solved(ch: dict) -> str:
    nonce, _ = solve(ch["token"], ch["difficulty"])
    return f"{ch['token']}:{nonce}"


PROFILE = {"images": [2, 4], "coverage": [1.0, 1.0], "similar_rate": 1.0, "volume": 4,
           "lsh": {"hyperplanes": 4, "hash_sets": 2}, "similarity": {"space": "projection", "metric": "cosine", "tau": 0.999}}


def _center_file(tiny_checkpoint, path):
    """Mean representation of the test images (B4B hashes centred outputs, like the recorded profile)."""
    import torch

    from shared.checkpoint import load_checkpoint
    from shared.images import ImageLimits, preprocess

    ck = load_checkpoint(tiny_checkpoint)
    x = torch.from_numpy(preprocess(IMGS, 32, ImageLimits())).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        path.write_text(json.dumps({"center": ck.encoder(x).mean(0).tolist()}))
    return str(path)


@pytest.fixture(scope="module")
def dv(tmp_path_factory, tiny_checkpoint):
    d = tmp_path_factory.mktemp("profile")
    prof = d / "legit.json"
    prof.write_text(json.dumps(PROFILE))
    center = _center_file(tiny_checkpoint, d / "center.json")
    sim = {"name": "similar_query", "params": {"tau": 0.999, "noise_mean": 1000, "noise_sigma": 1}}
    config = {
        "max_images_per_request": 8, "max_batch": 16, "max_wait_ms": 2,
        "tiers": {
            "pow": {"defences": [{"name": "pow", "params": {"fixed_bits": 8, "ttl_s": 60}}]},
            "noise": {"defences": [{"name": "gaussian_noise", "params": {"mean": 10, "sigma": 1}}]},
            "sim": {"defences": [sim]},
            "simrefuse": {"defences": [{"name": "similar_query", "params": {"tau": 0.999, "action": "refuse", "global_index": False}}]},
            "b4b": {"defences": [{"name": "b4b", "params": {"hyperplanes": 4, "hash_sets": 2, "lam": 1e-3, "beta": 0.5,
                                                            "transform": "affine", "center_from": center}}]},
            "calibrated": {"defences": [
                {"name": "b4b", "params": {"hyperplanes": 4, "hash_sets": 2, "noise": False}}, sim,
                {"name": "pow", "params": {"profile": str(prof), "min_bits": 4, "max_bits": 6, "w_similar": 0}}]},
        },
    }
    with InProcessApi(tiny_checkpoint, config) as v:  # v.secret: the server secret (to forge and expire challenges)
        yield v


def _stats(v, aid) -> dict:
    r = v.admin.get(f"/v1/admin/accounts/{aid}/defences")
    assert r.status_code == 200, r.text
    return r.json()


def test_pow_challenge_then_correct_solution_served_once(dv):
    aid, key = dv.new_account("pow")
    c = dv.client(key)
    body = _body(IMGS[0])
    ch = _pow_refused(_post(c, body), None)
    assert ch["difficulty"] == 8
    sol = _solved(ch)
    r = _post(c, body, sol)
    assert r.status_code == 200 and decode_embeddings(r.json()).shape == (1, 32)
    _pow_refused(_post(c, body, sol), "replayed")  # spent once: a replay is refused
    s = _stats(dv, aid)
    assert (s["pow_solved"], s["pow_bits_paid"], s["pow_challenges"], s["pow_bits_asked"], s["images"]) == (1, 8, 2, 16, 1)
    m = dv.admin.get("/metrics").text
    assert 'heist_defence_actions_total{action="paid",defence="pow"} 1.0' in m
    assert 'heist_defence_actions_total{action="challenge_replayed",defence="pow"} 1.0' in m


def test_pow_refusals_wrong_nonce_expired_other_account_other_body_forged(dv):
    aid, key = dv.new_account("pow")
    bid, bkey = dv.new_account("pow")
    c, cb = dv.client(key), dv.client(bkey)
    body, other = _body(IMGS[1]), _body(IMGS[2])
    ch = _pow_refused(_post(c, body), None)
    bad = next(n for n in range(1000) if work_of(ch["token"], n) < ch["difficulty"])
    _pow_refused(_post(c, body, f"{ch['token']}:{bad}"), "insufficient_work")
    old = make_challenge(dv.secret, aid, body, 8, ttl_s=5, now=1_000_000.0)  # properly signed, long expired
    _pow_refused(_post(c, body, f"{old.token}:{solve(old.token, 8)[0]}"), "expired")
    chb = _pow_refused(_post(cb, body), None)  # issued to account B
    _pow_refused(_post(c, body, _solved(chb)), "wrong_account")
    _pow_refused(_post(c, other, _solved(ch)), "wrong_body")
    forged = make_challenge(b"not-the-server-secret", aid, body, 8)
    _pow_refused(_post(c, body, f"{forged.token}:{solve(forged.token, 8)[0]}"), "bad_signature")
    _pow_refused(_post(c, body, "garbage"), "malformed")
    assert _post(c, body, _solved(ch)).status_code == 200  # the real one still works after all that
    assert _stats(dv, aid)["images"] == 1


def test_keyed_noise_is_deterministic_per_account_and_image(dv):
    _, k1 = dv.new_account("noise")
    _, k2 = dv.new_account("noise")
    c1, c2 = dv.client(k1), dv.client(k2)
    a = decode_embeddings(_post(c1, _body(IMGS[0], IMGS[1])).json())
    b = decode_embeddings(_post(c1, _body(IMGS[1], IMGS[0])).json())
    assert np.array_equal(a[0], b[1]) and np.array_equal(a[1], b[0])  # averaging repeats gains nothing
    other = decode_embeddings(_post(c2, _body(IMGS[0])).json())
    assert not np.allclose(other[0], a[0])
    assert 5 < float(np.mean(a)) < 15  # mean-10 noise on small representations


def test_similar_query_noise_history_and_sybils(dv):
    aid, key = dv.new_account("sim")
    bid, bkey = dv.new_account("sim")
    c = dv.client(key)
    first = decode_embeddings(_post(c, _body(IMGS[3], IMGS[4])).json())
    assert np.abs(first).max() < 100
    again = decode_embeddings(_post(c, _body(IMGS[5], IMGS[3])).json())  # IMGS[3] seen before: heavy noise
    assert np.abs(again[0]).max() < 100 and again[1].mean() > 900
    inreq = decode_embeddings(_post(c, _body(IMGS[0], IMGS[0])).json())  # duplicate inside one request
    assert inreq[0].mean() < 100 and inreq[1].mean() > 900
    s = _stats(dv, aid)
    assert s["similar_hits"] == 2 and s["history"] == 6 and s["images"] == 6
    # another key sending the same image: a sybil pair (its own history is fresh: no similar hit)
    out = decode_embeddings(_post(dv.client(bkey), _body(IMGS[4])).json())
    assert out.mean() < 100
    sb = _stats(dv, bid)
    assert sb["sybil_hits"] == 1 and sb["sybil_peers"] == {aid: 1} and sb["similar_hits"] == 0
    assert _stats(dv, aid)["sybil_peers"] == {bid: 1}


def test_similar_query_refuse(dv):
    aid, key = dv.new_account("simrefuse")
    c = dv.client(key)
    assert _post(c, _body(IMGS[1])).status_code == 200
    r = _post(c, _body(IMGS[2], IMGS[1]))
    assert r.status_code == 403 and r.json()["error"]["type"] == "similar_query_refused"
    s = _stats(dv, aid)
    assert s["similar_hits"] == 1 and s["images"] == 1 and s["requests"] == 2 and s["history"] == 1


def test_b4b_coverage_stats_and_per_account_transform(dv):
    aid, key = dv.new_account("b4b")
    _, key2 = dv.new_account("b4b")
    a = decode_embeddings(_post(dv.client(key), _body(IMGS[0])).json())
    b = decode_embeddings(_post(dv.client(key2), _body(IMGS[0])).json())
    assert a.shape == b.shape == (1, 32) and not np.allclose(a, b)  # keyed affine per account
    s1 = _stats(dv, aid)
    assert s1["coverage"] == pytest.approx(1 / 16) and s1["coverage_bits"] == 2  # one bucket of 16 in each of 2 sets
    _post(dv.client(key), _body(*IMGS))
    s2 = _stats(dv, aid)
    assert s2["coverage"] > s1["coverage"] and s2["sigma"] > 0 and s2["coverage_bits"] >= 3
    assert "heist_b4b_sigma_count" in dv.admin.get("/metrics").text


def test_calibrated_pow_free_inside_profile_then_charged(dv):
    aid, key = dv.new_account("calibrated")
    c = dv.client(key)
    for i in range(3):  # 0, 2, 4 images sent so far: within the legit profile (volume 4), no PoW
        assert _post(c, _body(IMGS[2 * i], IMGS[2 * i + 1])).status_code == 200
    assert _stats(dv, aid)["pow_bits"] == 0
    body = _body(IMGS[0], IMGS[5])
    ch = _pow_refused(_post(c, body), None)  # 6 images > the legitimate volume: charged now
    assert 4 <= ch["difficulty"] <= 6
    assert _post(c, body, _solved(ch)).status_code == 200
    s = _stats(dv, aid)
    assert s["pow_bits"] == ch["difficulty"] and s["pow_deviation"] > 0 and s["pow_bits_paid"] == ch["difficulty"]


def test_bad_defence_config_is_a_clear_error(tmp_path):
    from server.app import create_app
    from server.config import ConfigError, load_config

    f = tmp_path / "c.json"
    for tiers, msg in [
        ({"x": {"defences": [{"name": "pow", "params": {}}]}}, "exactly one of profile"),
        ({"x": {"defences": [{"name": "pow", "params": {"profile": str(tmp_path / "none.json")}}]}}, "not found"),
        ({"x": {"defences": [{"name": "similar_query", "params": {"tau": 3}}]}}, "cosine tau"),
        ({"x": {"defences": [{"name": "b4b", "params": {"transform": "pad_shuffle"}}]}}, "pad > 0"),
        ({"x": {"defences": [{"name": "rounding", "params": {}}]}}, "exactly one of decimals or step"),
        ({"x": {"defences": [{"name": "gaussian_noise", "params": {"sigma": -1}}]}}, "sigma"),
    ]:
        f.write_text(json.dumps({"tiers": tiers}))
        with pytest.raises(ConfigError, match=msg):
            create_app(load_config(f, env={}))
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(PROFILE))
    f.write_text(json.dumps({"tiers": {"x": {"defences": [{"name": "pow", "params": {"profile": str(prof)}}]}}}))
    with pytest.raises(ConfigError, match="needs the b4b defence"):
        create_app(load_config(f, env={}))
