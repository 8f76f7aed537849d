"""``heist-server serve --workers N``: several processes on one port, one Redis, decisions as one server."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import signal
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.proc import child_pids, is_alive
from shared.proc import run as run_child
from testbed.services import server_env, start_redis, start_server

pytestmark = [pytest.mark.live, pytest.mark.slow]

ADMIN = "workers-admin-" + secrets.token_hex(8)


def _png() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _workers(parent: int, n: int = 2, timeout_s: float = 60) -> list[int]:
    """The parent's child processes, once there are ``n`` of them (or the time runs out)."""
    deadline = time.monotonic() + timeout_s
    while len(child_pids(parent)) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    return child_pids(parent)


@pytest.fixture()
def two_workers(tiny_checkpoint, tmp_path):
    redis = start_redis(tmp_path / "redis")
    cfg = tmp_path / "server.json"
    cfg.write_text(json.dumps({"tiers": {"tight": {"rate_limit": {"window_s": 600, "requests": 5}}}}))
    env = server_env(ADMIN, "s" * 32, redis_url=redis.url, HEIST_MAX_IMAGES_PER_REQUEST="2")
    server = start_server(tiny_checkpoint, env, tmp_path / "server.log", config_file=cfg, args=["--workers", "2"],
                          ready_path="/readyz")
    try:
        yield server
    finally:
        server.stop()
        redis.stop()


def test_two_workers_answer_as_one_server(two_workers):
    server = two_workers
    workers = _workers(server.proc.pid)
    assert len(workers) >= 2, workers
    key = httpx.post(server.url + "/v1/admin/accounts", json={"name": "w", "tier": "tight"},
                     headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).json()["api_key"]
    body = {"model": None, "input": [_png()]}
    model = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    body["model"] = model["data"][0]["id"]
    codes = []
    for _ in range(10):  # a new connection each time: the kernel spreads them over the workers
        with httpx.Client(timeout=60) as c:
            codes.append(c.post(server.url + "/v1/embeddings", json=body,
                                headers={"Authorization": f"Bearer {key}"}).status_code)
    # one window of 5 requests for the account, whichever worker answered (the models call counted none)
    assert codes.count(200) == 5 and codes.count(429) == 5, codes
    # a setting from the environment reached every worker through the parent's validated config
    three = {**body, "input": [_png()] * 3}
    r = httpx.post(server.url + "/v1/embeddings", json=three, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.status_code == 400 and "2" in r.json()["error"]["message"]


def test_workers_end_with_a_killed_parent(two_workers):
    server = two_workers
    workers = _workers(server.proc.pid)
    assert len(workers) >= 2
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    deadline = time.monotonic() + 20
    while any(is_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(is_alive(p) for p in workers), [p for p in workers if is_alive(p)]


def test_workers_need_redis(tiny_checkpoint):
    env = server_env(ADMIN, "s" * 32)
    out = run_child([sys.executable, "-m", "server.cli", "serve", "--checkpoint", str(tiny_checkpoint), "--workers", "2"],
                    env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "workers > 1 needs redis_url" in out.stderr
