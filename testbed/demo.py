"""The testbed in one command: provider, customer, thief and owner, all over real HTTP.

    heist-demo [--policy b4b] [--victim runs/victim] [--queries 4000] [--out runs/demo]

1. victim: reuse ``--victim`` when it holds a checkpoint; else, for the ``cpu`` preset, copy the
   shipped victim (``assets/victim-cpu``, or ``assets/victim-cpu-mnist5k`` with ``--dataset mnist5k``:
   weights checked against its sha256, see its README for the command that made it); else, or with
   ``--train-victim``, train it
   (``heist-server train --preset P``);
2. data: the victim's benchmark (its checkpoint's data spec: the procedural heist-shapes by default,
   ``--dataset mnist5k`` for real MNIST digits; cached under data/);
3. legitimate profile of that victim (``python -m testbed.profile``; cached in the victim folder), and
   the output watermark's key for this run's server secret (``heist-server watermark-key``);
4. the victim API (``heist-server serve``) on loopback: embedded store, or Redis when ``REDIS_URL`` is set;
   one tier per policy: ``none`` (baseline) and the chosen one, which also carries the output
   watermark (``--watermark STRENGTH``; 0 leaves it out);
5. a legitimate customer on each tier runs its narrow task (3 classes, linear probe);
6. a thief on each tier runs ``heist-attack steal`` (PoW, Retry-After, resumable cache);
7. each stolen copy is hosted as a suspect API (``heist-server serve --obfuscate permute``) and the
   owner runs ``heist-defend verify`` against that endpoint (output watermark, rotation watermark raw
   and aligned, DI, similarity);
8. one summary, undefended next to the policy: victim quality, the customer's quality, the stolen
   copy's quality, what the thief paid, the ownership verdicts with p-values
   (``OUT/<time>/summary.json`` and ``summary.md``).

Every server started here is stopped on exit (also on Ctrl-C and errors).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shared.proc import run as run_child
from testbed.services import REPO, serve

console = Console(stderr=True)


def step(n: int, total: int, text: str) -> None:
    console.rule(f"[bold]step {n}/{total}[/]: {text}")


def run(cmd: list[str], env: dict | None = None) -> None:
    shown = " ".join(cmd)  # keys travel in the environment, never on a command line
    console.print(f"[dim]$ {shown}[/]")
    run_child([sys.executable, "-m", *cmd], cwd=REPO, env={**os.environ, **(env or {})}, check=True)


SHIPPED_VICTIMS = REPO / "assets"  # assets/victim-<preset>: model.safetensors, config.json, SHA256SUMS


def shipped_victim(preset: str, dataset: str | None = None) -> Path | None:
    """assets/victim-<preset> (the procedural benchmark) or assets/victim-<preset>-<dataset>, if shipped."""
    folder = SHIPPED_VICTIMS / (f"victim-{preset}" if dataset in (None, "heist-shapes") else f"victim-{preset}-{dataset}")
    return folder if (folder / "SHA256SUMS").is_file() else None


def copy_shipped_victim(src: Path, dest: Path) -> None:
    """Copy a shipped checkpoint after checking every file against its SHA256SUMS (all or nothing)."""
    files: dict[str, bytes] = {}
    for line in (src / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        files[name] = (src / name).read_bytes()
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise RuntimeError(f"{src / name} does not match its SHA256SUMS entry; restore it (git checkout) or use --train-victim")
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (dest / (name + ".tmp")).write_bytes(data)
    for name in sorted(files, key=lambda n: n == "config.json"):  # config.json last: it marks a complete checkpoint
        shutil.move(dest / (name + ".tmp"), dest / name)


def ensure_victim(victim: Path, preset: str, train: bool = False, dataset: str | None = None) -> dict:
    if (victim / "config.json").is_file():
        console.print(f"reusing the victim in {victim}")
    elif not train and (src := shipped_victim(preset, dataset)) is not None:
        copy_shipped_victim(src, victim)
        console.print(f"using the shipped {preset} victim ({src.relative_to(REPO)}, made by the command in its README) "
                      f"-> {victim}; --train-victim trains one on this machine instead")
    else:
        data = [] if dataset is None else ["--dataset", dataset]
        run(["server.cli", "train", "--preset", preset, *data, "--out", str(victim)])
    return json.loads((victim / "config.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="heist-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="b4b", help="defence policy of the customer's and thief's tier: none, noise, similar, "
                   "b4b, pow, all (testbed/policies.py)")
    p.add_argument("--victim", type=Path, default=REPO / "runs" / "victim", help="victim checkpoint (trained when missing)")
    p.add_argument("--preset", default="cpu", help="training preset when the victim must be trained")
    p.add_argument("--train-victim", action="store_true", help="train a missing victim here instead of copying the "
                   "shipped one (assets/victim-<preset>); the cpu preset trains 10 epochs of 20,000 images")
    p.add_argument("--dataset", default=None, help="the benchmark of a missing victim (mnist5k: real MNIST digits; shipped "
                   "for the cpu preset); default: the procedural heist-shapes (a reused victim keeps its own)")
    p.add_argument("--queries", type=int, default=4000, help="thief's query budget (attack split; at most its size)")
    p.add_argument("--loss", default="mse", help="thief's stealing loss")
    p.add_argument("--epochs", type=int, default=20, help="thief's training epochs")
    p.add_argument("--obfuscate", default="permute", choices=["none", "permute", "affine", "pad_shuffle"],
                   help="how the thief hides the stolen copy's outputs when serving it")
    p.add_argument("--watermark", type=float, default=0.2, metavar="STRENGTH",
                   help="output watermark on the chosen policy's tier (defence output_watermark, first in the chain); "
                        "0: none")
    p.add_argument("--verify-n", type=int, default=1000, help="defender's sample sizes (watermark images, DI parts, alignment), "
                   "each at most what the victim's splits hold (mnist5k: 500 public images for the alignment)")
    p.add_argument("--probe-train-size", type=int, default=5000, help="probe training images for the stolen copy")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "demo")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from attacker.measure import probe_local
    from shared.cache import QueryCache
    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import DataSpec, load_split, make_all, private_set_size
    from testbed.legit import LegitTask, legit_user
    from testbed.policies import POLICIES, policy_tiers, representation_scale

    if a.policy not in POLICIES:
        p.error(f"unknown policy {a.policy!r}; choose from {', '.join(POLICIES)}")
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    out = a.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    redis_url = os.environ.get("REDIS_URL")
    total = 8

    step(1, total, "victim (reused or trained)")
    vcfg = ensure_victim(a.victim, a.preset, a.train_victim, a.dataset)
    step(2, total, "data (the victim's dataset spec)")
    spec = DataSpec.model_validate(vcfg["data"]["spec"])
    make_all(spec)
    queries = min(a.queries, spec.splits["attack"].size)
    test_labels = load_split(spec, "test", progress=False).labels[spec.main_task]
    task = LegitTask(images=min(1200, 3 * int(np.bincount(test_labels).min())))  # 3 classes' worth of the test split
    victim_metrics = vcfg.get("metrics", {})
    step(3, total, "legitimate profile of this victim")
    profile = a.victim / "legit_profile.json"
    if not profile.is_file():
        run(["testbed.profile", "--checkpoint", str(a.victim), "--out", str(profile)])
    else:
        console.print(f"reusing {profile}")
    policies = ["none"] if a.policy == "none" else ["none", a.policy]
    tiers = policy_tiers(policies, profile, representation_scale(a.victim))
    secret = secrets.token_urlsafe(24)  # this run's server secret: the watermark key is drawn from it
    owm_key = out / "owm_key.json"
    if a.watermark > 0 and a.policy != "none":
        from server.defences.output_watermark import calibrate_checkpoint

        owm_key.write_text(calibrate_checkpoint(a.victim, secret.encode(), split="test",
                                                n=min(2000, spec.splits["test"].size)).model_dump_json())
        tier = tiers[f"policy-{a.policy}"]
        tier["defences"] = [{"name": "output_watermark", "params": {"key": str(owm_key), "strength": a.watermark}},
                            *tier["defences"]]
        console.print(f"output watermark (strength {a.watermark}) on tier policy-{a.policy}, key {owm_key}")
    summary: dict = {"policy": a.policy, "watermark": a.watermark if owm_key.exists() else 0, "dataset": spec.dataset, "main_task": spec.main_task, "store": "redis" if redis_url else "embedded", "victim": str(a.victim),
                     "victim_quality": {k: v for k, v in victim_metrics.items() if k.startswith(("probe_", "watermark"))}}

    step(4, total, f"victim API ({summary['store']} store), tiers {', '.join(tiers)}")
    with serve(a.victim, {"tiers": tiers, "max_images_per_request": 64}, redis_url=redis_url, secret=secret,
               log_path=out / "victim-api.log") as victim_api:
        console.print(f"victim API at {victim_api.url}")
        step(5, total, f"legitimate customers (3 {spec.main_task} classes, linear probe on bought embeddings)")
        legit = {}
        for pol in policies:
            key = victim_api.new_account(f"customer-{pol}", f"policy-{pol}")
            with QueryCache(out / f"customer-{pol}") as cache:
                legit[pol] = legit_user(victim_api.url, key, cache, task, spec=spec)
            console.print(f"customer on policy {pol}: accuracy {100 * legit[pol]['accuracy']:.1f}% "
                          f"({legit[pol]['queries']} queries, {legit[pol]['seconds']} s, {legit[pol]['pow_hashes']} PoW hashes)")
        summary["customer"] = legit
        thieves: dict[str, dict] = {}
        step(6, total, f"thieves steal over HTTP ({queries} queries, loss {a.loss}), one per tier")
        for pol in policies:
            key = victim_api.new_account(f"thief-{pol}", f"policy-{pol}")
            data_root = [] if spec.root is None else ["--data-root", spec.root]
            run(["attacker.cli", "steal", "--url", victim_api.url, "--queries", str(queries), "--loss", a.loss,
                 "--query-set", "attack", "--dataset", spec.dataset, *data_root, "--data-seed", str(spec.seed), "--width", "16", "--epochs", str(a.epochs),
                 "--batch-size", "128", "--out", str(out / f"stolen-{pol}"), "--cache", str(out / f"thief-cache-{pol}"),
                 "--no-eval", "--threads", str(a.threads)], env={"HEIST_API_KEYS": key})
            thieves[pol] = {"defence_state": victim_api.account_defences(f"thief-{pol}")}
    for pol in policies:
        stolen = load_checkpoint(out / f"stolen-{pol}")
        console.print(f"measuring the stolen copy of tier {pol} (linear probes, local)")
        thieves[pol].update(cost=stolen.config.training.get("cost", {}),
                            quality=probe_local(stolen.encoder, spec, a.probe_train_size, progress=False))

    step(7, total, f"each thief hosts its copy (obfuscation: {a.obfuscate}); the owner verifies the endpoint")
    n_private = min(a.verify_n, private_set_size(spec, vcfg["data"].get("train_size")) // 2)  # two disjoint private parts
    suspect_cfg: dict = {"tiers": {"unlimited": {"outputs": ["representation"]}}}
    if a.obfuscate != "none":
        suspect_cfg["obfuscation"] = {"kind": a.obfuscate, "seed": 11}
    for pol in policies:
        with serve(out / f"stolen-{pol}", suspect_cfg, log_path=out / f"suspect-api-{pol}.log") as suspect_api:
            owner_key = suspect_api.new_account("owner", "unlimited")
            verify_dir = out / f"verify-{pol}"
            run(["defender.cli", "verify", "--victim", str(a.victim), "--suspect", suspect_api.url, "--out", str(verify_dir),
                 "--quiet", "--wm-n", str(n_private), "--align-n", str(min(a.verify_n, spec.splits["public"].size)),
                 "--di-fit", str(n_private), "--di-private", str(n_private),
                 "--di-public", str(min(a.verify_n, spec.splits["test"].size)),
                 *(["--owm-key", str(owm_key)] if owm_key.exists() else [])],
                env={"HEIST_API_KEY": owner_key, "HEIST_SERVER_SECRET": secret})
        ver = json.loads((verify_dir / "verify.json").read_text())
        thieves[pol]["verdicts"] = [{k: r.get(k) for k in ("method", "statistic", "value", "p_value", "verdict")}
                                    for r in ver["rows"]]
        thieves[pol]["overall_verdict"] = ver.get("overall")
    summary["thieves"] = thieves
    summary["minutes"] = round((time.perf_counter() - t_start) / 60, 1)

    step(8, total, "summary")
    rows = summary_rows(summary, policies)
    tab = Table(title=f"Encoder Heist demo: undefended vs policy {a.policy} ({summary['minutes']} min)")
    for c in ("who", "what", *(f"tier {p}" for p in policies)):
        tab.add_column(c, justify="left" if c in ("who", "what") else "right")
    for r in rows:
        tab.add_row(*r)
    Console().print(tab)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    md = ["# Encoder Heist demo", "", f"policy `{a.policy}`, store {summary['store']}, {summary['minutes']} min", "",
          "| who | what | " + " | ".join(f"tier {p}" for p in policies) + " |", "|---|---|" + "---|" * len(policies)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    console.print(f"summary written to {out / 'summary.json'} and {out / 'summary.md'}")
    return 0


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def summary_rows(summary: dict, policies: list[str]) -> list[list[str]]:
    """The summary table: one column per tier (undefended, then the chosen policy)."""
    from shared.data.synthetic import MAIN_TASK

    task = summary.get("main_task", MAIN_TASK)
    vq = summary["victim_quality"].get(f"probe_{task}")
    cust, thieves = summary["customer"], summary["thieves"]
    rows = [["victim", f"linear probe {task} (local)", *([_pct(vq)] * len(policies))],
            ["customer", "3-class task accuracy via API", *(_pct(cust[p]["accuracy"]) for p in policies)],
            ["customer", "PoW hashes paid", *(str(cust[p]["pow_hashes"]) for p in policies)],
            ["thief", f"stolen copy, linear probe {task}", *(_pct(thieves[p]["quality"][f"probe_{task}"]) for p in policies)],
            ["thief", "queries / wall time", *(f"{thieves[p]['cost'].get('queries')} / {thieves[p]['cost'].get('wall_seconds')} s"
                                               for p in policies)],
            ["thief", "PoW hashes / seconds", *(f"{thieves[p]['cost'].get('pow_hashes', 0)} / {thieves[p]['cost'].get('pow_seconds', 0)} s"
                                                for p in policies)],
            ["server", "thief's coverage / sigma / similar hits",
             *(f"{thieves[p]['defence_state'].get('coverage', 0):.3f} / {thieves[p]['defence_state'].get('sigma', 0):.3g} / "
               f"{thieves[p]['defence_state'].get('similar_hits', 0)}" for p in policies)]]
    methods = [v["method"] for v in thieves[policies[0]]["verdicts"]]
    for m in methods:
        cells = []
        for p in policies:
            v = next(x for x in thieves[p]["verdicts"] if x["method"] == m)
            val = "-" if v["value"] is None else f"{v['value']:.3f}"
            pv = "" if v["p_value"] is None else f", p={v['p_value']:.1e}"
            cells.append(f"{val}{pv} -> {v['verdict']}")
        stat = thieves[policies[0]]["verdicts"][methods.index(m)]["statistic"]
        rows.append(["owner", f"{m} ({stat})", *cells])
    rows.append(["owner", "overall verdict on the stolen copy", *(str(thieves[p]["overall_verdict"]) for p in policies)])
    return rows


if __name__ == "__main__":
    sys.exit(main())
