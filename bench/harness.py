"""What every bench shares: the machine it ran on, where its results go, and a plain text table.

Each bench writes ``results/<area>/<name>.json`` (plus, for some, a markdown table or a PNG beside
it) through :func:`write_json` / :func:`output`. The areas are fixed (:data:`AREAS`); an area may
have a subfolder, such as ``defender/earlier`` for runs that are kept but no longer of record.
``HEIST_RESULTS_DIR`` redirects all output (the tests use it). Paths and command lines are stored
relative to the repository (:func:`rel`, :func:`command`), so a result reads the same wherever the
checkout lives. ``python -m bench.report`` renders docs/results.md and results/README.md from them.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AREAS = ("serving", "reliability", "attack", "defender", "cpu", "demo")
PROFILE = REPO / "assets" / "profiles" / "legit_profile.json"  # the recorded legitimate profile (python -m testbed.profile)


def results_dir() -> Path:
    """``results/`` of the checkout, or ``$HEIST_RESULTS_DIR`` when set."""
    return Path(os.environ.get("HEIST_RESULTS_DIR") or REPO / "results")


def output(area: str, filename: str) -> Path:
    """``results/<area>/<filename>``, its folder created; ``area`` must start with one of :data:`AREAS`."""
    if area.split("/", 1)[0] not in AREAS:
        raise ValueError(f"unknown results area {area!r}: one of {', '.join(AREAS)} (optionally with a subfolder)")
    path = results_dir() / area / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def rel(path: str | os.PathLike) -> str:
    """A path as stored in a result: relative to the repository when it lies inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(REPO)) if p.is_absolute() or p.exists() else str(p)
    except ValueError:
        return str(p)


def portable(obj):
    """``obj`` with the checkout's absolute path dropped from every string (paths and command lines)."""
    if isinstance(obj, str):
        return obj.replace(f"{REPO}/", "").replace(str(REPO), ".")
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [portable(v) for v in obj]
    return obj


def command(module: str, argv: list[str] | None = None) -> str:
    """The command line that re-runs a bench (``python -m bench.NAME ARGS``), repository paths made relative."""
    args = sys.argv[1:] if argv is None else argv
    return portable(" ".join(["python", "-m", module, *(shlex.quote(str(a)) for a in args)]))


def machine() -> dict:
    import torch

    from shared.cpu import cpu_model, onednn_isa

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": cpu_model(),
        "onednn_isa": onednn_isa().reason,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_json(area: str, name: str, payload: dict) -> Path:
    """``results/<area>/<name>.json`` with the machine it ran on first; repository paths stored relative."""
    path = output(area, f"{name}.json")
    path.write_text(json.dumps(portable({"machine": machine(), **payload}), indent=2, default=str))
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    w = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    head = " | ".join(c.ljust(w[i]) for i, c in enumerate(columns))
    sep = "-|-".join("-" * x for x in w)
    return "\n".join([head, sep, *(" | ".join(v.ljust(w[i]) for i, v in enumerate(row)) for row in cells)])
