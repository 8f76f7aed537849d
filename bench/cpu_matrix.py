"""Victim training speed on each oneDNN instruction set this CPU offers, with and without the
AVX2 workaround (``shared/cpu.py``), in one run.

Runs ``bench.train_throughput`` in a subprocess per instruction-set cap (oneDNN reads
``ONEDNN_MAX_CPU_ISA`` once per process): the CPU's own (unset), ``AVX2`` (the path of CPUs
without AVX-512, where the workaround switches on) and ``AVX`` (the blunt alternative fix). Each
subprocess alternates the raw training step under several workaround modes, so every ratio inside
a row comes from one process and one stretch of time. Widths: 16 (the ``cpu`` victim; no layer is
affected) and 4 (the stealing tests' ResNet, whose first stride-2 shortcut is rerouted).

    uv run python -m bench.cpu_matrix [--steps 4] [--rounds 3]

Writes ``results/cpu/train_throughput_<isa>_w<width>.json`` per cell and
``results/cpu/matrix.json`` + ``results/cpu/matrix.md`` (the table below, generated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench.harness import machine, output, table, write_json
from shared.cpu import onednn_isa
from shared.proc import run as run_child
from testbed.services import REPO

CAPS = ("native", "AVX2", "AVX")


def modes_for(cap: str, width: int) -> list[str]:
    env = {} if cap == "native" else {"ONEDNN_MAX_CPU_ISA": cap}
    needed = onednn_isa(env={**os.environ, **env}).avx2_family
    modes = ["auto"] + (["off"] if not needed else []) + ["on", "no-onednn"]
    return modes if width < 8 or cap == "native" else ["auto", "no-onednn"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--widths", default="16,4")
    ap.add_argument("--render", action="store_true", help="only rebuild the table from results/cpu/matrix.json")
    a = ap.parse_args(argv)
    if a.render:
        old = json.loads(output("cpu", "matrix.json").read_text())
        result = render(old["cells"], old.get("steps", a.steps), old.get("rounds", a.rounds))
        print(f"wrote {write_json('cpu', 'matrix', result)} and results/cpu/matrix.md")
        return result
    cells = []
    for width in map(int, a.widths.split(",")):
        for cap in CAPS:
            env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "HEIST_ONEDNN_WORKAROUND")}
            if cap != "native":
                env["ONEDNN_MAX_CPU_ISA"] = cap
            name = f"train_throughput_{cap.lower()}_w{width}"
            cmd = [sys.executable, "-m", "bench.train_throughput", "--width", str(width), "--steps", str(a.steps),
                   "--rounds", str(a.rounds), "--modes", ",".join(modes_for(cap, width)), "--name", name]
            print("$", ("" if cap == "native" else f"ONEDNN_MAX_CPU_ISA={cap} ") + " ".join(cmd[1:]), flush=True)
            run_child(cmd, cwd=REPO, env=env, check=True)
            cells.append({"cap": cap, "width": width, **json.loads(output("cpu", f"{name}.json").read_text())})
    result = render(cells, a.steps, a.rounds)
    print(f"wrote {write_json('cpu', 'matrix', result)} and results/cpu/matrix.md")
    return result


def off_cell(c: dict) -> str:
    by = c["raw_images_per_s_by_mode"]
    if "off" in by:
        return f"{by['off'] / by['auto']:.2f}"
    return "crashes" if c["workaround_at_startup"] and c["width"] < 8 else "-"


def render(cells: list[dict], steps: int, rounds: int) -> dict:
    """The table (printed and ``results/cpu/matrix.md``) from the per-cell results."""
    native = {c["width"]: c["raw_images_per_s_by_mode"]["auto"] for c in cells if c["cap"] == "native"}
    rows = []
    for c in cells:
        by = c["raw_images_per_s_by_mode"]
        rows.append({"width": c["width"], "ONEDNN_MAX_CPU_ISA": c["cap"], "oneDNN ISA": c["onednn_isa"],
                     "workaround": "on" if c["workaround_at_startup"] else "off",
                     "img/s (auto)": f"{by['auto']:.0f}", "off / auto": off_cell(c),
                     "on / auto": f"{by['on'] / by['auto']:.2f}" if "on" in by else "-",
                     "no oneDNN / auto": f"{by['no-onednn'] / by['auto']:.2f}",
                     "auto / native, same width": f"{by['auto'] / native[c['width']]:.2f}"})
    cols = list(rows[0])
    cpu = machine()["cpu"]
    print(f"CPU: {cpu}")
    print(table(rows, cols))
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    output("cpu", "matrix.md").write_text(
        f"CPU: {cpu}; raw training step (forward, backward, optimiser step) in images/s and ratios, "
        f"`uv run python -m bench.cpu_matrix --steps {steps} --rounds {rounds}`. `off` is not timed where no layer is "
        "affected (width 16 under a cap) and crashes where the workaround is needed.\n\n" + "\n".join(md) + "\n")
    return {"steps": steps, "rounds": rounds, "rows": rows,
            "cells": [{k: c[k] for k in ("cap", "width", "onednn_isa", "workaround_at_startup", "raw_images_per_s_by_mode",
                                         "full_images_per_s")} for c in cells]}


if __name__ == "__main__":
    main()
