"""Start-up cost of the project's processes: wall time of ``python -c "import M"`` per module.

Every server, attacker, defender and demo process pays its imports before it does anything, and
the test suite starts dozens of them. The table gives each module's median over ``--repeat``
fresh interpreters and its ratio to ``import torch`` measured in the same run (this machine is
noisy; compare ratios, not seconds). ``torchvision.models.resnet`` is listed to show what
shared/models/resnet.py saves by not importing it.

Usage: ``python -m bench.import_time [--repeat 5]``. Writes results/serving/import_time.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from bench.harness import command, table, write_json

MODULES = ("torch", "torchvision.models.resnet", "shared.models", "server.app", "attacker.cli", "defender.verify")


def import_seconds(module: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--modules", nargs="+", default=list(MODULES))
    args = ap.parse_args(argv)
    mods = ["torch", *[m for m in args.modules if m != "torch"]]
    runs: dict[str, list[float]] = {m: [] for m in mods}
    for _ in range(args.repeat):  # interleaved, so drifting load hits every module alike
        for m in mods:
            runs[m].append(import_seconds(m))
    base = statistics.median(runs["torch"])
    rows = [{"module": m, "median s": f"{statistics.median(v):.2f}", "min s": f"{min(v):.2f}",
             "x import torch": f"{statistics.median(v) / base:.2f}"} for m, v in runs.items()]
    print(table(rows, ["module", "median s", "min s", "x import torch"]))
    path = write_json("serving", "import_time", {"command": command("bench.import_time", argv), "repeat": args.repeat, "seconds": runs,
                                      "ratio_to_torch": {m: statistics.median(v) / base for m, v in runs.items()}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
