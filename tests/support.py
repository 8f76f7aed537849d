"""Helpers the tests import (a plain module; the fixtures that use them live in the conftest.py files).

Two ways to reach the victim API:

- in process (:class:`InProcessApi`): ``create_app`` behind Starlette's ``TestClient`` (httpx over the
  ASGI interface, lifespan run), the embedded store unless one is given; no socket, no subprocess;
- live (:class:`Victim` on a :class:`testbed.services.ServerProcess`): the real ``heist-server serve``
  CLI on real uvicorn, usually with Redis; for what needs real processes (tests marked ``live``).
"""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx

from testbed import services
from testbed.services import free_port, wait_ready

REPO = Path(__file__).resolve().parents[1]
SERVER_ADMIN_TOKEN = "test-admin-" + secrets.token_urlsafe(16)
SERVER_TEST_CONFIG: dict[str, Any] = {
    "max_images_per_request": 8,
    "max_body_bytes": 1024 * 1024,
    "max_image_bytes": 256 * 1024,
    "max_image_pixels": 512 * 512,
    "max_batch": 16,
    "max_wait_ms": 3,
    "tiers": {
        "free": {"rate_limit": {"window_s": 60, "requests": 1000, "images": 10000}},
        "research": {"outputs": ["representation", "projection"]},
        "tiny": {"rate_limit": {"window_s": 60, "requests": 3}},
        "unlimited": {"outputs": ["representation", "projection"], "defences": [{"name": "noop"}]},
    },
}

__all__ = ["REPO", "SERVER_ADMIN_TOKEN", "SERVER_TEST_CONFIG", "InProcessApi", "Victim", "assert_error",
           "cleanup_prefix", "compose_env", "free_port", "metric", "server_env", "wait_http"]


def assert_error(r: httpx.Response, status: int, type_: str, param: str | None = None, msg: str | None = None) -> dict:
    """``r`` is the API's error answer: this status, error type, param and a message matching ``msg``."""
    from shared.schemas import ErrorResponse

    assert r.status_code == status, r.text
    body = ErrorResponse.model_validate(r.json()).error
    assert body.type == type_, r.text
    if param is not None:
        assert body.param == param, r.text
    if msg is not None:
        assert re.search(msg, body.message), body.message
    return r.json()


def metric(client, name: str, labels: str = "") -> float:
    """Sum of the Prometheus samples ``name`` (with ``labels`` in the label set) from ``GET /metrics``."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name) and (not labels or labels in line) and not line.startswith("#"):
            if line.split("{")[0].split(" ")[0] == name:
                total += float(line.rsplit(" ", 1)[1])
    return total


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200 (testbed.services.wait_ready, the demo's and benches' own)."""
    wait_ready(url, proc, timeout_s=timeout, path="")


def server_env(redis_url: str | None, prefix: str, **extra: str) -> dict[str, str]:
    """The test servers' environment: the shared admin token, a per-prefix secret, one torch thread."""
    return services.server_env(SERVER_ADMIN_TOKEN, "test-secret-" + prefix, redis_url=redis_url, prefix=prefix, **extra)


def cleanup_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` from the Redis at ``url``."""
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


class Victim:
    """A running server (real uvicorn subprocess) plus helpers: admin client, key creation."""

    def __init__(self, server: services.ServerProcess, redis_url: str | None, prefix: str) -> None:
        self.server, self.url, self.redis_url, self.prefix = server, server.url, redis_url, prefix
        self.admin = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {SERVER_ADMIN_TOKEN}"}, timeout=30)

    def new_account(self, tier: str = "free", name: str | None = None) -> tuple[str, str]:
        r = self.admin.post("/v1/admin/accounts", json={"name": name or f"user-{secrets.token_hex(4)}", "tier": tier})
        assert r.status_code == 201, r.text
        body = r.json()
        return body["account"]["id"], body["api_key"]

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


# ---- in process: create_app behind the ASGI transport ----------------------------------------------

# process-wide settings a served app applies at startup; an app inside the test process leaves them alone
IN_PROCESS_RUNTIME: dict[str, Any] = {"gc_freeze": False, "malloc_retain": False, "switch_interval_ms": None, "faiss_threads": None,
                                      "blas_threads": None, "torch_threads": None}


class _KeyClient:
    """One API key's view of an :class:`InProcessApi`: the shared TestClient (one event loop, the app's
    lifespan running) with this key's Authorization header on every request."""

    def __init__(self, tc, headers: dict[str, str]) -> None:
        self._tc, self.headers = tc, headers

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        return self._tc.request(method, url, headers={**self.headers, **(headers or {})}, **kw)

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def close(self) -> None:
        pass

    def __enter__(self) -> _KeyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class InProcessApi:
    """The victim API in this process: ``create_app(ServerConfig)`` served through Starlette's TestClient
    (httpx over ``ASGITransport``-style ASGI calls; the lifespan loads the model and starts the batcher).

    Same helpers as :class:`Victim` (``admin``, ``client(key)``, ``new_account``); ``url`` is the
    TestClient's base URL (no socket). ``store`` defaults to the embedded store; pass a RedisStore
    to talk to a real Redis. Use as a context manager."""

    def __init__(self, checkpoint: Path, config: dict[str, Any] | None = None, store=None, secret: str | None = None,
                 **fields: Any) -> None:
        from fastapi.testclient import TestClient

        from server.app import create_app
        from server.config import config_from

        self.secret = (secret or "test-secret-" + secrets.token_hex(8)).encode()
        data = {**(SERVER_TEST_CONFIG if config is None else config), **IN_PROCESS_RUNTIME, "checkpoint": checkpoint,
                "admin_token": SERVER_ADMIN_TOKEN, "server_secret": self.secret.decode(), **fields}
        # these fields only: ServerConfig(...) and model_validate also read HEIST_* from the environment
        self.config = config_from(data)
        self.app = create_app(self.config, store=store)
        self.state = self.app.state.heist
        self._tc = TestClient(self.app, raise_server_exceptions=False)
        self.url = str(self._tc.base_url)
        self.admin = _KeyClient(self._tc, {"Authorization": f"Bearer {SERVER_ADMIN_TOKEN}"})

    def __enter__(self) -> InProcessApi:
        self._tc.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._tc.__exit__(*exc)

    def new_account(self, tier: str = "free", name: str | None = None) -> tuple[str, str]:
        r = self.admin.post("/v1/admin/accounts", json={"name": name or f"user-{secrets.token_hex(4)}", "tier": tier})
        assert r.status_code == 201, r.text
        body = r.json()
        return body["account"]["id"], body["api_key"]

    def client(self, key: str | None = None, headers: dict[str, str] | None = None) -> _KeyClient:
        """Requests with ``key`` (None: no Authorization header) or with exactly ``headers``."""
        if headers is None:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
        return _KeyClient(self._tc, headers)


def compose_env(value: str, env: dict[str, str]) -> str:
    """docker-compose variable substitution: ${X}, ${X:-default}, ${X:?error}; $$ is a literal $."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose needs {name}: {arg}")
        return arg or ""
    return re.sub(r"\$\$|\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}", sub, value)
