"""Defence trade-off: for each policy, the legitimate customer's accuracy vs the attacker's stolen
accuracy, and what each side paid; plus the adaptive attackers.

One real ``heist-server serve`` process hosts the victim with one tier per policy
(``testbed/policies.py``); per policy a fresh legitimate account runs its narrow task
(``testbed/legit.py``) and a fresh attacker account runs ``heist-attack steal`` (a subprocess, over
HTTP, ``--no-eval``); the stolen copy is then probed locally on the main task. Adaptive rows:
query averaging vs keyed noise, sybil accounts vs B4B's per-account transforms, and a
similar-query-avoiding attacker vs the similarity defence.

    python -m bench.tradeoff                      # all policies + adaptive rows (~40 min on 2 cores)
    python -m bench.tradeoff --policies none,b4b --no-adaptive
    python -m bench.tradeoff --checkpoint runs/mnist/victim --profile runs/mnist/victim/legit_profile.json \
        --thieves attack,heist-shapes:shifted_train,mnist5k:shifted_train --broad --queries 1000 --out tradeoff_mnist5k

The benchmark is the victim's own (its checkpoint's data spec). ``--thieves`` runs one thief per
query set and policy (``attack``: the victim's distribution; ``shifted_train``: its shifted domain;
``DATASET:SPLIT``: another benchmark, e.g. the sketch domain or real digits), each with
min(--queries, the set's size) queries. ``--broad`` adds a broad customer per policy: every class of
the main task, as many images as the thief buys (at most the test split), linear probe on 2/3.

Writes results/attack/<out>.json, .md and .png (default out: tradeoff).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from attacker.cache import QueryCache
from attacker.measure import probe_local
from attacker.queries import query_set_split
from bench.harness import PROFILE, command, output, table, write_json
from shared.checkpoint import load_checkpoint
from shared.data.synthetic import DataSpec, load_split
from shared.proc import run as run_child
from testbed.legit import LegitTask, legit_user
from testbed.policies import POLICIES, policy_tiers, representation_scale
from testbed.services import REPO, serve

# (label, policy, extra heist-attack steal args, number of attacker accounts)
ADAPTIVE = [
    ("averaging x4", "noise", ["--repeats", "4"], 1),
    ("sybils x4", "b4b", ["--anchors", "300"], 4),
    ("avoid-similar", "similar", ["--avoid-similar", "0.9"], 1),
]


def thief_queries(spec: DataSpec, query_set: str, wanted: int) -> int:
    """min(wanted, the query set's size): a thief cannot buy more images than its pool holds."""
    pool, split = query_set_split(query_set, spec.dataset, spec.seed, spec.root)
    return min(wanted, pool.splits[split].size)


def steal(url: str, keys: list[str], out: Path, cache: Path, a: argparse.Namespace, extra: list[str], spec: DataSpec,
          query_set: str = "attack") -> dict:
    n = thief_queries(spec, query_set, a.queries)
    data = ["--dataset", spec.dataset, "--data-seed", str(spec.seed), *([] if spec.root is None else ["--data-root", spec.root])]
    cmd = [sys.executable, "-m", "attacker.cli", "steal", "--url", url, "--queries", str(n), "--loss", a.loss,
           "--query-set", query_set, *data, "--width", "16", "--epochs", str(a.epochs), "--batch-size", "128",
           "--out", str(out), "--cache", str(cache), "--no-eval", "--threads", str(a.threads), *extra]
    env = {**os.environ, "HEIST_API_KEYS": ",".join(keys)}
    t0 = time.perf_counter()
    run_child(cmd, cwd=REPO, env=env, check=True)
    ck = load_checkpoint(out)
    probe = probe_local(ck.encoder, spec, a.probe_train_size, progress=False)
    cost = ck.config.training.get("cost", {})
    return {"stolen": probe[f"probe_{spec.main_task}"], "stolen_probes": probe, "attacker_cost": cost, "thief": query_set,
            "attacker_seconds": round(time.perf_counter() - t0, 1)}


def plot(rows: list[dict], path: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        ax.scatter(100 * r["legit"], 100 * r["stolen"], marker="o" if r["attack"] == "plain" else "x")
        ax.annotate(r["label"], (100 * r["legit"], 100 * r["stolen"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("legitimate customer's accuracy (3-class task, %)")
    ax.set_ylabel(f"stolen copy's linear probe ({task}, %)")
    ax.grid(alpha=0.3)
    ax.set_title("defence trade-off (o plain attacker, x adaptive)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "runs" / "victim"))
    p.add_argument("--profile", default=str(PROFILE),
                   help="legitimate profile recorded from this victim (python -m testbed.profile)")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--no-adaptive", action="store_true")
    p.add_argument("--queries", type=int, default=4000)
    p.add_argument("--loss", default="mse")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--probe-train-size", type=int, default=5000)
    p.add_argument("--thieves", default="attack", help="comma-separated query sets, one thief each per policy (attack, "
                   "shifted_train, DATASET:SPLIT)")
    p.add_argument("--broad", action="store_true", help="also a broad customer per policy (all classes, the thief's volume)")
    p.add_argument("--out", default="tradeoff", help="results/attack/<out>.json|.md|.png")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=str(REPO / "runs" / "tradeoff"), help="stolen copies and query caches")
    p.add_argument("--redis-url", default=None, help="store of the server (default: embedded)")
    p.add_argument("--update", action="store_true",
                   help="re-measure only the rows asked for; keep the other rows of results/attack/tradeoff.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    policies = [s for s in a.policies.split(",") if s]
    thieves = [s for s in a.thieves.split(",") if s]
    adaptive = [] if a.no_adaptive else [x for x in ADAPTIVE if x[1] in policies]
    spec = load_checkpoint(a.checkpoint).config.data_spec()  # the victim's benchmark
    scale = representation_scale(a.checkpoint)
    tiers = policy_tiers(policies, Path(a.profile), scale)
    work = Path(a.work) / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    narrow = LegitTask()
    test_labels = load_split(spec, narrow.split, progress=False).labels[spec.main_task]
    broad = LegitTask(classes=len(set(test_labels.tolist())),  # every class, the thief's volume
                      images=min(thief_queries(spec, thieves[0], a.queries), len(test_labels)))
    rows = []
    with serve(a.checkpoint, {"tiers": tiers, "max_images_per_request": 64}, redis_url=a.redis_url,
               log_path=work / "server.log") as srv:
        plan = [(pol if t == thieves[0] else f"{pol} / {t}", pol, [], 1, "plain", t) for pol in policies for t in thieves]
        plan += [(lab, pol, ex, n, "adaptive", thieves[0]) for lab, pol, ex, n in adaptive]
        customers: dict[str, dict] = {}
        for label, pol, extra, n_keys, kind, thief in plan:
            tag = label.replace(" ", "_").replace("/", "").replace(":", "-")
            print(f"== {label} (policy {pol}) ==", flush=True)
            row = {"label": label, "policy": pol, "attack": kind}
            if pol not in customers:
                c: dict = {}
                for who, task in [("legit", narrow)] + ([("broad", broad)] if a.broad else []):
                    with QueryCache(work / f"{who}-{pol}") as cache:
                        got = legit_user(srv.url, srv.new_account(f"{who}-{pol}", f"policy-{pol}"), cache, task, spec=spec,
                                         progress=False)
                    got["defence_state"] = srv.account_defences(f"{who}-{pol}")
                    c[who], c[f"{who}_cost"] = got["accuracy"], got
                customers[pol] = c
            first = kind == "plain" and thief == thieves[0]
            row.update({k: (v if first or not k.endswith("_cost") else None) for k, v in customers[pol].items()})
            keys = [srv.new_account(f"thief-{tag}-{i}", f"policy-{pol}") for i in range(n_keys)]
            row.update(steal(srv.url, keys, work / f"stolen-{tag}", work / f"cache-{tag}", a, extra, spec, thief))
            row["thief_defences"] = [srv.account_defences(f"thief-{tag}-{i}") for i in range(n_keys)]
            rows.append(row)
            print(f"   legit {100 * row['legit']:.1f}%  stolen {100 * row['stolen']:.1f}%", flush=True)
    cmd = command("bench.tradeoff", argv)
    commands = [cmd]
    if a.update and output("attack", f"{a.out}.json").is_file():
        new = {r["label"] for r in rows}
        before = json.loads(output("attack", f"{a.out}.json").read_text())
        commands = before.get("commands", [before.get("command")]) + [cmd]
        old = [r for r in before["rows"] if r["label"] not in new]
        rows = old + rows
        rows.sort(key=lambda r: (r["attack"] != "plain", r["label"] not in POLICIES or POLICIES.index(r["label"])))
        for r in rows:
            r.setdefault("measured", "earlier run" if r["label"] not in new else "this run")
    base = next((r for r in rows if r["label"] == "none"), None)
    for r in rows:
        ref = next((b for b in rows if b["policy"] == "none" and b["attack"] == "plain" and b.get("thief", "attack") ==
                    r.get("thief", "attack")), base)
        if ref:
            r["legit_drop"] = round(100 * (ref["legit"] - r["legit"]), 1)
            r["stolen_drop"] = round(100 * (ref["stolen"] - r["stolen"]), 1)
            if "broad" in r and "broad" in ref:
                r["broad_drop"] = round(100 * (ref["broad"] - r["broad"]), 1)
        c = r["attacker_cost"]
        r["attacker_s"] = round(c.get("query_seconds", 0) + c.get("train_seconds", 0), 1)
        r["legit_s"] = (r.get("legit_cost") or {}).get("seconds", "")
    fmt = [{**r, "legit": f"{100 * r['legit']:.1f}%", "stolen": f"{100 * r['stolen']:.1f}%",
            **({"broad": f"{100 * r['broad']:.1f}%"} if "broad" in r else {}),
            "pow_hashes": r["attacker_cost"].get("pow_hashes", 0),
            "legit_pow": (r.get("legit_cost") or {}).get("pow_hashes", "")} for r in rows]
    cols = ["label", "policy", "attack", "legit", "legit_drop", *(["broad", "broad_drop"] if a.broad else []), "stolen",
            "stolen_drop", "legit_s", "legit_pow", "attacker_s", "pow_hashes"]
    txt = table(fmt, cols)
    print(txt)
    winners = [r["label"] for r in rows if base and r["attack"] == "plain" and r["stolen_drop"] >= 15 and r["legit_drop"] <= 1]
    verdict = (f"policies dropping the attacker >= 15 points at <= 1 point for the customer: {', '.join(winners)}" if winners
               else "no policy drops the attacker >= 15 points at <= 1 point for the customer")
    print(verdict)
    cmd = " && ".join(commands)
    write_json("attack", a.out, {"command": cmd, "commands": commands, "config": vars(a), "dataset": spec.dataset,
                                 "main_task": spec.main_task, "scale": scale, "tiers": tiers, "rows": rows, "verdict": verdict})
    who = f"customer: {narrow}" + (f"; broad customer: every class, {broad.images} images" if a.broad else "")
    output("attack", f"{a.out}.md").write_text(f"# Defence trade-off ({spec.dataset})\n\nCommand: `{cmd}`\n\n"
                                               f"Attacker: {a.loss}, up to {a.queries} queries of each thief's set "
                                               f"({', '.join(thieves)}), {a.epochs} epochs; {who}.\n\n```\n{txt}\n```\n\n{verdict}\n")
    plot(rows, output("attack", f"{a.out}.png"), spec.main_task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
