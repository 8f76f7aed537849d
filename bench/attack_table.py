"""The stealing table (like the stealing paper's): linear-probe accuracy of stolen copies over
losses x query budgets, direct extraction, against the undefended victim (tier ``unlimited``).

    python -m bench.attack_table [--url URL --api-key KEY] [--losses mse,infonce,...] \
        [--budgets 1000,2000,4000] [--epochs 30] [--width 16] [--query-set attack] [--save-dir runs] [--quick]

Without --url it starts ``heist-server serve --checkpoint runs/victim`` itself on a free port
(embedded store, tier ``unlimited``: no limits, no defences) and creates the accounts through the
admin endpoint. The benchmark is the victim's own (its checkpoint's data spec: heist-shapes, or
mnist5k for a victim trained with ``--dataset mnist5k``). Queries are the first N images of the
query set (default the ``attack`` split; ``shifted_train`` is the other domain; ``DATASET:SPLIT``
another benchmark), bought once per budget
through one thief account and cached (tables over several losses reuse the same answers, as an
attacker would); the victim's quality is measured by a separate customer account through the API.
Writes results/attack/<out>.json, results/attack/<out>.md and
results/attack/attack_accuracy_vs_queries.png (``--out`` NAME replaces ``table`` in that name).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from attacker.cache import QueryCache
from attacker.measure import plot_accuracy, probe_api, probe_local, probe_sets, ratios
from attacker.queries import acquire, load_query_set
from attacker.steal import StealConfig, train_stolen
from bench.harness import command, output, table, write_json
from shared.checkpoint import load_checkpoint, save_checkpoint
from testbed.services import new_key, serve

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def local_victim(checkpoint: str, tiers: dict | None = None, max_images: int = 64):
    """A real heist-server subprocess on loopback (embedded store); yields (url, admin token)."""
    cfg = {"max_images_per_request": max_images, "tiers": tiers or {"unlimited": {"outputs": ["representation", "projection"]}}}
    with serve(checkpoint, cfg) as srv:
        yield srv.url, srv.admin_token


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url")
    p.add_argument("--api-key", help="thief key (tier unlimited); with --url")
    p.add_argument("--customer-key", help="customer key for the victim's API probe (default: the thief key)")
    p.add_argument("--checkpoint", default="runs/victim")
    p.add_argument("--losses", default="mse,infonce,softnn,wasserstein,supcon,barlow,simsiam")
    p.add_argument("--budgets", default="1000,2000,4000")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--probe-train-size", type=int, default=5000)
    p.add_argument("--cache", default="results/attack_cache")
    p.add_argument("--out", default="attack_table", help="results/<out>.json|.md")
    p.add_argument("--query-set", default="attack",
                   help="attack (in-distribution photos) | shifted_train (the sketch domain) | real:NAME:ROOT")
    p.add_argument("--min-steps", type=int, default=0,
                   help="small budgets train for more epochs so every copy gets at least this many optimiser steps")
    p.add_argument("--aug-reuse", type=int, default=0, help="StolenEncoder: K augmented views reuse each answer")
    p.add_argument("--save-dir", help="save every stolen checkpoint as SAVE_DIR/stolen-<loss>-<queries> (the defender's zoo)")
    p.add_argument("--device", default="cpu", help="where the stolen copies train (cpu, cuda); the probes run on the CPU")
    p.add_argument("--quick", action="store_true", help="mse+infonce, budgets 500,1000, width 8, 2 epochs, probe 2000")
    a = p.parse_args(argv)
    if a.quick:
        a.losses, a.budgets, a.epochs, a.width, a.probe_train_size = "mse,infonce", "500,1000", 2, 8, 2000
        a.out = a.out + "_quick" if a.out == "attack_table" else a.out
    losses, budgets = a.losses.split(","), sorted(int(b) for b in a.budgets.split(","))
    vcfg = load_checkpoint(a.checkpoint).config
    spec = vcfg.data_spec()  # the victim's benchmark
    main_probe = f"probe_{spec.main_task}"
    private = vcfg.data.get("train_size") or spec.splits[vcfg.data.get("train_split", "train")].size

    def run(url: str, thief: str, customer: str) -> dict:
        cache = QueryCache(a.cache)
        print(f"victim through the API (customer account), probe train size {a.probe_train_size}", file=sys.stderr)
        victim, vcost = probe_api(url, customer, spec, cache, a.probe_train_size)
        qs = load_query_set(a.query_set, max(budgets), spec.seed, dataset=spec.dataset, root=spec.root)
        t0 = time.perf_counter()
        got = asyncio.run(acquire(url, [thief], qs.images, cache))
        buy_s = time.perf_counter() - t0
        print(f"queries: {got.from_cache} served from cache, {got.bought} bought ({buy_s:.1f} s)", file=sys.stderr)
        rows = []
        for n in budgets:
            for loss in losses:
                bs = min(a.batch_size, n)
                epochs = max(a.epochs, -(-a.min_steps // (n // bs)))
                cfg = StealConfig(loss=loss, width=a.width, epochs=epochs, batch_size=bs, lr=a.lr, aug_reuse=a.aug_reuse,
                                  device=a.device)
                t = time.perf_counter()
                ck, hist = train_stolen(qs.images[:n], got.answers[:n], cfg, qs.labels[:n],
                                        extra_config={"queries": n, "query_set": a.query_set, "bench": "attack_table"})
                if a.save_dir:
                    tag = "" if a.query_set == "attack" else f"-{a.query_set.split(':')[0].replace('_train', '')}"
                    save_checkpoint(ck, Path(a.save_dir) / f"stolen-{loss}-{n}{tag}")
                s = probe_local(ck.encoder, spec, a.probe_train_size, progress=False)
                r = ratios(s, victim)
                row = {"loss": loss, "query_set": a.query_set, "queries": n, "queries_per_private": round(n / private, 3), "epochs": epochs,
                       **s, "ratio": r[main_probe],
                       "train_s": round(hist["train_seconds"], 1), "total_s": round(time.perf_counter() - t, 1)}
                rows.append(row)
                print(f"{loss:12s} {n:6d} queries: {spec.main_task} {100 * s[main_probe]:.1f}% ratio {row['ratio']:.3f} "
                      f"({row['train_s']} s training)", file=sys.stderr)
        cache.close()
        return {"victim_api": victim, "victim_api_cost": vcost, "rows": rows, "query_seconds": round(buy_s, 1)}

    torch.manual_seed(0)
    if a.url:
        if not a.api_key:
            p.error("--url needs --api-key")
        res = run(a.url, a.api_key, a.customer_key or a.api_key)
    else:
        with local_victim(a.checkpoint) as (url, admin):
            tag = secrets.token_hex(3)
            res = run(url, new_key(url, admin, "unlimited", f"thief-{tag}"), new_key(url, admin, "unlimited", f"customer-{tag}"))
    victim = res["victim_api"]
    probes = [f"probe_{name}" for name, *_ in probe_sets(spec)]
    cols = ["loss", "query_set", "queries", "queries_per_private", "epochs", *probes, "ratio", "train_s"]
    fmt = [{**r, **{k: f"{100 * r[k]:.1f}%" for k in probes}, "ratio": f"{r['ratio']:.3f}"} for r in res["rows"]]
    txt = table(fmt, cols)
    head = (f"{spec.dataset} benchmark; victim via API: " + ", ".join(f"{k.removeprefix('probe_')} {100 * victim[k]:.1f}%" for k in probes)
            + f"; victim's private set {private} images; stolen width {a.width}, aug reuse {a.aug_reuse}, "
            f"at least {a.min_steps} steps; ratio = stolen/victim on {spec.main_task}")
    cmd = command("bench.attack_table", argv)
    print(head)
    print(txt)
    best = max(res["rows"], key=lambda r: r["ratio"])
    print(f"best: {best['loss']} at {best['queries']} queries, ratio {best['ratio']:.3f}")
    write_json("attack", a.out, {"command": cmd, "config": vars(a), "dataset": spec.dataset, "main_task": spec.main_task,
                                 "victim_private_images": private, **res, "best": best})
    output("attack", f"{a.out}.md").write_text(f"# Stealing table\n\n{head}\n\nCommand: `{cmd}`\n\n```\n{txt}\n```\n")
    plot_accuracy(res["rows"], output("attack", f"{a.out.replace('table', 'accuracy_vs_queries')}.png"), victim[main_probe],
                  metric=main_probe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
