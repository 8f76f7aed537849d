"""The GPU serving targets, checked on a bench.api_throughput result (scripts/gpu_bench.sh runs it).

    python -m bench.serving_targets results/serving/api_throughput_cuda.json
    python -m bench.serving_targets FILE --report-only      # table and verdicts, exit 0 (CPU smoke runs)

A level passes when, at concurrency >= 32 in that one run: the API serves >= 50,000 img/s; that is
>= 40% of the in-process batch-256 throughput of the same model on the same device; and with every
defence on (the ``all`` tier, ``--defences``) the API keeps >= 80% of its undefended throughput at
that level. The result passes when one level passes. Exit 1 otherwise, or when the file lacks
what the check needs (no level at concurrency >= 32, no defended measurement, request errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.harness import table


@dataclass(frozen=True)
class Targets:
    min_concurrency: int = 32
    api_images_per_s: float = 50_000
    of_in_process_256: float = 0.40
    defended_of_api: float = 0.80


def evaluate(result: dict, t: Targets = Targets()) -> tuple[list[dict], list[str]]:
    """One row per level at concurrency >= ``t.min_concurrency`` with each target's verdict, and the
    problems that make the result unusable (empty when it can be judged)."""
    problems, rows = [], []
    ref = (result.get("in_process_256") or {}).get("images_per_s")
    if not ref:
        problems.append("no in-process batch-256 measurement")
    for r in result.get("rows", []):
        if r["concurrency"] < t.min_concurrency:
            continue
        api = r["api"]["images_per_s"]
        d = r.get("defended")
        if d is None:
            problems.append(f"concurrency {r['concurrency']}: no defended measurement (run the bench with --defences)")
        errors = r["api"]["errors"] + (d["errors"] if d else 0)
        if errors:
            problems.append(f"concurrency {r['concurrency']}: {errors} failed requests")
        share = api / ref if ref else 0.0
        kept = (d["images_per_s"] / api) if (d and api) else 0.0
        ok = (api >= t.api_images_per_s, share >= t.of_in_process_256, kept >= t.defended_of_api)
        rows.append({"concurrency": r["concurrency"], "API img/s": f"{api:,.0f}", "p99 ms": f"{r['api']['p99_ms']:.1f}",
                     "in-process b256 img/s": f"{ref or 0:,.0f}", "API / b256": f"{share:.1%}",
                     "defended img/s": f"{d['images_per_s']:,.0f}" if d else "-",
                     "defended / API": f"{kept:.1%}", "accounts rotated": d.get("accounts_rotated", "-") if d else "-",
                     "server cores": f"{r['api']['server_cpu']:.1f}",
                     f">= {t.api_images_per_s:,.0f}": _mark(ok[0]), f">= {t.of_in_process_256:.0%}": _mark(ok[1]),
                     f"defended >= {t.defended_of_api:.0%}": _mark(ok[2]), "pass": all(ok)})
    if not rows:
        problems.append(f"no level at concurrency >= {t.min_concurrency}")
    return rows, problems


def _mark(ok: bool) -> str:
    return "yes" if ok else "NO"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", type=Path, help="a bench.api_throughput JSON (run with --defences)")
    p.add_argument("--report-only", action="store_true", help="print the verdicts, exit 0 unless the file is unusable")
    args = p.parse_args(argv)
    result = json.loads(args.result.read_text())
    rows, problems = evaluate(result)
    print(f"{result.get('device')} ({result.get('gpu') or 'no GPU'}), model {result['model']['arch']} width "
          f"{result['model']['width']} ({'trained' if result['model'].get('trained') else 'random-init'}), "
          f"{result.get('workers', 1)} server process(es), {result['images_per_request']} images/request, "
          f"API vs in-process max relative error {result.get('api_vs_in_process_max_rel_err', float('nan')):.1e}")
    if rows:
        cols = list(rows[0])
        print(table([{k: (_mark(v) if isinstance(v, bool) else v) for k, v in r.items()} for r in rows], cols))
    for problem in problems:
        print(f"problem: {problem}")
    passed = not problems and any(r["pass"] for r in rows)
    print("targets: " + ("PASS" if passed else "FAIL") + (" (report only)" if args.report_only else ""))
    if args.report_only:
        return 1 if any("no level" in x or "no in-process" in x or "no defended" in x for x in problems) else 0
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
