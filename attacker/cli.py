"""heist-attack: steal the victim encoder over HTTP, measure copies.

    heist-attack steal --url URL --api-key KEY [--api-key KEY2 ...] --queries N --loss LOSS \
        --query-set attack|shifted_train|DATASET:SPLIT|real:NAME:ROOT --out DIR --cache DIR \
        [--mode direct|recreate-head|access-head] [--dataset heist-shapes|mnist5k|...] \
        [--remove-watermark none|cse|spa [--cse-reference DIR] [--spa-copies P] ...]
    heist-attack evaluate --checkpoint DIR [--checkpoint DIR ...] --url URL --api-key KEY --cache DIR --out DIR
    heist-attack probe --checkpoint DIR

``--remove-watermark`` attacks an output watermark between buying and training
(:mod:`attacker.removal`): ``cse`` projects the directions found by WARDEN's clustering, selection
and elimination (with the thief's own encoder, ``--cse-reference``, as the reference) out of every
answer; ``spa`` buys ``--spa-copies`` perturbed copies of every query (cached and counted like the
queries) and trains without the ``--spa-drop`` share of answers that move most unlike their
neighbours.

Stealing training on N processes (DDP; rank 0 buys and writes, the others train their slices):

    torchrun --standalone --nproc-per-node N -m attacker.cli steal ... --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from datetime import timedelta
from pathlib import Path

from shared.client import ApiError


def _keys(args: argparse.Namespace) -> list[str]:
    keys = list(args.api_key or [])
    if not keys and os.environ.get("HEIST_API_KEYS"):
        keys = [k.strip() for k in os.environ["HEIST_API_KEYS"].split(",") if k.strip()]
    if not keys:
        raise ValueError("no API key: pass --api-key KEY (repeat it for sybil accounts) or set HEIST_API_KEYS=k1,k2")
    return keys


def _command_line() -> str:
    argv = list(sys.argv)
    out, hide = [], False
    for a in argv:
        out.append("***" if hide else a)
        hide = a in ("--api-key", "--eval-api-key")
    return shlex.join(["heist-attack", *out[1:]])


def _spec(args: argparse.Namespace):
    """The dataset the attacker measures on (and queries, unless --query-set names another)."""
    from shared.data.synthetic import dataset_spec

    return dataset_spec(args.dataset, seed=args.data_seed, root=args.data_root)


def _cmd_probe(args: argparse.Namespace) -> int:
    from shared.checkpoint import load_checkpoint
    from shared.device import resolve_device
    from shared.train.evaluate import format_report, probe_report

    ckpt = load_checkpoint(args.checkpoint)
    spec = _spec(args)
    metrics = probe_report(ckpt.encoder, spec, resolve_device("auto"), args.probe_train_size, progress=True)
    print(json.dumps(metrics, indent=2) if args.json else format_report(metrics))
    return 0


def _evaluate(stolen_ckpt, args, keys, cache, cost: dict | None, out: Path, command: str) -> dict:
    from attacker.measure import probe_api, probe_local, ratios, write_report

    spec = _spec(args)
    cap = args.probe_train_size
    print(f"evaluate: linear probes of the stolen copy (probe train size {cap})", file=sys.stderr)
    stolen = probe_local(stolen_ckpt.encoder, spec, cap)
    eval_key = args.eval_api_key or keys[0]
    print("evaluate: the victim as a customer measures it (probes on API answers)", file=sys.stderr)
    victim, vcost = probe_api(args.url, eval_key, spec, cache, cap, args.concurrency, args.pow_workers)
    report = {"stolen": stolen, "victim_api": victim, "ratio": ratios(stolen, victim), "cost": cost or {},
              "victim_api_cost": vcost, "command": command}
    write_report(out, report)
    return report


def _cmd_steal(args: argparse.Namespace) -> int:
    """Under torchrun rank 0 buys the answers (or reads them from the cache) and hands queries and answers
    to the other ranks, which wait for them (up to RANK0_WAIT) and train their slices; only rank 0 writes."""
    _check_removal(args)
    import torch

    from attacker.steal import StealConfig, train_stolen
    from shared.train import distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = StealConfig(loss=args.loss, mode=args.mode, arch=args.arch, width=args.width, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, aug_reuse=args.aug_reuse, seed=args.seed, device=args.device)
    with distributed.process_group(torch.device(cfg.device), timeout=RANK0_WAIT) as world:
        if world.main:
            return _steal(args, cfg)
        inputs = distributed.broadcast(None)  # (images, answers, cfg, labels, extra) from rank 0, or None: no training
        if inputs is not None:
            train_stolen(*inputs, progress=False)
    # A helper rank is done once its process group is destroyed: it leaves without the interpreter's
    # teardown, in which Gloo's threads can still abort it ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


RANK0_WAIT = timedelta(hours=12)  # how long torchrun's other ranks wait for rank 0 to buy the answers


def _check_removal(args: argparse.Namespace) -> None:
    """Refuse watermark-removal options that cannot work before anything is bought."""
    from shared.checkpoint import read_config

    attack = args.remove_watermark
    if attack == "cse":
        if not args.cse_reference:
            raise ValueError("--remove-watermark cse needs --cse-reference DIR: a checkpoint folder of the thief's own "
                             "encoder (e.g. heist-server train --kind independent on the attack split), whose features are the reference")
        read_config(args.cse_reference)  # a clear error now rather than after buying
        if args.cse_directions < 1 or args.cse_clusters < 1 or args.cse_rounds < 1 or not 0 < args.cse_select <= 1:
            raise ValueError("--cse-directions, --cse-clusters and --cse-rounds must be >= 1 and --cse-select in (0, 1]")
    elif attack == "spa":
        if args.spa_copies < 1 or args.spa_neighbours < 1 or args.spa_shift < 0 or args.spa_sigma < 0 \
                or not 0 <= args.spa_drop < 1:
            raise ValueError("--spa-copies and --spa-neighbours must be >= 1, --spa-shift and --spa-sigma >= 0, "
                             "--spa-drop in [0, 1)")
    if attack != "cse" and args.cse_reference:
        raise ValueError(f"--cse-reference is only used with --remove-watermark cse (got --remove-watermark {attack})")


def _remove_watermark(args: argparse.Namespace, cfg, images, answers, labels, perturbed) -> tuple:
    """(images, answers, labels) to train on after the chosen attack, and the record of what it did."""
    import numpy as np

    from attacker import removal

    if args.remove_watermark == "cse":
        from shared.checkpoint import load_checkpoint
        from shared.probe import extract_features

        ref = extract_features(load_checkpoint(args.cse_reference, cfg.device).encoder, images, device=cfg.device)
        res = removal.cse(answers, ref, clusters=args.cse_clusters, select=args.cse_select, directions=args.cse_directions,
                          rounds=args.cse_rounds, seed=args.seed)
        last = res.details["rounds"][-1]
        change = float(np.median(np.linalg.norm(res.answers - answers, axis=1) / (np.linalg.norm(answers, axis=1) + 1e-12)))
        record = {"attack": "cse", "reference": str(args.cse_reference), "reference_dim": int(ref.shape[1]),
                  "clusters": args.cse_clusters, "select": args.cse_select, "directions": args.cse_directions,
                  "rounds": args.cse_rounds, "seed": args.seed, "directions_removed": res.details["removed"],
                  "selected": res.details["selected"], "median_relative_change": round(change, 4), "details": res.details}
        print(f"remove-watermark cse: removed {res.details['removed']} directions from all {len(answers)} answers "
              f"({res.details['selected']} selected in {args.cse_clusters} clusters, reference fit {last['reference_fit']:.3f}, "
              f"top directions explain {last['explained']:.3f}; median relative change {change:.3f})"
              + ("; the reference explains little of the answers, so these directions may not be the watermark's"
                 if last["reference_fit"] < 0.5 else ""))
        return images, res.answers, labels, record
    n, d = answers.shape
    scores = removal.spa_scores(answers, perturbed.reshape(n, args.spa_copies, d), args.spa_neighbours)
    keep = removal.spa_keep(scores, args.spa_drop)
    flagged = n - len(keep)
    threshold = float(np.sort(scores)[::-1][flagged - 1]) if flagged else None
    record = {"attack": "spa", "copies": args.spa_copies, "sigma": args.spa_sigma, "shift": args.spa_shift,
              "neighbours": args.spa_neighbours, "drop": args.spa_drop, "seed": args.seed, "flagged": flagged,
              "kept": len(keep), "score_median": round(float(np.median(scores)), 4),
              "score_threshold": None if threshold is None else round(threshold, 4)}
    print(f"remove-watermark spa: {flagged} of {n} answers flagged (moved "
          + (f">= {threshold:.2f}x" if threshold is not None else "-")
          + f" their {args.spa_neighbours} neighbours' median under {args.spa_copies} perturbed copies), training on {len(keep)}")
    return images[keep], answers[keep], None if labels is None else labels[keep], record


def _steal(args: argparse.Namespace, cfg) -> int:
    import numpy as np

    from attacker.queries import acquire, drop_similar, load_query_set, merged_stats
    from attacker.steal import train_stolen
    from shared.cache import QueryCache
    from shared.checkpoint import save_checkpoint
    from shared.train import distributed

    keys = _keys(args)
    qs = load_query_set(args.query_set, args.queries, args.data_seed, dataset=args.dataset, root=args.data_root)
    images, labels = qs.images, qs.labels
    if args.avoid_similar is not None:
        keep = drop_similar(images, args.avoid_similar)
        print(f"avoid-similar: kept {len(keep)} of {len(images)} queries (thumbnail cosine <= {args.avoid_similar})",
              file=sys.stderr)
        images = images[keep]
        labels = None if labels is None else labels[keep]
    out, command = Path(args.out), _command_line()
    t0 = time.perf_counter()
    output = "projection" if args.mode == "access-head" else "representation"

    def buy(queries, cache):
        return asyncio.run(acquire(args.url, keys, queries, cache, output=output, anchors=args.anchors, repeats=args.repeats,
                                   concurrency=args.concurrency, batch_size=args.request_size, pow_workers=args.pow_workers,
                                   max_retries=args.max_retries, max_wait_s=args.max_wait))

    with QueryCache(args.cache) as cache:
        got = buy(images, cache)
        t_buy = time.perf_counter() - t0
        stats = merged_stats(got.accounts)
        needed = got.from_cache + got.bought
        print(f"queries: {needed} answers needed ({len(images)} images), {got.from_cache} served from cache, "
              f"{got.bought} bought ({len(keys)} account(s), {stats['requests']} requests, {stats['retries']} retries, "
              f"{stats['pow_challenges']} PoW challenges / {stats['pow_hashes']} hashes, {t_buy:.1f} s)")
        if got.mapper_fit_error:
            print(f"sybil mapper: relative residual on {args.anchors} anchors: "
                  + ", ".join(f"{e:.3f}" for e in got.mapper_fit_error))
        removal_cost: dict = {}
        perturbed = None
        if args.remove_watermark == "spa":  # the perturbed copies are bought like the queries: cached, resumable, counted
            from attacker.removal import perturb_images

            copies = perturb_images(images, args.spa_copies, sigma=args.spa_sigma, shift=args.spa_shift, seed=args.seed)
            t1 = time.perf_counter()
            extra_got = buy(copies, cache)
            xstats = merged_stats(extra_got.accounts)
            perturbed = np.asarray(extra_got.answers)
            removal_cost = {"removal_queries": len(copies), "removal_answers_bought_this_run": extra_got.bought,
                            "removal_answers_from_cache": extra_got.from_cache,
                            **{f"removal_{k}": xstats[k] for k in ("requests", "retries", "pow_challenges", "pow_hashes",
                                                                   "pow_seconds")},
                            "removal_query_seconds": round(time.perf_counter() - t1, 1)}
            print(f"spa queries: {extra_got.from_cache + extra_got.bought} answers needed ({len(copies)} perturbed copies, "
                  f"{args.spa_copies} per query), {extra_got.from_cache} served from cache, {extra_got.bought} bought "
                  f"({xstats['requests']} requests, {removal_cost['removal_query_seconds']:.1f} s)")
        if args.buy_only:
            distributed.broadcast(None)
            return 0
        cost = {"queries": len(images), "answers_bought_this_run": got.bought, "answers_from_cache": got.from_cache,
                "accounts": len(keys), "anchors": args.anchors if len(keys) > 1 else 0, "repeats": args.repeats,
                "requests": stats["requests"], "retries": stats["retries"], "pow_challenges": stats["pow_challenges"],
                "pow_hashes": stats["pow_hashes"], "pow_seconds": stats["pow_seconds"], "query_seconds": round(t_buy, 1),
                **removal_cost}
        extra = {"query_set": qs.name, "queries": len(images), "cost": cost, "victim_url": args.url,
                 "sybil_mapper_error": got.mapper_fit_error}
        answers = np.asarray(got.answers)
        if args.remove_watermark != "none":
            images, answers, labels, extra["removal"] = _remove_watermark(args, cfg, images, answers, labels, perturbed)
        distributed.broadcast((images, answers, cfg, labels, extra))
        ckpt, hist = train_stolen(images, answers, cfg, labels, extra)
        distributed.shutdown()  # the other ranks are done; evaluation runs here alone
        cost["train_seconds"] = round(hist["train_seconds"], 1)
        cost["wall_seconds"] = round(time.perf_counter() - t0, 1)
        ckpt.config.training["cost"] = cost
        save_checkpoint(ckpt, out)
        print(f"stolen copy saved to {out} (kind=stolen, {cfg.arch} width {cfg.width}, {hist['train_seconds']:.0f} s training)")
        report = {"cost": cost, "command": command}
        if not args.no_eval:
            report = _evaluate(ckpt, args, keys, cache, cost, out, command)
            ckpt.config.metrics.update({**report["stolen"], "ratio": report["ratio"], "victim_api": report["victim_api"]})
            save_checkpoint(ckpt, out)
            for k, v in report["stolen"].items():
                print(f"{k}: stolen {100 * v:.1f}%  victim(API) {100 * report['victim_api'][k]:.1f}%  "
                      f"ratio {report['ratio'][k]:.3f}")
        else:
            from attacker.measure import write_report

            write_report(out, report)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from attacker.measure import plot_accuracy, probe_api, probe_local, ratios, write_report
    from shared.cache import QueryCache
    from shared.checkpoint import load_checkpoint

    keys = _keys(args)
    spec = _spec(args)
    out = Path(args.out)
    rows = []
    with QueryCache(args.cache) as cache:
        victim, vcost = probe_api(args.url, keys[0], spec, cache, args.probe_train_size, args.concurrency, args.pow_workers)
        for c in args.checkpoint:
            ck = load_checkpoint(c)
            s = probe_local(ck.encoder, spec, args.probe_train_size)
            steal = ck.config.training.get("steal", {})
            rows.append({"checkpoint": str(c), "loss": steal.get("loss", "?"), "mode": steal.get("mode", "?"),
                         "queries": ck.config.training.get("queries", 0), **s,
                         "ratio": ratios(s, victim), "cost": ck.config.training.get("cost", {})})
    report = {"victim_api": victim, "victim_api_cost": vcost, "stolen_copies": rows, "command": _command_line()}
    if len(rows) == 1:
        report.update(stolen={k: v for k, v in rows[0].items() if k.startswith("probe_")}, ratio=rows[0]["ratio"],
                      cost=rows[0]["cost"])
    write_report(out, report)
    metric = f"probe_{spec.main_task}"
    plot = plot_accuracy(rows, out / "accuracy_vs_queries.png", victim.get(metric), metric=metric)
    for r in rows:
        print(f"{r['checkpoint']}: {r['loss']}/{r['mode']} {r['queries']} queries: "
              + ", ".join(f"{k} {100 * r[k]:.1f}% (ratio {r['ratio'][k]:.3f})" for k in r["ratio"]))
    print("victim (API): " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in victim.items()))
    print(f"report: {out / 'report.json'}, {out / 'report.md'}, plot: {plot}")
    return 0


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="victim API base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--api-key", action="append", help="API key (repeat for sybil accounts); or env HEIST_API_KEYS=k1,k2")
    p.add_argument("--cache", required=True, help="folder of the resumable query cache (SQLite WAL)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--pow-workers", type=int, default=1, help="processes solving proof-of-work challenges")
    p.add_argument("--probe-train-size", type=int, default=5000, help="probe training images per split (same for both sides)")
    _data_args(p)


def _data_args(p: argparse.ArgumentParser) -> None:
    from shared.data.synthetic import DATASETS

    p.add_argument("--dataset", choices=DATASETS, default=DATASETS[0],
                   help="the benchmark to measure on and query from (default: %(default)s; mnist5k: real MNIST digits)")
    p.add_argument("--data-root", default=None, help="folder of a folder dataset's files (cifar10, svhn, ...)")
    p.add_argument("--data-seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    from attacker.steal import MODES
    from shared.losses import STEALING_LOSSES

    p = argparse.ArgumentParser(prog="heist-attack", description="Encoder Heist attacker: steal an encoder over HTTP, measure copies.")
    sub = p.add_subparsers(dest="command", required=True)

    st = sub.add_parser("steal", help="buy victim answers (resumable) and train a stolen copy; under torchrun "
                                      "--nproc-per-node N, rank 0 buys and N processes share each batch (DDP)")
    _client_args(st)
    st.add_argument("--queries", type=int, required=True, help="images to query (the first N of the query set)")
    st.add_argument("--query-set", default="attack",
                    help="attack | shifted_train (splits of --dataset) | DATASET:SPLIT (another benchmark, e.g. "
                         "heist-shapes:shifted_train) | real:NAME:ROOT")
    st.add_argument("--loss", choices=STEALING_LOSSES, default="mse")
    st.add_argument("--mode", choices=MODES, default="direct")
    st.add_argument("--arch", default="resnet18")
    st.add_argument("--width", type=int, default=16)
    st.add_argument("--epochs", type=int, default=30)
    st.add_argument("--batch-size", type=int, default=64, help="training batch (global: under torchrun 1/N per process)")
    st.add_argument("--lr", type=float, default=1e-3)
    st.add_argument("--aug-reuse", type=int, default=0, metavar="K", help="StolenEncoder: K augmented views reuse each answer")
    st.add_argument("--anchors", type=int, default=0, help="sybil mode: images every account asks (for the linear mapper)")
    st.add_argument("--repeats", type=int, default=1, help="ask every image R times and average (tests keyed noise)")
    st.add_argument("--avoid-similar", type=float, default=None, metavar="TAU",
                    help="drop queries whose thumbnail cosine with an earlier one exceeds TAU (stay under similarity detectors)")
    st.add_argument("--request-size", type=int, default=32, help="images per HTTP request")
    st.add_argument("--max-retries", type=int, default=8)
    st.add_argument("--max-wait", type=float, default=120, help="give up after this many seconds of Retry-After waits")
    st.add_argument("--out", required=True, help="folder of the stolen checkpoint (and report)")
    st.add_argument("--eval-api-key", default=None, help="customer key for measuring the victim (default: the first key)")
    st.add_argument("--no-eval", action="store_true", help="skip the linear-probe report")
    st.add_argument("--buy-only", action="store_true", help="only fill the cache (no training)")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N; under torchrun cuda means each rank's own GPU")
    st.add_argument("--threads", type=int, default=None)
    rm = st.add_argument_group("watermark removal", "attack an output watermark between buying and training (attacker.removal)")
    rm.add_argument("--remove-watermark", choices=("none", "cse", "spa"), default="none",
                    help="cse: project WARDEN's clustering-selection-elimination directions out of every answer; spa: buy "
                         "perturbed copies of the queries and drop the answers that move unlike their neighbours "
                         "(default: %(default)s)")
    rm.add_argument("--cse-reference", default=None, metavar="DIR",
                    help="cse (required): checkpoint folder of the thief's own encoder; its features of the queries, mapped "
                         "linearly onto the answers, are the reference")
    rm.add_argument("--cse-directions", type=int, default=4, metavar="K", help="cse: directions removed per round (default: %(default)s)")
    rm.add_argument("--cse-clusters", type=int, default=20, metavar="C", help="cse: k-means clusters (default: %(default)s)")
    rm.add_argument("--cse-select", type=float, default=0.05, metavar="SHARE",
                    help="cse: share of each cluster's pairs selected (default: %(default)s)")
    rm.add_argument("--cse-rounds", type=int, default=1, metavar="R", help="cse: clustering-selection-elimination rounds (default: %(default)s)")
    rm.add_argument("--spa-copies", type=int, default=2, metavar="P",
                    help="spa: perturbed copies bought per query (P x --queries extra queries; default: %(default)s)")
    rm.add_argument("--spa-drop", type=float, default=0.1, metavar="SHARE", help="spa: share of answers dropped (default: %(default)s)")
    rm.add_argument("--spa-neighbours", type=int, default=10, metavar="K", help="spa: neighbours a movement is compared with (default: %(default)s)")
    # a one-pixel shift moves a 32-pixel image's answer as much as the mark's ramp is wide, which drowns the ramp's
    # extra movement: on the CPU victim pixel noise alone (sigma 1 to 2) flags about twice as many ramp answers
    rm.add_argument("--spa-sigma", type=float, default=2.0, metavar="SIGMA",
                    help="spa: Gaussian pixel noise of the copies, 0-255 units (default: %(default)s)")
    rm.add_argument("--spa-shift", type=int, default=0, metavar="PIXELS",
                    help="spa: largest random shift of the copies in pixels, edges replicated (default: %(default)s)")
    st.set_defaults(func=_cmd_steal)

    ev = sub.add_parser("evaluate", help="probe stolen copies vs the victim through the API; report + plot")
    _client_args(ev)
    ev.add_argument("--checkpoint", action="append", required=True)
    ev.add_argument("--out", required=True)
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("probe", help="linear-probe accuracy of a checkpoint on the downstream tasks")
    pr.add_argument("--checkpoint", required=True)
    _data_args(pr)
    pr.add_argument("--probe-train-size", type=int, default=None)
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=_cmd_probe)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ApiError as e:
        print(f"heist-attack {args.command}: API error: {e}", file=sys.stderr)
        print("(answers received so far are in the cache; rerun the same command to resume)", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"heist-attack {args.command}: interrupted; answers received so far are cached, rerun to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:
        print(f"heist-attack {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
