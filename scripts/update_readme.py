"""Regenerate the README's generated blocks from results of record.

    uv run python scripts/update_readme.py [--demo results/demo/summary.md] [--check]

- ``main-job``: the summary table of a ``heist-demo`` run (copy a run's ``summary.md`` and
  ``summary.json`` from ``runs/demo/<time>/`` to ``results/demo/`` to make it the one shown);
- ``victim``: the shipped default victim's report (``assets/victim-cpu/config.json``);
- ``cpus``: the training speed per CPU path (``results/cpu/matrix.json``, from ``bench.cpu_matrix``).

Each block sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``. ``--check`` exits 1
when the README differs from what this script would write (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def demo_block(summary_md: Path) -> str:
    lines = summary_md.read_text().splitlines()
    caption = next(x for x in lines if x.startswith("policy "))
    table = [x for x in lines if x.startswith("|")]
    return "\n".join([f"`heist-demo` with {caption} (`{summary_md.relative_to(REPO)}`):", "", *table])


def victim_block(config_json: Path) -> str:
    m = json.loads(config_json.read_text())["metrics"]
    rows = [("`shape` (main task, 10 classes)", "probe_shape"), ("`pattern` (4 classes)", "probe_pattern"),
            ("`shape` on the shifted sketch domain", "probe_shape_shifted")]
    out = ["| linear probe, `test` split | victim | random init, same architecture |", "|---|---|---|"]
    out += [f"| {name} | {100 * m[k]:.1f}% | {100 * m['random_' + k]:.1f}% |" for name, k in rows]
    out.append(f"| watermark task (rotated unseen images) | {100 * m['watermark_acc']:.1f}% | |")
    return "\n".join([f"The shipped `cpu` victim (`{config_json.relative_to(REPO)}`, trained in {m['train_seconds']:.0f} s "
                      f"at {m['train_images_per_s']:,.0f} img/s):", "", *out])


def cpus_block(matrix_json: Path) -> str:
    d = json.loads(matrix_json.read_text())
    names = {"native": "the CPU's own path", "AVX2": "`ONEDNN_MAX_CPU_ISA=AVX2`", "AVX": "`ONEDNN_MAX_CPU_ISA=AVX`"}
    out = ["| CPU path | oneDNN ISA | workaround | victim's raw training step |", "|---|---|---|---|"]
    for c in d["cells"]:
        if c["width"] == 16:
            out.append(f"| {names[c['cap']]} | {c['onednn_isa']} | {'on' if c['workaround_at_startup'] else 'off'} | "
                       f"{c['raw_images_per_s_by_mode']['auto']:,.0f} img/s |")
    return "\n".join([f"{d['machine']['cpu']}, {d['machine']['threads']} threads "
                      f"(`{matrix_json.relative_to(REPO)}`, `uv run python -m bench.cpu_matrix`):", "", *out])


def render(readme: str, blocks: dict[str, str]) -> str:
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- {name}:begin/end --> markers")
        readme = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=REPO / "results" / "demo" / "summary.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if the README is not up to date")
    a = ap.parse_args(argv)
    path = REPO / "README.md"
    old = path.read_text()
    new = render(old, {"main-job": demo_block(a.demo.resolve()),
                       "victim": victim_block(REPO / "assets" / "victim-cpu" / "config.json"),
                       "cpus": cpus_block(REPO / "results" / "cpu" / "matrix.json")})
    if a.check:
        if new != old:
            print("README.md is out of date: run uv run python scripts/update_readme.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
