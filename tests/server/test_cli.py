"""``heist-server accounts`` (the real CLI, a subprocess) on the Redis a server uses: create, list,
revoke against a live server; ``show`` printing the defence state an in-process app wrote there."""

from __future__ import annotations

import json
import secrets
import sys

import numpy as np
import pytest

from server.store import open_store
from shared.images import encode_image
from shared.proc import run as run_child
from tests.support import REPO, InProcessApi, cleanup_prefix, server_env
from tests.support import assert_error as _err

pytestmark = pytest.mark.live
RNG = np.random.default_rng(2)


def _img(h=40, w=48) -> str:
    return encode_image(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _cli(env: dict[str, str], *args: str, timeout: float = 120):
    return run_child([sys.executable, "-m", "server.cli", "accounts", *args], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=timeout)


def test_cli_accounts_create_list_revoke(victim):
    env = server_env(victim.redis_url, victim.prefix)
    out = _cli(env, "create", "cli-user", "--tier", "free")
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("heist_") and len(key) > 40
    with victim.client(key) as c:
        assert c.post("/v1/embeddings", json={"input": [_img()]}).status_code == 200
    listed = _cli(env, "list", "--json")
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["cli-user"]["usage"] == {"requests": 1, "images": 1, "counters": {}}
    bad = _cli(env, "create", "cli-user2", "--tier", "platinum")
    assert bad.returncode == 2 and "unknown tier 'platinum'" in bad.stderr
    assert _cli(env, "revoke", "cli-user").returncode == 0
    with victim.client(key) as c:
        _err(c.post("/v1/embeddings", json={"input": [_img()]}), 403, "permission_error")


def test_accounts_show_prints_defence_stats(tiny_checkpoint, redis_url):
    prefix = "heist-cli-" + secrets.token_hex(4)
    sim = {"name": "similar_query", "params": {"tau": 0.999, "noise_mean": 1000, "noise_sigma": 1}}
    config = {"max_images_per_request": 8, "max_batch": 16, "max_wait_ms": 2, "tiers": {"sim": {"defences": [sim]}}}
    try:
        with InProcessApi(tiny_checkpoint, config, store=open_store(redis_url, prefix)) as api:
            aid, key = api.new_account("sim", name="cli-defence-user")
            img = _img(32, 32)
            body = json.dumps({"input": [img, img], "encoding_format": "base64"}).encode()
            assert api.client(key).post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"}).status_code == 200
        out = _cli(server_env(redis_url, prefix), "show", "cli-defence-user", timeout=60)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["id"] == aid and info["defences"]["similar_hits"] == 1 and info["defences"]["history"] == 2
    finally:
        cleanup_prefix(redis_url, prefix)
