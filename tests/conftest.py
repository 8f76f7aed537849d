"""Fixtures shared by every test package: data cache, Redis, checkpoints, the live victim API.

Helpers the tests import live in :mod:`tests.support`; the server's in-process fixtures in
``tests/server/conftest.py``. Fixtures named ``*server*``/``victim`` start real processes (uvicorn,
redis-server): tests that use them are marked ``live``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import pytest
import torch

from testbed import services
from testbed.services import RedisProcess, start_redis
from tests.support import SERVER_TEST_CONFIG, Victim, cleanup_prefix, free_port, server_env

# two threads per test process, split between pytest-xdist workers (-n) so that they do not oversubscribe the cores
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))

# fixtures that start real processes or reach a real Redis: a test using one is ``live`` even unmarked
LIVE_FIXTURES = frozenset({"victim", "server_factory", "redis_server_factory", "redis_url", "redis_cluster"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LIVE_FIXTURES.intersection(getattr(item, "fixturenames", ())) and item.get_closest_marker("live") is None:
            item.add_marker(pytest.mark.live)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory):
    """A private dataset cache for the test session (never the user's data/ folder)."""
    root = tmp_path_factory.mktemp("heist-data")
    os.environ["HEIST_DATA_DIR"] = str(root)
    return root


@pytest.fixture
def redis_server_factory(tmp_path):
    """Start private redis-servers (skips when redis-server is not installed); stopped at teardown."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    started: list[RedisProcess] = []

    def make() -> RedisProcess:
        r = start_redis(tmp_path / f"redis{len(started)}")  # AOF, fsync always: a restart keeps the data
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


@pytest.fixture(scope="session")
def victim(server_factory, redis_url) -> Victim:
    """One live victim API for the session (real uvicorn), on the shared Redis under a private key prefix."""
    prefix = "heist-test-" + secrets.token_hex(4)
    v = Victim(server_factory(redis_url, prefix), redis_url, prefix)
    yield v
    v.admin.close()
    cleanup_prefix(redis_url, prefix)


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
