"""Testbed fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_victim(trained_victim) -> Path:
    return trained_victim
