"""Model zoo check of the defender: truth vs verdict for every suspect, with p-values.

Suspects (whatever exists under runs/ is used; what is missing is listed, never faked):

- the victim itself (truth: stolen, i.e. "is the victim's model");
- stolen copies ``runs/stolen-<loss>-<queries>`` made by the attacker over HTTP. With ``--steal``
  this bench makes them: it starts ``heist-server serve --checkpoint runs/victim`` on a private
  Redis prefix, creates an ``unlimited`` account, and runs for every loss and budget
  ``heist-attack steal --url URL --api-key KEY --queries N --loss L --query-set attack --arch resnet18
  --width 16 --epochs E --out runs/stolen-L-N --cache runs/steal-cache`` (plus ``--steal-args``);
- independent encoders (their own data, never the victim's private set): ``runs/independent-dataseed1``
  (same distribution, other images: ``heist-server train --kind independent --no-watermark --seed 1
  --data-seed 1``), ``runs/independent-shifted`` (other domain: ``--domain shifted``), and any
  ``runs/independent-*``;
- obfuscated variants (``--obfuscate permute affine pad_shuffle``) of the victim, of every stolen
  copy and of the independent encoders: output transforms from shared/transforms.py, keyed.

Usage: ``nice -n 10 python -m bench.zoo [--steal] [--losses mse infonce softnn] [--budgets 2000 8000]``.
Writes results/defender/zoo.json, .md and .png (``--out NAME``, ``--area defender/earlier`` for a
run kept beside the ones of record). ``--runs DIR`` reads (and makes) the stolen copies and the
independents under another folder, e.g. the dataset-inference victim's zoo (``--runs runs/di --victim
runs/di/victim --out zoo_di``; see docs/defender.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bench.harness import command, output, results_dir, table, write_json
from defender.cli import load_query_log
from shared.proc import run as run_child

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "runs"
QUERY_LOG = "query_log.json"  # a copy's account log, saved by --steal --query-log from the admin endpoint


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def steal_all(args: argparse.Namespace) -> None:
    """Start the victim API and run ``heist-attack steal`` for each loss and budget (skips existing copies)."""
    from shared.checkpoint import read_config
    from testbed.services import serve

    spec = read_config(args.victim).data_spec()
    data = ["--dataset", spec.dataset, "--data-seed", str(spec.seed), *([] if spec.root is None else ["--data-root", spec.root])]
    tier = {"outputs": ["representation", "projection"], "query_log": args.query_log}
    with serve(args.victim, {"tiers": {"unlimited": tier}}, log_path=results_dir() / "zoo-server.log") as srv:
        key = srv.new_account("zoo-attacker", "unlimited")
        for loss in args.losses:
            for n in args.budgets:
                out = args.runs / f"stolen-{loss}-{n}"
                if (out / "config.json").exists():
                    continue
                cache = args.runs / "steal-cache"
                if args.query_log:  # one account and one cache per copy: every query reaches the server and its log
                    key, cache = srv.new_account(f"zoo-{loss}-{n}", "unlimited"), args.runs / f"steal-cache-{loss}-{n}"
                epochs = max(args.epochs, -(-args.min_steps // max(1, n // args.batch_size)))  # as bench.attack_table
                cmd = ["heist-attack", "steal", "--url", srv.url, "--queries", str(n), "--loss", loss,
                       "--query-set", "attack", "--arch", "resnet18", "--width", "16", "--epochs", str(epochs),
                       "--batch-size", str(args.batch_size), "--out", str(out), "--cache", str(cache), "--no-eval", *data,
                       *shlex.split(args.steal_args)]
                print("$", " ".join(cmd), flush=True)
                run_child([sys.executable, "-m", "attacker.cli", *cmd[1:]], cwd=REPO, check=True,
                               env={**os.environ, "HEIST_API_KEYS": key})
                if args.query_log:  # what the provider kept of this account's traffic
                    (out / QUERY_LOG).write_text(json.dumps(srv.query_log(f"zoo-{loss}-{n}")))


def suspects(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    found, missing = [{"name": "victim", "path": args.victim, "truth": "stolen", "group": "victim"}], []
    for loss in args.losses:
        for n in args.budgets:
            p = args.runs / f"stolen-{loss}-{n}"
            if (p / "config.json").exists():
                found.append({"name": p.name, "path": p, "truth": "stolen", "group": f"stolen/{n}"})
            else:
                missing.append(f"{p.name} (make it with --steal)")
    extra = [] if args.no_extra else sorted(
        p for p in args.runs.glob("stolen-*") if (p / "config.json").exists() and p.name not in {s["name"] for s in found})
    found += [{"name": p.name, "path": p, "truth": "stolen", "group": "stolen/other"} for p in extra]
    for p in sorted(args.runs.glob("independent-*")):
        if (p / "config.json").exists():
            found.append({"name": p.name, "path": p, "truth": "independent", "group": "independent"})
        else:
            missing.append(f"{p.name} (no config.json yet: still training?)")
    for want in ("independent-dataseed1", "independent-shifted"):
        if not (args.runs / want).exists():
            missing.append(f"{want} (heist-server train --kind independent --no-watermark ...)")
    out = list(found)
    for s in found:
        for i, kind in enumerate(args.obfuscate):
            out.append({**s, "name": f"{s['name']}+{kind}", "obfuscation": kind, "obfuscation_seed": 100 + i})
    return out, missing


def plot(rows: list[dict], alpha: float, path: Path) -> Path:
    """-log10 p of the aligned watermark and of dataset inference (plain and aligned) per suspect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [("watermark_aligned", "aligned watermark"), ("dataset_inference", "DI"),
               ("dataset_inference_aligned", "aligned DI"), ("query_log", "query log")]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 0.32 * len(rows) + 1.5), sharey=True)
    y = np.arange(len(rows))
    colours = ["tab:red" if r["truth"] == "stolen" else "tab:blue" for r in rows]
    for ax, (m, title) in zip(axes, methods, strict=True):
        raw = [(r.get(m) or {}).get("p") for r in rows]
        p = [max(1.0 if x is None else x, 1e-30) for x in raw]
        ax.barh(y, -np.log10(p), color=colours)
        ax.axvline(-np.log10(alpha), color="k", ls="--", lw=1)
        ax.set_title(title)
        ax.set_xlabel("-log10 p (capped at 30); dashed: alpha")
    axes[0].set_yticks(y, [r["name"] for r in rows], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("defender zoo: red = stolen (truth), blue = independent")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--victim", type=Path, default=RUNS / "victim")
    ap.add_argument("--runs", type=Path, default=RUNS, help="folder of the stolen-* copies and independent-* encoders")
    ap.add_argument("--out", default="zoo", help="results/<area>/<out>.json, .md and .png")
    ap.add_argument("--area", default="defender", help="results folder: defender, or defender/earlier for a run not of record")
    ap.add_argument("--di-components", default="auto",
                    help="GMM components of dataset inference (a positive integer or auto; VerifyConfig checks it)")
    ap.add_argument("--di-public", type=int, help="public images scored by dataset inference (default: --di-n)")
    ap.add_argument("--steal", action="store_true", help="make missing stolen copies with heist-attack steal over HTTP first")
    ap.add_argument("--losses", nargs="+", default=["mse", "infonce", "softnn"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[2000, 8000])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64, help="heist-attack steal --batch-size")
    ap.add_argument("--min-steps", type=int, default=0, help="more epochs for a small budget: at least this many "
                    "optimizer steps per copy (bench.attack_table's --min-steps)")
    ap.add_argument("--steal-args", default="", metavar="ARGS",
                    help="more heist-attack steal options for --steal, e.g. \"--data-seed 3 --seed 1 --threads 1\" (other "
                         "query images: the data seed's attack split)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--no-extra", action="store_true", help="only the listed losses x budgets, not every runs/stolen-*")
    ap.add_argument("--obfuscate", nargs="*", default=["permute", "affine", "pad_shuffle"])
    ap.add_argument("--wm-n", type=int, default=500)
    ap.add_argument("--align-n", type=int, default=1000, help="public images for the alignment map and similarity "
                    "(at most the public split: 500 on mnist5k)")
    ap.add_argument("--di-n", type=int, default=1000, help="part A, part B and public sizes of dataset inference")
    ap.add_argument("--di-reference", type=Path, action="append", default=[],
                    help="reference encoder(s) that never saw the private data: dataset inference on calibrated scores")
    ap.add_argument("--wm-reference", type=Path, action="append", default=[],
                    help="the defender's own encoder(s) without the watermark: the watermarks' chance level (verify --wm-reference)")
    ap.add_argument("--di-margin", type=float, default=0.1, metavar="RHO",
                    help="dataset inference against a smallest effect of interest: RHO x the victim's own effect "
                         "(verify --di-margin, same default; 0: the paper's zero-effect test)")
    ap.add_argument("--query-log", type=int, default=0, metavar="N",
                    help="with --steal: the tier keeps each account's last N images and every copy gets its own account "
                         "and cache; its log is saved beside it (query_log.json). Then every copy with a log is verified "
                         "with it, every other suspect with --investigate's log, and each independent (plain) against "
                         "every log (query-log inference only)")
    ap.add_argument("--investigate", default=None, metavar="COPY",
                    help="the copy whose account log the victim and the independents are verified with (default: the "
                         "last copy with a log)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from defender.suspects import LocalSuspect
    from defender.verify import VerifyConfig, verify
    from shared.checkpoint import load_checkpoint
    from shared.transforms import make_transform

    torch.set_num_threads(args.threads)
    if args.steal:
        steal_all(args)
    victim = load_checkpoint(args.victim)
    cfg = VerifyConfig(wm_n=args.wm_n, align_n=args.align_n, di_fit=args.di_n, di_private=args.di_n, di_public=args.di_public or args.di_n,
                       di_components=args.di_components, di_margin=args.di_margin)
    references = {str(p): load_checkpoint(p) for p in args.di_reference}
    wm_references = {str(p): load_checkpoint(p) for p in args.wm_reference}
    todo, missing = suspects(args)
    logs = {s["name"]: load_query_log(Path(s["path"]) / QUERY_LOG) for s in todo
            if not s.get("obfuscation") and (Path(s["path"]) / QUERY_LOG).is_file()}
    investigated = args.investigate or (list(logs)[-1] if logs else None)
    rows, ref_tests = [], {}
    for s in tqdm(todo, desc="zoo", unit="suspect"):
        t = None
        if s.get("obfuscation"):
            t = make_transform(s["obfuscation"], load_checkpoint(s["path"]).config.representation_dim,
                               np.random.default_rng(s["obfuscation_seed"]), pad=16)
        base = s["name"].split("+")[0]
        log_of = base if base in logs else investigated
        rep = verify(victim, LocalSuspect(s["path"], transform=t, name=s["name"]), cfg, victim_name=str(args.victim),
                     references=references, wm_references=wm_references, query_log=logs.get(log_of) if log_of else None)
        r = {k: str(v) if isinstance(v, Path) else v for k, v in s.items()}
        r["query_log_of"] = log_of
        for m in ("watermark", "watermark_aligned", "dataset_inference", "dataset_inference_aligned", "query_log", "similarity"):
            row = rep.row(m)
            r[m] = {"value": row.value, "p": row.p_value, "verdict": row.verdict,
                    "raw": [row.detail.get("t_uncalibrated"), row.detail.get("p_uncalibrated")],
                    "zero_effect": [row.detail.get("t_zero_effect"), row.detail.get("p_zero_effect")],
                    "margin": row.detail.get("margin"), "raw_cosine": row.detail.get("raw_cosine"),
                    "reference_r2": row.detail.get("reference_r2"), "chance": row.detail.get("chance"),
                    "reference_accuracy": row.detail.get("reference_accuracy")} if row else None
        ref_tests = next((r.detail["reference_tests"] for r in rep.rows if "reference_tests" in r.detail), ref_tests)
        r["overall"], r["queries"], r["seconds"] = rep.overall, rep.queries["sent"], rep.seconds
        rows.append(r)
        tqdm.write(f"{s['name']:32s} truth={s['truth']:11s} overall={rep.overall:11s} "
                   f"wm={r['watermark']['value'] if r['watermark']['value'] is not None else float('nan'):.3f} "
                   f"wm_al={r['watermark_aligned']['value']:.3f} (p={_p(r['watermark_aligned']['p'])}) "
                   f"DI p={_p(r['dataset_inference']['p'])} DI_al p={_p((r['dataset_inference_aligned'] or {}).get('p'))} "
                   f"qlog p={_p((r['query_log'] or {}).get('p'))}")
    qlog_null = []  # each independent against every account's log: query-log inference's false alarms
    qcfg = cfg.model_copy(update={"methods": ("query_log",)})
    for s in (s for s in todo if s["truth"] == "independent" and not s.get("obfuscation")):
        suspect = LocalSuspect(s["path"], name=s["name"])  # one per independent: the held-out images are encoded once
        for name, log in logs.items():
            row = verify(victim, suspect, qcfg, references=references, wm_references=wm_references,
                         query_log=log).row("query_log")
            qlog_null.append({"suspect": s["name"], "log": name, "ratio": row.value, "p": row.p_value, "verdict": row.verdict})

    def cell(r: dict, m: str) -> str:
        x = r[m]
        if x is None or x["value"] is None:
            return "n/a"
        raw, (t0, p0) = (x.get("raw") or [None])[0], x.get("zero_effect") or (None, None)
        return (f"{x['value']:.3f} / {_p(x['p'])} -> {x['verdict']}" + ("" if raw is None else f" (raw t {raw:.2f})")
                + ("" if t0 is None else f" [no-effect test: {t0:.2f} / {_p(p0)}]"))

    tab = [{"suspect": r["name"], "truth": r["truth"], "watermark (acc / p)": cell(r, "watermark"),
            "aligned watermark": cell(r, "watermark_aligned"), "DI (t / p)": cell(r, "dataset_inference"),
            "aligned DI (t / p)": cell(r, "dataset_inference_aligned"), "query log (ratio / p)": cell(r, "query_log"),
            "MI norm": f"{r['similarity']['value']:.3f}" if r["similarity"]["value"] is not None else "n/a",
            "overall": r["overall"]} for r in rows]
    cols = ["suspect", "truth", "watermark (acc / p)", "aligned watermark", "DI (t / p)", "aligned DI (t / p)",
            "query log (ratio / p)", "MI norm", "overall"]
    conf: dict[str, dict[str, dict[str, int]]] = {}
    for method in ("watermark_aligned", "dataset_inference", "dataset_inference_aligned", "query_log", "overall"):
        c = {t: {"stolen": 0, "independent": 0} for t in ("stolen", "independent")}
        for r in rows:
            v = r["overall"] if method == "overall" else (r[method] or {}).get("verdict")
            if v in ("stolen", "independent"):
                c[r["truth"]][v] += 1
        conf[method] = c
    for method in ("dataset_inference", "dataset_inference_aligned"):  # the paper's zero-effect test, when a margin was used
        if any(((r[method] or {}).get("zero_effect") or [None])[1] is not None for r in rows):
            c = {t: {"stolen": 0, "independent": 0} for t in ("stolen", "independent")}
            for r in rows:
                p0 = ((r[method] or {}).get("zero_effect") or [None, None])[1]
                if p0 is not None:
                    c[r["truth"]]["stolen" if p0 < cfg.alpha else "independent"] += 1
            conf[f"{method} (no-effect test)"] = c
    text = table(tab, cols)
    print(text)
    conf_lines = []
    for method, c in conf.items():
        conf_lines.append(f"\n{method}: truth \\ verdict   stolen  independent")
        for t in ("stolen", "independent"):
            conf_lines.append(f"  {t:11s}                   {c[t]['stolen']:6d}  {c[t]['independent']:11d}")
    print("\n".join(conf_lines))
    if qlog_null:
        print(table([{**q, "ratio": f"{q['ratio']:.3f}", "p": _p(q["p"])} for q in qlog_null],
                    ["suspect", "log", "ratio", "p", "verdict"]))
    if missing:
        print("missing suspects:\n  " + "\n  ".join(missing))
    if ref_tests:  # the references' own raw DI tests on the private rows (the same for every suspect)
        print("references' raw DI tests: " + ", ".join(f"{n}: t={v['t']}" for n, v in ref_tests.items()))
    cmd = command("bench.zoo", argv)
    path = write_json(args.area, args.out, {"command": cmd, "config": cfg.model_dump(), "references": ref_tests,
                                            "wm_references": [str(p) for p in args.wm_reference], "rows": rows,
                                            "confusion": conf, "missing": missing, "query_log_investigated": investigated,
                                            "query_log_null": qlog_null})
    print(f"wrote {plot(rows, cfg.alpha, output(args.area, args.out + '.png'))}")
    md = ["# Defender model zoo", "", f"`nice -n 10 {cmd}`", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(t[c]) for c in cols) + " |" for t in tab]
    md += ["", "## Confusion (truth x verdict)", "", "```", *conf_lines, "```", ""]
    if qlog_null:
        md += ["## Query-log inference on the independents, against every account's log", "",
               "| independent | log of | ratio | p | verdict |", "|---|---|---|---|---|",
               *[f"| {q['suspect']} | {q['log']} | {q['ratio']:.3f} | {_p(q['p'])} | {q['verdict']} |" for q in qlog_null], ""]
    margin = next((r["dataset_inference"]["margin"] for r in rows if (r["dataset_inference"] or {}).get("margin")), None)
    if margin:
        md += ["## Smallest effect of interest", "",
               f"Dataset inference tests H0 \"the suspect's member/public gap is at most {margin['di_margin']} x the "
               f"victim's\": the victim's own effect on the same rows is d = {margin['victim_effect']} (t = "
               f"{margin['victim_t']}), so the null is d <= {margin['min_effect']}. The bracketed cells are the "
               "paper's test against no effect.", ""]
    if ref_tests:
        md += ["## Reference encoders (dataset-inference calibration)", "",
               *[f"- `{n}`: raw DI t = {v['t']} (p = {_p(v['p'])}) on the private rows" for n, v in ref_tests.items()], ""]
    if missing:
        md += ["## Missing suspects", "", *[f"- {m}" for m in missing], ""]
    output(args.area, f"{args.out}.md").write_text("\n".join(md))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
