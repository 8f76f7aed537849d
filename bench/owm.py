"""Output watermark bench: copies stolen through a watermarked API, independents, removal attacks,
the customer's cost and the null's level (the ``output_watermark`` defence and check).

With ``--steal`` one real ``heist-server serve`` hosts the victim with two tiers, ``wm`` (defence
``output_watermark`` at ``--strength``) and ``clean`` (no defence), and:

- runs ``heist-attack steal`` over HTTP on ``wm`` for every loss x budget (``<work>/stolen-<loss>-<n>``),
  and for every loss at ``--removal-budget`` with each removal attack (``--remove-watermark cse``
  with the thief's own encoder ``--cse-reference``, ``spa``): ``<work>/stolen-<loss>-<n>-<attack>``;
- steals ``--controls`` copies from ``clean`` (``<work>/unmarked-<loss>-<n>``): copies of the same
  victim that never saw the mark, the hardest null for this check;
- measures what customers lose: ``--customers`` narrow customers (3 classes of the test split, the
  trade-off bench's task, seeds 7, 8, ...) and the full main-task probe, each on both tiers.

Then every suspect (the copies, the controls, ``<work>/independent-*`` and each ``--independent``)
is verified, plain and behind each ``--obfuscate`` transform, with ``heist-defend verify``'s
``output_watermark`` check only (``--align-n`` public queries each), and every copy's main-task
probe is measured. The null's level: each independent and control on ``--null-pools`` disjoint
blocks of 1,000 unseen images (public and test splits) under ``--null-secrets`` server secrets.

Independents used for the results of record (``heist-server train --preset cpu --kind independent
--no-watermark --no-baseline``; ``runs/owm/train_indep.sh`` is not in the repo, the commands are):
``--seed 1 --data-seed 1 --epochs 4 --train-size 8000``, ``--seed 4 --train-split attack --epochs 4
--train-size 8000``, ``--seed 6 --domain shifted --epochs 4``, ``--seed 2 --data-seed 2 --epochs 3
--train-size 8000``, ``--seed 7 --data-seed 7 --width 8 --epochs 4 --train-size 8000``, ``--seed 9
--train-split test --epochs 6``, ``--seed 8 --dataset mnist5k --epochs 6``, ``--seed 3 --data-seed 3
--epochs 2 --train-size 8000``, ``--seed 10 --data-seed 10 --width 24 --epochs 3 --train-size 6000``,
``--seed 5 --train-split public --epochs 10``, ``--seed 11 --data-seed 11 --epochs 6 --train-size 8000``,
each ``--out runs/owm/independent-<name>``.

    python -m bench.owm --steal                     # key, copies, customers, verdicts, null (~1 h on 2 cores)
    python -m bench.owm                             # verdicts and null only, on what exists under --work

The server secret comes from ``HEIST_SERVER_SECRET``; without it one is made and kept in
``<work>/secret.txt`` (mode 600) so that later runs read the same key. Writes
results/defender/<out>.json, .md and .png (default out: owm).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bench.harness import command, output, rel, table, write_json
from shared.output_watermark import DIRECTIONS, FULL_SHARE, RATE, REGION_SPACES, TARGET_WEIGHTINGS
from shared.proc import run as run_child

REPO = Path(__file__).resolve().parent.parent
OBFUSCATIONS = ("permute", "affine", "pad_shuffle")


def bench_secret(work: Path) -> bytes:
    env = os.environ.get("HEIST_SERVER_SECRET")
    if env:
        return env.encode()
    path = work / "secret.txt"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip().encode()


def ensure_key(args: argparse.Namespace, secret: bytes):
    from server.defences.output_watermark import calibrate_checkpoint
    from shared.output_watermark import fingerprint, load_calibration

    path = args.work / "key.json"
    if path.exists():
        cal = load_calibration(path)
        if (cal.fingerprint == fingerprint(secret) and cal.directions == args.directions and cal.rate == args.rate
                and cal.region_space == args.region_space and cal.target_weighting == args.target_weighting
                and cal.full_share == args.full_share):
            return path, cal
    cal = calibrate_checkpoint(args.victim, secret, args.directions, args.rate, region_space=args.region_space,
                               target_weighting=args.target_weighting, full_share=args.full_share)
    path.write_text(cal.model_dump_json(indent=1))
    return path, cal


def copy_name(prefix: str, loss: str, n: int, attack: str | None = None) -> str:
    return f"{prefix}-{loss}-{n}" + (f"-{attack}" if attack else "")


REMOVAL_ARGS = {"cse": ["--remove-watermark", "cse"], "cse-oracle": ["--remove-watermark", "cse"],
                "spa": ["--remove-watermark", "spa"]}


def steal_plan(args: argparse.Namespace) -> list[tuple[str, str, str, int, str, list[str]]]:
    """(folder name, tier, loss, queries, removal attack, extra steal args) of every copy to make."""
    plan = [(copy_name("stolen", loss, n), "wm", loss, n, "none", []) for loss in args.losses for n in args.budgets]
    for attack in args.removal:
        extra = list(REMOVAL_ARGS[attack])
        if attack.startswith("cse"):  # the thief's best case: it removes as many directions as the key has
            extra += ["--cse-directions", str(args.directions)]
        if attack == "cse":
            extra += ["--cse-reference", str(args.cse_reference)]
        elif attack == "cse-oracle":  # the upper bound: the victim's own unmarked weights as the thief's reference
            extra += ["--cse-reference", str(args.victim)]
        plan += [(copy_name("stolen", loss, args.removal_budget, attack), "wm", loss, args.removal_budget, attack, extra)
                 for loss in (args.oracle_losses if attack == "cse-oracle" else args.losses)]
    plan += [(copy_name("unmarked", c.split(":")[0], int(c.split(":")[1])), "clean", c.split(":")[0], int(c.split(":")[1]),
              "none", []) for c in args.controls]
    return plan


def steal_and_customers(args: argparse.Namespace, key_path: Path, secret: bytes) -> dict:
    """Serve the victim (tiers wm and clean), make the missing copies, measure the customers on both tiers."""
    from attacker.measure import probe_api
    from shared.cache import QueryCache
    from shared.checkpoint import read_config
    from testbed.legit import LegitTask, legit_user
    from testbed.services import serve

    spec = read_config(args.victim).data_spec()
    tiers = {"wm": {"outputs": ["representation"], "defences": [
                 {"name": "output_watermark", "params": {"key": str(key_path.resolve()), "strength": args.strength}}]},
             "clean": {"outputs": ["representation"]}}
    customers: dict = {}
    with serve(args.victim, {"tiers": tiers}, secret=secret.decode(), log_path=args.work / "server.log") as srv:
        for name, tier, loss, n, _, extra in steal_plan(args):
            out = args.work / name
            if (out / "config.json").exists():
                continue
            key = srv.new_account(f"thief-{name}", tier)
            cmd = [sys.executable, "-m", "attacker.cli", "steal", "--url", srv.url, "--queries", str(n), "--loss", loss,
                   "--query-set", "attack", "--width", "16", "--epochs", str(args.epochs), "--batch-size", "128",
                   "--out", str(out), "--cache", str(args.work / f"cache-{tier}"), "--no-eval", "--threads",
                   str(args.threads), *extra]
            print("$", " ".join(cmd[2:]), flush=True)
            run_child(cmd, cwd=REPO, check=True, env={**os.environ, "HEIST_API_KEYS": key})
        for tier in ("clean", "wm"):
            rows = []
            with QueryCache(args.work / f"cache-customers-{tier}") as cache:
                for i in range(args.customers):
                    task = LegitTask(seed=7 + i)
                    rows.append(legit_user(srv.url, srv.new_account(f"customer-{tier}-{i}", tier), cache, task,
                                           spec=spec, progress=False))
                full, _ = probe_api(srv.url, srv.new_account(f"prober-{tier}", tier), spec, cache, args.probe_train_size,
                                    progress=False)
            customers[tier] = {"narrow": [r["accuracy"] for r in rows], "narrow_tasks": [r["task"] for r in rows],
                               "main_task": full}
    clean, wm = customers["clean"], customers["wm"]
    customers["narrow_drop_points"] = [round(100 * (a - b), 2) for a, b in zip(clean["narrow"], wm["narrow"], strict=True)]
    customers["main_task_drop_points"] = {k: round(100 * (clean["main_task"][k] - wm["main_task"][k]), 2)
                                          for k in clean["main_task"]}
    return customers


def suspects(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    found, missing = [], []
    for name, tier, loss, n, attack, _ in steal_plan(args):
        path = args.work / name
        truth = "stolen" if tier == "wm" else "unmarked copy"
        if (path / "config.json").exists():
            found.append({"name": name, "path": path, "truth": truth, "loss": loss, "queries": n, "removal": attack})
        else:
            missing.append(f"{name} (bench.owm --steal)")
    indep = sorted(p for p in args.work.glob("independent-*") if (p / "config.json").exists()) + list(args.independent)
    found += [{"name": p.name if p.parent == args.work else rel(p), "path": p, "truth": "independent"} for p in indep]
    found.append({"name": "victim (its own weights)", "path": args.victim, "truth": "victim"})
    return found, missing


def null_level(args: argparse.Namespace, victim, cal, secret: bytes, rows: list[dict]) -> dict:
    """p-values of the independents and unmarked copies on disjoint unseen pools under several secrets."""
    from scipy import stats

    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import load_split
    from shared.output_watermark import watermark_scores
    from shared.probe import extract_features

    spec = victim.config.data_spec()
    pool_images = np.concatenate([load_split(spec, "public", progress=False).images,
                                  load_split(spec, "test", progress=False).images])
    pools = [pool_images[i * 1000:(i + 1) * 1000] for i in range(min(args.null_pools, len(pool_images) // 1000))]
    keys = [secret] + [f"null-secret-{i}".encode() for i in range(1, args.null_secrets)]
    clean = [extract_features(victim.encoder, p) for p in pools]
    ps: list[float] = []
    per: dict[str, list[float]] = {}
    for r in tqdm([r for r in rows if r["truth"] in ("independent", "unmarked copy") and not r.get("obfuscation")],
                  desc="null pools", unit="suspect"):
        enc = load_checkpoint(r["path"]).encoder
        for pool, v in zip(pools, clean, strict=True):
            answers = extract_features(enc, pool)
            for k in keys:
                p = watermark_scores(answers, v, k, cal, decoys=args.null_decoys).p_value
                ps.append(p)
                per.setdefault(r["name"], []).append(p)
    arr = np.asarray(ps)
    return {"tests": len(arr), "pools": len(pools), "secrets": len(keys),
            "rejections": {str(a): int((arr < a).sum()) for a in (0.001, 0.01, 0.05, 0.1)},
            "rate": {str(a): round(float((arr < a).mean()), 4) for a in (0.001, 0.01, 0.05, 0.1)},
            "ks_uniform_p": float(stats.kstest(arr, "uniform").pvalue), "min_p": float(arr.min()),
            "per_suspect_min_p": {k: float(min(v)) for k, v in per.items()}, "p_values": [round(float(p), 6) for p in arr]}


def removal_sweep(args: argparse.Namespace, victim, cal, secret: bytes) -> list[dict]:
    """Each removal attack on the marked answers to the thief's own queries, at each strength (local: the
    mark is a deterministic function of the victim's answer, the API's own): the share of the planted
    shift toward the targets left on the marked answers, and what the attack did to the rest."""
    from attacker.removal import cse, perturb_images, spa_keep, spa_scores
    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import load_split
    from shared.output_watermark import Marker, standardise
    from shared.probe import extract_features

    spec = victim.config.data_spec()
    images = load_split(spec, "attack", progress=False).images[:args.removal_budget]
    clean = extract_features(victim.encoder, images)
    copies = perturb_images(images, 2, sigma=2.0, shift=0, seed=0)  # heist-attack steal's SPA defaults
    clean_pert = extract_features(victim.encoder, copies)
    refs = {"cse": extract_features(load_checkpoint(args.cse_reference).encoder, images), "cse-oracle": clean}
    rows = []
    for strength in tqdm(args.sweep, desc="removal sweep", unit="strength"):
        marker = Marker(cal, secret, strength)
        marked, w = marker.mark(clean)
        hit = w.sum(1) > 0
        zc = standardise(clean, marker.center, marker.scale)[0]
        target = marker.targets[w.argmax(1)]

        def shift(answers: np.ndarray, zc=zc, target=target, marker=marker) -> np.ndarray:
            return ((standardise(answers, marker.center, marker.scale)[0] - zc) * target).sum(1)

        planted = shift(marked)[hit].sum()
        for attack in args.removal:
            if attack == "spa":
                pert = marker.mark(clean_pert)[0].reshape(len(images), 2, -1)
                keep = np.zeros(len(images), bool)
                keep[spa_keep(spa_scores(marked, pert, 10), 0.1)] = True
                left = float(shift(marked)[hit & keep].sum() / planted)
                rows.append({"strength": strength, "attack": attack, "mark_left": round(left, 3),
                             "marked_dropped": round(float((~keep)[hit].mean()), 3),
                             "unmarked_dropped": round(float((~keep)[~hit].mean()), 3), "unmarked_change": 0.0})
                continue
            res = cse(marked, refs[attack], directions=cal.directions, seed=0)
            change = np.linalg.norm(res.answers - marked, axis=1) / np.linalg.norm(marked - marked.mean(0), axis=1)
            rows.append({"strength": strength, "attack": attack,
                         "mark_left": round(float(shift(res.answers)[hit].sum() / planted), 3),
                         "marked_dropped": 0.0, "unmarked_dropped": 0.0,
                         "unmarked_change": round(float(np.median(change[~hit])), 3)})
    return rows


def plot(rows: list[dict], null: dict | None, alpha: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 0.24 * len(rows) + 2), gridspec_kw={"width_ratios": [2, 1]})
    colour = {"stolen": "tab:red", "independent": "tab:blue", "unmarked copy": "tab:grey", "victim": "tab:green"}
    y = np.arange(len(rows))
    axes[0].barh(y, [min(-np.log10(max(r["p"], 1e-300)), 50) if r["p"] is not None else 0 for r in rows],
                 color=[colour[r["truth"]] for r in rows])
    axes[0].axvline(-np.log10(alpha), color="k", ls="--", lw=1)
    axes[0].axvline(6, color="tab:red", ls=":", lw=1)
    axes[0].set_yticks(y, [r["label"] for r in rows], fontsize=7)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("-log10 p (capped at 50); dashed: alpha, dotted: 1e-6")
    axes[0].set_title("output watermark: red stolen, blue independent, grey copy of the unmarked API")
    if null:
        p = np.sort(np.asarray(null["p_values"]))
        q = (np.arange(1, len(p) + 1) - 0.5) / len(p)
        axes[1].loglog(q, p, ".", ms=3)
        axes[1].loglog([q[0], 1], [q[0], 1], "k--", lw=1)
        axes[1].set_xlabel("uniform quantile")
        axes[1].set_ylabel("p-value")
        axes[1].set_title(f"null: {null['tests']} tests on unseen pools")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--victim", type=Path, default=REPO / "assets" / "victim-cpu")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "owm", help="key, copies, caches and independents")
    ap.add_argument("--strength", type=float, default=0.2)
    ap.add_argument("--directions", type=int, default=DIRECTIONS)
    ap.add_argument("--rate", type=float, default=RATE)
    ap.add_argument("--full-share", type=float, default=FULL_SHARE,
                    help="share of each direction's marked inputs at full strength (heist-server watermark-key --full-share)")
    ap.add_argument("--region-space", choices=REGION_SPACES, default=REGION_SPACES[0],
                    help="the key's region normals (heist-server watermark-key --region-space)")
    ap.add_argument("--target-weighting", choices=TARGET_WEIGHTINGS, default=TARGET_WEIGHTINGS[0],
                    help="the key's targets (heist-server watermark-key --target-weighting)")
    ap.add_argument("--steal", action="store_true", help="serve the victim and make the missing copies; measure customers")
    ap.add_argument("--losses", nargs="+", default=["mse", "infonce", "softnn"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[1000, 4000])
    ap.add_argument("--removal", nargs="*", default=["cse", "cse-oracle", "spa"], choices=list(REMOVAL_ARGS),
                    help="removal attacks at --removal-budget (cse-oracle: CSE with the victim's own weights as reference)")
    ap.add_argument("--removal-budget", type=int, default=4000)
    ap.add_argument("--oracle-losses", nargs="*", default=["mse"], help="losses of the cse-oracle copies")
    ap.add_argument("--cse-reference", type=Path, default=REPO / "runs" / "owm" / "independent-attack",
                    help="the thief's own encoder for CSE (default: one trained on the attack split, the thief's images)")
    ap.add_argument("--controls", nargs="*", default=["mse:4000"], metavar="LOSS:N",
                    help="copies stolen from the unmarked tier")
    ap.add_argument("--independent", type=Path, nargs="*", default=[REPO / "assets" / "victim-cpu-mnist5k"])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--customers", type=int, default=5)
    ap.add_argument("--probe-train-size", type=int, default=5000)
    ap.add_argument("--obfuscate", nargs="*", default=list(OBFUSCATIONS), choices=OBFUSCATIONS)
    ap.add_argument("--align-n", type=int, default=1000, help="public queries to each suspect")
    ap.add_argument("--decoys", type=int, default=1000)
    ap.add_argument("--null-pools", type=int, default=6)
    ap.add_argument("--null-secrets", type=int, default=5)
    ap.add_argument("--null-decoys", type=int, default=300, help="decoy keys per null test")
    ap.add_argument("--sweep", type=float, nargs="*", default=[0.1, 0.2, 0.4, 0.8],
                    help="strengths of the removal sweep on the thief's answers (local, no training); none: skip it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="owm")
    args = ap.parse_args(argv)

    import torch

    from attacker.measure import probe_local
    from defender.config import VerifyConfig
    from defender.suspects import LocalSuspect
    from defender.verify import verify
    from shared.checkpoint import load_checkpoint
    from shared.transforms import make_transform

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    secret = bench_secret(args.work)
    setting = {"strength": args.strength, "directions": args.directions, "rate": args.rate, "victim": str(args.victim)}
    if args.region_space != REGION_SPACES[0]:  # work folders made before region spaces existed stay valid
        setting["region_space"] = args.region_space
    if args.target_weighting != TARGET_WEIGHTINGS[0]:
        setting["target_weighting"] = args.target_weighting
    if args.full_share != FULL_SHARE:
        setting["full_share"] = args.full_share
    stamp = args.work / "setting.json"
    if stamp.exists() and json.loads(stamp.read_text()) != setting:
        raise SystemExit(f"{args.work} holds copies made with {stamp.read_text().strip()}; use another --work for {setting}")
    stamp.write_text(json.dumps(setting))
    key_path, cal = ensure_key(args, secret)
    customers_path = args.work / "customers.json"
    if args.steal:
        customers_path.write_text(json.dumps(steal_and_customers(args, key_path, secret), indent=1))
    customers = json.loads(customers_path.read_text()) if customers_path.exists() else None
    victim = load_checkpoint(args.victim)
    spec = victim.config.data_spec()
    cfg = VerifyConfig(methods=("output_watermark",), align_n=args.align_n, owm_decoys=args.decoys)
    todo, missing = suspects(args)
    probes: dict[str, float] = {}
    rows = []
    for s in tqdm(todo, desc="verify", unit="suspect"):
        ck = load_checkpoint(s["path"])
        if s["truth"] in ("stolen", "unmarked copy"):
            probes[s["name"]] = probe_local(ck.encoder, spec, args.probe_train_size, progress=False)[f"probe_{spec.main_task}"]
        for i, kind in enumerate([None, *args.obfuscate]):
            t = None if kind is None else make_transform(kind, ck.config.representation_dim, np.random.default_rng(100 + i), pad=16)
            rep = verify(victim, LocalSuspect(ck, transform=t, name=s["name"]), cfg, owm=(cal, secret))
            row = rep.row("output_watermark")
            assert row is not None
            rows.append({**{k: str(v) if isinstance(v, Path) else v for k, v in s.items()}, "obfuscation": kind,
                         "label": s["name"] + (f" [{kind}]" if kind else ""), "z": row.value, "p": row.p_value,
                         "verdict": row.verdict, "queries": rep.queries["sent"], "detail": row.detail})
            tqdm.write(f"{rows[-1]['label']:44s} truth={s['truth']:13s} z={row.value:7.2f} p={row.p_value:.1e} -> {row.verdict}")
    null = null_level(args, victim, cal, secret, rows) if args.null_pools else None
    sweep = removal_sweep(args, victim, cal, secret) if args.sweep and args.removal else []

    def fmt_p(p: float) -> str:
        return f"{p:.1e}"

    tab = [{"suspect": r["label"], "truth": r["truth"], "z": f"{r['z']:.2f}", "p": fmt_p(r["p"]), "verdict": r["verdict"],
            "queries": r["queries"], "thief probe": (f"{100 * probes[r['name']]:.1f}%" if r["name"] in probes else "")}
           for r in rows]
    cols = ["suspect", "truth", "z", "p", "verdict", "queries", "thief probe"]
    text = table(tab, cols)
    print(text)
    big = [r for r in rows if r["truth"] == "stolen" and r.get("queries") is not None and r.get("removal") == "none"]
    summary = {
        "stolen_plain_ge4000_flagged_1e-6": f"{sum(r['p'] < 1e-6 for r in big if int(r['name'].split('-')[2]) >= 4000)}"
                                            f"/{sum(int(r['name'].split('-')[2]) >= 4000 for r in big)}",
        "independents_flagged_0.01": f"{sum(r['p'] < 0.01 for r in rows if r['truth'] == 'independent')}"
                                     f"/{sum(r['truth'] == 'independent' for r in rows)}",
        "unmarked_copies_flagged_0.01": f"{sum(r['p'] < 0.01 for r in rows if r['truth'] == 'unmarked copy')}"
                                        f"/{sum(r['truth'] == 'unmarked copy' for r in rows)}",
        "independent_encoders": len({r["name"] for r in rows if r["truth"] == "independent"}),
        "max_queries_per_suspect": max(r["queries"] for r in rows),
    }
    removal = []
    for loss in args.losses:
        base = copy_name("stolen", loss, args.removal_budget)
        for attack in ["none", *args.removal]:
            name = copy_name("stolen", loss, args.removal_budget, None if attack == "none" else attack)
            rs = [r for r in rows if r["name"] == name]
            if not rs:
                continue
            ck_cfg = load_checkpoint(args.work / name).config.training
            removal.append({"loss": loss, "attack": attack, "p_plain": rs[0]["p"], "z_plain": rs[0]["z"],
                            "p_worst_obfuscated": max(r["p"] for r in rs), "thief_probe": probes.get(name),
                            "probe_cost_points": (round(100 * (probes[base] - probes[name]), 2)
                                                  if base in probes and name in probes else None),
                            "removal_queries": ck_cfg.get("cost", {}).get("removal_queries", 0),
                            "removal": ck_cfg.get("removal")})
    print(table([{**r, "p_plain": fmt_p(r["p_plain"]), "p_worst_obfuscated": fmt_p(r["p_worst_obfuscated"]),
                  "thief_probe": "" if r["thief_probe"] is None else f"{100 * r['thief_probe']:.1f}%"} for r in removal],
                ["loss", "attack", "p_plain", "p_worst_obfuscated", "thief_probe", "probe_cost_points", "removal_queries"]))
    if sweep:
        print(table(sweep, ["strength", "attack", "mark_left", "marked_dropped", "unmarked_dropped", "unmarked_change"]))
    print(json.dumps(summary, indent=1))
    if null:
        print("null: " + json.dumps({k: null[k] for k in ("tests", "rate", "ks_uniform_p", "min_p")}))
    if customers:
        print(f"customers: narrow drops (points) {customers['narrow_drop_points']}, main task {customers['main_task_drop_points']}")
    cmd = command("bench.owm", argv)
    path = write_json("defender", args.out, {
        "command": cmd, "key": {"directions": cal.directions, "rate": cal.rate, "strength": args.strength,
                                "region_space": cal.region_space, "target_weighting": cal.target_weighting,
                                "full_share": cal.full_share,
                                "calibrated_on": cal.calibrated_on}, "verify_config": cfg.model_dump(),
        "summary": summary, "rows": rows, "thief_probes": probes, "removal": removal, "removal_budget": args.removal_budget, "removal_sweep": sweep,
        "customers": customers,
        "null": null, "missing": missing})
    print(f"wrote {path} and {plot(rows, null, cfg.alpha, output('defender', args.out + '.png'))}")
    md = ["# Output watermark", "", f"`{cmd}`", "", "```", text, "```", "", "## Summary", "", "```",
          json.dumps(summary, indent=1), "```", ""]
    output("defender", f"{args.out}.md").write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
