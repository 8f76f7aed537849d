"""Render the results page (docs/results.md) and the results index (results/README.md) from results/.

    python -m bench.report            # write both
    python -m bench.report --check    # exit 1, with a diff, when either is out of date

Every figure on the page is read from a JSON file under ``results/``; the prose around the tables
lives in this package (one module per area), as templates. The output depends only on those files: paths stored by older runs
are shown relative to the repository, and nothing from the machine that renders (time, checkout
path) enters the page. ``--check`` also warns about files in ``results/`` that the index does not
describe (add a line to :data:`INDEX`).
"""


from __future__ import annotations

import argparse
import difflib
import sys

from bench.report.attack import stealing, tradeoff
from bench.report.common import PAGE, REPO, results_dir
from bench.report.defender import di_null, earlier, owm, zoo
from bench.report.index import index
from bench.report.reproduction import reproduction
from bench.report.serving import api, cpus, defences, intro, reliability, training


def page() -> str:
    sections = [intro(), training(), cpus(), api(), stealing(), tradeoff(), zoo(), di_null(), owm(), earlier(), reproduction(),
                defences(), reliability()]
    body = "\n\n".join(s for s in sections if s)
    return body.replace(ZOO_COMMANDS_PLACEHOLDER, ZOO_COMMANDS) + "\n"


ZOO_COMMANDS_PLACEHOLDER = "python -m heist_server_train_placeholder"
ZOO_COMMANDS = """heist-server train --preset cpu --train-size 500 --epochs 1200 --batch-size 250 \\
    --warmup-epochs 10 --threads 1 --out runs/di12/victim
I="heist-server train --preset cpu --kind independent --no-watermark --epochs 5 --threads 1"
$I --seed 1 --data-seed 1 --out runs/di12/independent-dataseed1                # negative controls: other images
$I --seed 7 --data-seed 6 --out runs/di12/independent-dataseed6
$I --seed 8 --data-seed 7 --out runs/di12/independent-dataseed7
$I --seed 2 --domain shifted --out runs/di12/independent-shifted                # other domain (sketch)
$I --seed 9 --domain shifted --data-seed 5 --out runs/di12/independent-shifted-dataseed5
$I --seed 11 --data-seed 9 --out runs/di12/independent-dataseed9
$I --seed 12 --data-seed 10 --out runs/di12/independent-dataseed10
$I --seed 13 --data-seed 11 --out runs/di12/independent-dataseed11
$I --seed 14 --domain shifted --data-seed 12 --out runs/di12/independent-shifted-dataseed12
Z="python -m bench.zoo --victim runs/di12/victim --losses mse infonce softnn --budgets 4000 10000 \\
   --epochs 20 --no-extra --obfuscate affine --wm-n 250 --di-n 250 --di-public 4000 --di-margin 0.1 --threads 2"
$Z --runs runs/di12 --out zoo_di12 --steal                # round 1: copies made over HTTP by heist-attack steal
# round 2: new copies (other query images: data seed 3's attack split) and four more fresh negatives
$I --seed 15 --data-seed 13 --out runs/di12b/independent-dataseed13
$I --seed 16 --data-seed 14 --out runs/di12b/independent-dataseed14
$I --seed 17 --data-seed 15 --out runs/di12b/independent-dataseed15
$I --seed 18 --domain shifted --data-seed 16 --out runs/di12b/independent-shifted-dataseed16
$Z --runs runs/di12b --out zoo_di12b --steal --steal-args "--data-seed 3 --seed 1 --threads 1\""""



# ---- main -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 with a diff when a generated file is out of date")
    a = ap.parse_args(argv)
    readme, unindexed = index()
    targets = {PAGE: page(), results_dir() / "README.md": readme}
    stale = 0
    for path, new in targets.items():
        old = path.read_text() if path.is_file() else ""
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        if a.check:
            if old != new:
                stale += 1
                sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"{shown} (on disk)",
                                                           f"{shown} (rendered)"))
        elif old != new:
            path.write_text(new)
            print(f"wrote {shown}")
    for f in unindexed:
        print(f"warning: results/{f} is not in the index (add it to INDEX in bench/report/index.py)", file=sys.stderr)
    if stale:
        print("out of date: run python -m bench.report", file=sys.stderr)
        return 1
    return 0
