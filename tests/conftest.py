"""Shared fixtures. Tests that need the store talk to a real Redis (see tests that use it)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory):
    """A private dataset cache for the test session (never the user's data/ folder)."""
    root = tmp_path_factory.mktemp("heist-data")
    os.environ["HEIST_DATA_DIR"] = str(root)
    return root


# ---- victim API (server) fixtures: real redis-server, real uvicorn subprocesses --------------------

import json  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERVER_ADMIN_TOKEN = "test-admin-" + secrets.token_urlsafe(16)
SERVER_TEST_CONFIG = {
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


from shared.proc import popen  # noqa: E402
from testbed import services  # noqa: E402
from testbed.services import free_port, wait_ready  # noqa: E402,F401  (free_port re-exported for the tests)


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200 (testbed.services.wait_ready, the demo's and benches' own)."""
    wait_ready(url, proc, timeout_s=timeout, path="")


class RedisServer:
    """A private redis-server on its own port (AOF with fsync always, so restarts keep data)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                                      "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"], capture_output=True)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def redis_server_factory(tmp_path):
    """Start private redis-servers (skips when redis-server is not installed); stopped at teardown."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    started: list[RedisServer] = []

    def make() -> RedisServer:
        d = tmp_path / f"redis{len(started)}"
        d.mkdir()
        r = RedisServer(d).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared test Redis (REDIS_URL, default 127.0.0.1:6379); skip when none answers."""
    import redis

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as e:
        pytest.skip(f"no Redis at {url}: {e}")
    return url


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-init width-4 ResNet-18 with a head (never trained: tests only need a real model)."""
    from shared.checkpoint import Checkpoint, EncoderConfig, HeadSpec, save_checkpoint
    from shared.models import representation_dim

    torch.manual_seed(0)
    cfg = EncoderConfig(arch="resnet18", width=4, representation_dim=representation_dim("resnet18", 4),
                        head=HeadSpec(hidden_dim=32, out_dim=16))
    return save_checkpoint(Checkpoint(cfg), tmp_path_factory.mktemp("ckpt") / "victim-tiny")


def server_env(redis_url: str | None, prefix: str, **extra: str) -> dict[str, str]:
    """The test servers' environment: the shared admin token, a per-prefix secret, one torch thread."""
    return services.server_env(SERVER_ADMIN_TOKEN, "test-secret-" + prefix, redis_url=redis_url, prefix=prefix, **extra)



@pytest.fixture(scope="session")
def server_factory(tmp_path_factory, tiny_checkpoint):
    """Start ``heist-server serve`` subprocesses (the real CLI, real uvicorn) on free loopback ports."""
    procs: list[services.ServerProcess] = []
    root = tmp_path_factory.mktemp("servers")
    cfg_file = root / "server.json"
    cfg_file.write_text(json.dumps(SERVER_TEST_CONFIG))

    def start(redis_url: str | None, prefix: str, config: dict | None = None, wait: bool = True, **env: str) -> services.ServerProcess:
        port = free_port()
        cf = cfg_file
        if config is not None:
            cf = root / f"server-{port}.json"
            cf.write_text(json.dumps(config))
        sp = services.start_server(tiny_checkpoint, server_env(redis_url, prefix, **env), root / f"server-{port}.log",
                                   config_file=cf, port=port, wait=wait, timeout_s=90)
        procs.append(sp)
        return sp

    yield start
    for p in procs:
        p.stop()


def cleanup_prefix(url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


class Victim:
    """A running server plus helpers: admin client, key creation."""

    def __init__(self, server: services.ServerProcess, redis_url: str | None, prefix: str) -> None:
        import httpx

        self.server, self.url, self.redis_url, self.prefix = server, server.url, redis_url, prefix
        self.admin = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {SERVER_ADMIN_TOKEN}"}, timeout=30)

    def new_account(self, tier: str = "free", name: str | None = None) -> tuple[str, str]:
        r = self.admin.post("/v1/admin/accounts", json={"name": name or f"user-{secrets.token_hex(4)}", "tier": tier})
        assert r.status_code == 201, r.text
        body = r.json()
        return body["account"]["id"], body["api_key"]

    def client(self, key: str | None):
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="session")
def victim(server_factory, redis_url) -> Victim:
    """One victim API for the session, on the shared Redis under a private key prefix."""
    prefix = "heist-test-" + secrets.token_hex(4)
    v = Victim(server_factory(redis_url, prefix), redis_url, prefix)
    yield v
    v.admin.close()
    cleanup_prefix(redis_url, prefix)


def compose_env(value: str, env: dict[str, str]) -> str:
    """docker-compose variable substitution: ${X}, ${X:-default}, ${X:?error}; $$ is a literal $."""
    import re

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose needs {name}: {arg}")
        return arg or ""
    return re.sub(r"\$\$|\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}", sub, value)


@pytest.fixture(scope="session")
def trained_victim(data_root, tmp_path_factory) -> Path:
    """A tiny victim really trained (1 epoch, width 4, 5% data) with its watermark, data spec,
    metrics and legitimate profile: what the demo, the compose scenario and the defender need."""
    from shared.data.synthetic import DataSpec
    from shared.train import get_preset
    from shared.train.evaluate import full_report
    from shared.train.simclr import finalize, train
    from testbed.profile import record_profile

    spec = DataSpec().scaled(0.05)
    out = tmp_path_factory.mktemp("trained") / "victim"
    cfg = get_preset("tiny").model_copy(update={"width": 4, "epochs": 1, "data": spec})
    outcome = train(cfg, out, progress=False)
    finalize(outcome, out, full_report(outcome.checkpoint, spec, torch.device("cpu"), None, with_baseline=False))
    prof, _ = record_profile(out, users=2, images=150, classes=3, attacker_images=200, spec=spec)
    prof.save(out / "legit_profile.json")
    return out
