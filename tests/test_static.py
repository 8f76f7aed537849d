"""Static checks, run with the suite (hence in CI): ruff lints everything, mypy type-checks shared/ and server/.

Both read their settings from pyproject.toml ([tool.ruff], [tool.mypy]: files, strictness, per-library
overrides). mypy keeps its cache in .mypy_cache, so a second run takes seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"python -m {' '.join(args)} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"


def test_ruff_is_clean() -> None:
    _run("ruff", "check", ".")


def test_mypy_is_clean() -> None:
    _run("mypy")
