"""Helpers for benchmarks: a results folder, JSON output and a plain table."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch

from testbed.services import wait_ready  # noqa: F401  (re-exported for the benches)

RESULTS = Path(__file__).resolve().parent.parent / "results"


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    w = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    head = " | ".join(c.ljust(w[i]) for i, c in enumerate(columns))
    sep = "-|-".join("-" * x for x in w)
    return "\n".join([head, sep, *(" | ".join(v.ljust(w[i]) for i, v in enumerate(row)) for row in cells)])
