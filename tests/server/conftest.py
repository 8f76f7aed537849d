"""Server fixtures: the victim API in process (``create_app`` behind the ASGI transport, embedded store)."""

from __future__ import annotations

import pytest

from tests.support import InProcessApi


@pytest.fixture(scope="module")
def api(tiny_checkpoint):
    """The victim API in this process (tests.support.SERVER_TEST_CONFIG, embedded store); one per module."""
    with InProcessApi(tiny_checkpoint) as a:
        yield a
