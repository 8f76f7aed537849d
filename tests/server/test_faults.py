"""Faults with real parts: three ``heist-server serve`` replicas behind a native nginx
(deploy/nginx.conf), one Redis persisted with AOF (``appendfsync always``), load from the project's
own client (one Idempotency-Key per logical request, retries on 502/503/504).

- the replicas behave as one service: one rate-limit window, identical keyed noise, a PoW solution
  spent on one replica is refused by every other, the request id passes through the balancer;
- Redis killed (SIGKILL) and restarted mid-load: the API answers 503 with Retry-After meanwhile,
  recovers by itself, and every answered request is counted exactly once; spent PoW tokens stay
  spent across the restart;
- a replica killed (SIGKILL) mid-load: nginx sends new requests to the others; requests lost with
  it are retried under their key; every answered request is counted once, none twice.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import httpx
import numpy as np
import pytest

from shared import pow as hashcash
from shared.client import ApiClient
from shared.images import encode_image
from testbed.services import nginx_binary, server_env, start_nginx, start_redis, start_server

pytestmark = [pytest.mark.live, pytest.mark.slow,
              pytest.mark.skipif(nginx_binary() is None, reason="nginx not installed (apt-get install nginx-light)")]

ADMIN = "faults-admin-" + secrets.token_hex(8)
TIERS = {
    "plain": {},
    "tight": {"rate_limit": {"window_s": 600, "requests": 7}},
    "noise": {"defences": [{"name": "gaussian_noise", "params": {"sigma": 0.5}}]},
    "pow": {"defences": [{"name": "pow", "params": {"fixed_bits": 6}}]},
}
RNG = np.random.default_rng(5)


class Cluster:
    def __init__(self, checkpoint, tmp) -> None:
        self.checkpoint, self.tmp = checkpoint, tmp
        self.redis = start_redis(tmp / "redis")
        self.cfg = tmp / "server.json"
        self.cfg.write_text(json.dumps({"tiers": TIERS, "store_timeout_s": 0.5, "store_retry_after_s": 1}))
        self.env = server_env(ADMIN, "f" * 32, redis_url=self.redis.url, prefix="faults-" + secrets.token_hex(3))
        self.replicas = [self._start(i) for i in range(3)]
        self.lb = start_nginx(tmp / "nginx", [r.port for r in self.replicas])

    def _start(self, i: int):
        return start_server(self.checkpoint, self.env, self.tmp / f"replica{i}.log", config_file=self.cfg,
                            ready_path="/readyz")

    def key(self, tier: str) -> tuple[str, str]:
        r = httpx.post(self.lb.url + "/v1/admin/accounts", json={"name": f"{tier}-{secrets.token_hex(3)}", "tier": tier},
                       headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()["account"]["id"], r.json()["api_key"]

    def usage(self, aid: str) -> dict:
        return httpx.get(f"{self.lb.url}/v1/admin/accounts/{aid}", headers={"Authorization": f"Bearer {ADMIN}"},
                         timeout=30).json()["usage"]

    def stop(self) -> None:
        self.lb.stop()
        for r in self.replicas:
            r.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tiny_checkpoint, tmp_path_factory):
    c = Cluster(tiny_checkpoint, tmp_path_factory.mktemp("faults"))
    try:
        yield c
    finally:
        c.stop()


def _images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _body(images: np.ndarray) -> bytes:
    return json.dumps({"input": [encode_image(im, "PNG") for im in images]}).encode()


def _post(url: str, key: str, body: bytes, **headers: str) -> httpx.Response:
    with httpx.Client(timeout=60) as c:  # a new connection each time: nginx spreads them
        return c.post(url + "/v1/embeddings", content=body,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers})


def test_replicas_behave_as_one_service(cluster):
    _, key = cluster.key("tight")
    body = _body(_images(1))
    codes = [_post(cluster.lb.url, key, body).status_code for _ in range(12)]
    assert codes.count(200) == 7 and codes.count(429) == 5, codes

    _, key = cluster.key("noise")
    body = _body(_images(2))
    answers = [_post(r.url, key, body).json()["data"] for r in cluster.replicas]
    assert answers[0] == answers[1] == answers[2]  # keyed noise: same secret, same account, same image

    _, key = cluster.key("pow")
    body = _body(_images(1))
    first = _post(cluster.replicas[0].url, key, body)
    assert first.status_code == 428
    challenge = first.json()["challenge"]
    nonce, _ = hashcash.solve(challenge["token"], int(challenge["difficulty"]))
    solution = {hashcash.HEADER: f"{challenge['token']}:{nonce}"}
    assert _post(cluster.replicas[1].url, key, body, **solution).status_code == 200  # solved on another replica
    for r in (cluster.replicas[0], cluster.replicas[2], cluster.replicas[1]):
        again = _post(r.url, key, body, **solution)
        assert again.status_code == 428 and "replayed" in again.json()["error"]["message"]

    rid = "trace-" + secrets.token_hex(4)
    assert _post(cluster.lb.url, key, body, **{"X-Request-Id": rid}).headers["x-request-id"] == rid


async def _load(url: str, key: str, images: np.ndarray, during, batch: int = 4) -> dict:
    async with ApiClient(url, key, concurrency=8, max_retries=60, max_wait_s=3600, backoff_s=0.2) as client:
        task = asyncio.create_task(client.embed(images, batch_size=batch))
        while client.stats.ok_requests < 10:  # under way
            await asyncio.sleep(0.05)
        await asyncio.to_thread(during)
        mid_load = not task.done()
        out = await task
        return {"rows": len(out), "fault_mid_load": mid_load, **client.stats.as_dict()}


def test_redis_killed_and_restarted_under_load(cluster):
    aid, key = cluster.key("plain")
    _, pow_key = cluster.key("pow")
    body = _body(_images(1))
    first = _post(cluster.lb.url, pow_key, body)
    challenge = first.json()["challenge"]
    nonce, _ = hashcash.solve(challenge["token"], int(challenge["difficulty"]))
    solution = {hashcash.HEADER: f"{challenge['token']}:{nonce}"}
    assert _post(cluster.lb.url, pow_key, body, **solution).status_code == 200
    seen_503: list[int] = []

    def kill_and_restart() -> None:
        cluster.redis.kill()
        r = _post(cluster.lb.url, key, _body(_images(1)))
        seen_503.append(r.status_code)
        assert r.status_code == 503 and r.headers.get("retry-after") == "1", r.text
        time.sleep(2)
        cluster.redis.start()

    images = _images(480)
    stats = asyncio.run(_load(cluster.lb.url, key, images, kill_and_restart))
    assert stats["rows"] == len(images) and stats["unavailable"] > 0 and stats["fault_mid_load"], stats
    usage = cluster.usage(aid)
    print(f"redis restarted: answered {stats['rows']} images, counted {usage['images']}; "
          f"503 {stats['unavailable']}, replayed {stats['replayed']}, retries {stats['retries']}")
    # answered == counted == charged: every image served once, none twice
    assert usage["images"] == len(images) and usage["requests"] == len(images) // 4, (usage, stats)
    again = _post(cluster.lb.url, pow_key, body, **solution)  # the token was spent before the crash
    assert again.status_code == 428 and "replayed" in again.json()["error"]["message"]


def test_replica_killed_under_load(cluster):
    aid, key = cluster.key("plain")
    victim = cluster.replicas[1]

    def kill() -> None:
        victim.proc.kill()
        victim.proc.wait(10)

    images = _images(1200)
    stats = asyncio.run(_load(cluster.lb.url, key, images, kill))  # the last test: the replica stays down
    assert stats["rows"] == len(images) and stats["fault_mid_load"], stats
    usage = cluster.usage(aid)
    print(f"replica killed: answered {stats['rows']} images, counted {usage['images']}; "
          f"502/504 {stats['bad_gateway']}, replayed {stats['replayed']}, retries {stats['retries']}")
    assert usage["images"] == len(images) and usage["requests"] == len(images) // 4, (usage, stats)
