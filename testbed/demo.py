"""The testbed in one command: provider, customer, thief and owner, all over real HTTP.

    heist-demo [--policy b4b] [--victim runs/victim] [--queries 4000] [--out runs/demo]

1. victim: reuse ``--victim`` when it holds a checkpoint, else train it (``heist-server train --preset P``);
2. data: the victim's procedural heist-shapes dataset (cached under data/);
3. legitimate profile of that victim (``heist-server defences record-profile``; cached in the victim folder);
4. the victim API (``heist-server serve``) on loopback: embedded store, or Redis when ``REDIS_URL`` is set;
   one tier per policy: ``none`` (baseline) and the chosen one;
5. a legitimate customer on each tier runs its narrow task (3 shape classes, linear probe);
6. a thief on the chosen policy's tier runs ``heist-attack steal`` (PoW, Retry-After, resumable cache);
7. the stolen copy is hosted as a suspect API (``heist-server serve --obfuscate permute``);
8. the owner runs ``heist-defend verify`` against that endpoint (watermark, aligned watermark, DI, similarity);
9. one summary: victim quality, the customer's quality with and without the defence, the stolen
   copy's quality, what the thief paid, the ownership verdicts with p-values
   (``OUT/summary.json`` and ``OUT/summary.md``).

Every server started here is stopped on exit (also on Ctrl-C and errors).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from testbed.services import REPO, serve

console = Console(stderr=True)


def step(n: int, total: int, text: str) -> None:
    console.rule(f"[bold]step {n}/{total}[/]: {text}")


def run(cmd: list[str], env: dict | None = None) -> None:
    shown = " ".join(cmd)  # keys travel in the environment, never on a command line
    console.print(f"[dim]$ {shown}[/]")
    subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, env={**os.environ, **(env or {})}, check=True)


def ensure_victim(victim: Path, preset: str) -> dict:
    if (victim / "config.json").is_file():
        console.print(f"reusing the victim in {victim}")
    else:
        run(["server.cli", "train", "--preset", preset, "--out", str(victim)])
    return json.loads((victim / "config.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="heist-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="b4b", help="defence policy of the customer's and thief's tier: none, noise, similar, "
                   "b4b, pow, all (testbed/policies.py)")
    p.add_argument("--victim", type=Path, default=REPO / "runs" / "victim", help="victim checkpoint (trained when missing)")
    p.add_argument("--preset", default="cpu", help="training preset when the victim must be trained")
    p.add_argument("--queries", type=int, default=4000, help="thief's query budget (attack split)")
    p.add_argument("--loss", default="mse", help="thief's stealing loss")
    p.add_argument("--epochs", type=int, default=20, help="thief's training epochs")
    p.add_argument("--obfuscate", default="permute", choices=["none", "permute", "affine", "pad_shuffle"],
                   help="how the thief hides the stolen copy's outputs when serving it")
    p.add_argument("--verify-n", type=int, default=1000, help="defender's sample sizes (watermark images, DI parts, alignment)")
    p.add_argument("--probe-train-size", type=int, default=5000, help="probe training images for the stolen copy")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "demo")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)

    import torch

    from attacker.cache import QueryCache
    from attacker.measure import probe_local
    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import MAIN_TASK, DataSpec, make_all
    from testbed.legit import LegitTask, legit_user
    from testbed.policies import POLICIES, policy_tiers, representation_scale

    if a.policy not in POLICIES:
        p.error(f"unknown policy {a.policy!r}; choose from {', '.join(POLICIES)}")
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    out = a.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    redis_url = os.environ.get("REDIS_URL")
    total = 9

    step(1, total, "victim (reused or trained)")
    vcfg = ensure_victim(a.victim, a.preset)
    step(2, total, "data (the victim's dataset spec)")
    spec = DataSpec.model_validate(vcfg["data"]["spec"])
    make_all(spec)
    victim_metrics = vcfg.get("metrics", {})
    step(3, total, "legitimate profile of this victim")
    profile = a.victim / "legit_profile.json"
    if not profile.is_file():
        run(["server.cli", "defences", "record-profile", "--checkpoint", str(a.victim), "--out", str(profile)])
    else:
        console.print(f"reusing {profile}")
    policies = ["none"] if a.policy == "none" else ["none", a.policy]
    tiers = policy_tiers(policies, profile, representation_scale(a.victim))
    summary: dict = {"policy": a.policy, "store": "redis" if redis_url else "embedded", "victim": str(a.victim),
                     "victim_quality": {k: v for k, v in victim_metrics.items() if k.startswith("probe_") or k == "watermark_accuracy"}}

    step(4, total, f"victim API ({summary['store']} store), tiers {', '.join(tiers)}")
    with serve(a.victim, {"tiers": tiers, "max_images_per_request": 64}, redis_url=redis_url,
               log_path=out / "victim-api.log") as victim_api:
        console.print(f"victim API at {victim_api.url}")
        step(5, total, "legitimate customers (3 shape classes, linear probe on bought embeddings)")
        legit = {}
        for pol in policies:
            key = victim_api.new_account(f"customer-{pol}", f"policy-{pol}")
            with QueryCache(out / f"customer-{pol}") as cache:
                legit[pol] = legit_user(victim_api.url, key, cache, LegitTask(), spec=spec)
            console.print(f"customer on policy {pol}: accuracy {100 * legit[pol]['accuracy']:.1f}% "
                          f"({legit[pol]['queries']} queries, {legit[pol]['seconds']} s, {legit[pol]['pow_hashes']} PoW hashes)")
        summary["customer"] = legit
        step(6, total, f"the thief steals over HTTP (policy {a.policy}, {a.queries} queries, loss {a.loss})")
        thief_key = victim_api.new_account("thief", f"policy-{a.policy}")
        stolen_dir = out / "stolen"
        run(["attacker.cli", "steal", "--url", victim_api.url, "--queries", str(a.queries), "--loss", a.loss,
             "--query-set", "attack", "--data-seed", str(spec.seed), "--width", "16", "--epochs", str(a.epochs), "--batch-size", "128",
             "--out", str(stolen_dir), "--cache", str(out / "thief-cache"), "--no-eval", "--threads", str(a.threads)],
            env={"HEIST_API_KEYS": thief_key})
        summary["thief_defence_state"] = victim_api.account_defences("thief")
    stolen = load_checkpoint(stolen_dir)
    cost = stolen.config.training.get("cost", {})
    console.print("measuring the stolen copy (linear probes, local)")
    stolen_q = probe_local(stolen.encoder, spec, a.probe_train_size, progress=False)
    summary["stolen_quality"] = stolen_q
    summary["thief_cost"] = cost

    step(7, total, f"the thief hosts the stolen copy (obfuscation: {a.obfuscate})")
    suspect_cfg = {"tiers": {"unlimited": {"outputs": ["representation"]}}}
    if a.obfuscate != "none":
        suspect_cfg["obfuscation"] = {"kind": a.obfuscate, "seed": 11}
    with serve(stolen_dir, suspect_cfg, log_path=out / "suspect-api.log") as suspect_api:
        owner_key = suspect_api.new_account("owner", "unlimited")
        step(8, total, "the owner verifies the suspect endpoint")
        verify_dir = out / "verify"
        run(["defender.cli", "verify", "--victim", str(a.victim), "--suspect", suspect_api.url, "--out", str(verify_dir), "--quiet",
             "--wm-n", str(a.verify_n), "--align-n", str(a.verify_n), "--di-fit", str(a.verify_n),
             "--di-private", str(a.verify_n), "--di-public", str(a.verify_n)],
            env={"HEIST_API_KEY": owner_key})
    ver = json.loads((verify_dir / "verify.json").read_text())
    summary["verdicts"] = [{k: r.get(k) for k in ("method", "statistic", "value", "p_value", "verdict")} for r in ver["rows"]]
    summary["overall_verdict"] = ver.get("overall")
    summary["minutes"] = round((time.perf_counter() - t_start) / 60, 1)

    step(9, total, "summary")
    tab = Table(title=f"Encoder Heist demo - policy {a.policy}")
    tab.add_column("who")
    tab.add_column("what")
    tab.add_column("value", justify="right")
    vq = summary["victim_quality"]
    tab.add_row("victim", f"linear probe {MAIN_TASK} (local)", f"{100 * vq.get(f'probe_{MAIN_TASK}', float('nan')):.1f}%")
    for pol, r in legit.items():
        tab.add_row("customer", f"3-class task via API, policy {pol}", f"{100 * r['accuracy']:.1f}%")
    tab.add_row("thief", f"stolen copy, linear probe {MAIN_TASK}", f"{100 * stolen_q[f'probe_{MAIN_TASK}']:.1f}%")
    tab.add_row("thief", "queries / wall time", f"{cost.get('queries')} / {cost.get('wall_seconds')} s")
    tab.add_row("thief", "PoW hashes / seconds", f"{cost.get('pow_hashes', 0)} / {cost.get('pow_seconds', 0)} s")
    ds = summary["thief_defence_state"]
    tab.add_row("server", "thief's coverage / sigma / similar hits",
                f"{ds.get('coverage', 0):.3f} / {ds.get('sigma', 0):.3g} / {ds.get('similar_hits', 0)}")
    for v in summary["verdicts"]:
        val = "-" if v["value"] is None else f"{v['value']:.3f}"
        pv = "-" if v["p_value"] is None else f"{v['p_value']:.1e}"
        tab.add_row("owner", f"{v['method']} ({v['statistic']})", f"{val}, p={pv} -> {v['verdict']}")
    tab.add_row("owner", "overall verdict", str(summary["overall_verdict"]))
    tab.add_row("demo", "minutes", str(summary["minutes"]))
    Console().print(tab)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    md = ["# Encoder Heist demo", "", f"policy `{a.policy}`, store {summary['store']}, {summary['minutes']} min", "",
          "| who | what | value |", "|---|---|---|"]
    md += [f"| {w} | {what} | {v} |" for w, what, v in zip(*(c._cells for c in tab.columns), strict=True)]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    console.print(f"summary written to {out / 'summary.json'} and {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
