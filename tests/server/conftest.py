"""Server fixtures: the victim API in process (``create_app`` behind the ASGI transport, embedded store);
a private local Redis Cluster (live)."""

from __future__ import annotations

import shutil

import pytest

from testbed import services
from tests.support import InProcessApi


@pytest.fixture(scope="module")
def api(tiny_checkpoint):
    """The victim API in this process (tests.support.SERVER_TEST_CONFIG, embedded store); one per module."""
    with InProcessApi(tiny_checkpoint) as a:
        yield a


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A private 3-master Redis Cluster on loopback (testbed.services.start_redis_cluster, no persistence);
    skip when redis-server or redis-cli is missing."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli not installed (apt-get install redis-server)")
    cluster = services.start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"), nodes=3)
    yield cluster
    cluster.stop()
