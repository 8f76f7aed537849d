"""The store under stress, through real servers: two API processes sharing one Redis, and a Redis
that goes away mid-run and comes back (private redis-server instances on their own ports)."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from shared.images import encode_image
from tests.support import SERVER_TEST_CONFIG, Victim, wait_http

pytestmark = pytest.mark.live

IMGS = [encode_image(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)) for i in range(2)]


def test_two_processes_share_one_consistent_set_of_counters(server_factory, redis_server_factory):
    red = redis_server_factory()
    a = Victim(server_factory(red.url, "shared", wait=False), red.url, "shared")
    b = Victim(server_factory(red.url, "shared"), red.url, "shared")
    wait_http(a.url + "/readyz")
    aid, key = a.new_account("free")
    tid, tkey = b.new_account("tiny")  # 3 requests per window, created through the other replica
    urls = itertools.cycle([a.url, b.url])
    jobs = [(next(urls), key) for _ in range(60)]
    jobs += [(next(urls), tkey) for _ in range(20)]

    def call(job):
        url, k = job
        return httpx.post(url + "/v1/embeddings", json={"input": IMGS}, headers={"Authorization": f"Bearer {k}"}, timeout=60).status_code

    with ThreadPoolExecutor(16) as ex:
        codes = list(ex.map(call, jobs))
    assert codes[:60] == [200] * 60
    assert sorted(codes[60:]) == [200] * 3 + [429] * 17, "the rate limit must hold across replicas"
    for v in (a, b):  # both replicas read the same counters
        assert v.admin.get(f"/v1/admin/accounts/{aid}").json()["usage"] == {"requests": 60, "images": 120, "counters": {}}
        assert v.admin.get(f"/v1/admin/accounts/{tid}").json()["usage"]["requests"] == 3
    # a revocation through one replica is seen by the other at once
    a.admin.post(f"/v1/admin/accounts/{aid}/revoke")
    r = httpx.post(b.url + "/v1/embeddings", json={"input": IMGS}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403 and r.json()["error"]["message"] == "API key revoked"


@pytest.mark.timeout(120)
def test_redis_outage_fails_closed_and_recovers(server_factory, redis_server_factory):
    red = redis_server_factory()
    cfg = {**SERVER_TEST_CONFIG, "store_timeout_s": 0.5, "store_retry_after_s": 3}
    v = Victim(server_factory(red.url, "outage", config=cfg), red.url, "outage")
    aid, key = v.new_account("free")
    log: list[tuple[float, int, str | None, str]] = []
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=v.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/embeddings", json={"input": IMGS})
                etype = r.json().get("error", {}).get("type") if r.status_code != 200 else ""
                log.append((time.monotonic(), r.status_code, r.headers.get("retry-after"), etype))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(1.0)
        red.stop()  # mid-run
        t_down = time.monotonic()
        time.sleep(1.5)
        ready = httpx.get(v.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["store"] is False and ready.headers["retry-after"]
        assert httpx.get(v.url + "/healthz").status_code == 200  # alive, just not ready
        down = httpx.post(v.url + "/v1/embeddings", json={"input": IMGS}, headers={"Authorization": f"Bearer {key}"})
        assert down.status_code == 503 and down.headers["retry-after"] == "3"
        assert down.json()["error"] == {"type": "store_unavailable", "message": "account store unreachable; retry later", "param": None}
        assert v.admin.get("/v1/admin/accounts").status_code == 503
        red.start()  # same port, same AOF
        t_up = time.monotonic()
        deadline = t_up + 15
        while time.monotonic() < deadline and not any(ts > t_up and code == 200 for ts, code, _, _ in log):
            time.sleep(0.1)
    finally:
        stop.set()
        t.join(30)
    codes = [c for _, c, _, _ in log]
    assert set(codes) <= {200, 503}, f"only 200 or 503 (never a 500 or an undefended answer): {set(codes)}"
    assert all(ra for _, c, ra, _ in log if c == 503), "every 503 carries Retry-After"
    assert any(c == 503 and ts > t_down for ts, c, _, _ in log), "the outage was seen"
    assert any(c == 200 and ts > t_up for ts, c, _, _ in log), "service recovered by itself after Redis came back"
    assert readyz_ok(v)
    usage = v.admin.get(f"/v1/admin/accounts/{aid}").json()["usage"]
    n200 = codes.count(200)
    assert usage["images"] == 2 * usage["requests"], "no half-counted request"
    # one request at most can be in flight at the instant Redis stops (committed, answer lost)
    assert n200 <= usage["requests"] <= n200 + 1, (usage, n200)


def readyz_ok(v: Victim) -> bool:
    for _ in range(50):
        if httpx.get(v.url + "/readyz").status_code == 200:
            return True
        time.sleep(0.1)
    return False
