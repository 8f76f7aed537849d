"""heist-server: the provider's commands (make data, train victims, report on a checkpoint, serve the API,
manage accounts)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError


def _cmd_data(args: argparse.Namespace) -> int:
    from shared.data.synthetic import cache_dir, dataset_spec, make_all

    spec = dataset_spec(args.dataset, seed=args.seed, root=args.data_root)
    if args.scale != 1.0:
        spec = spec.scaled(args.scale)
    sets = make_all(spec)
    print(f"dataset {spec.name} (seed {spec.seed}) cached in {cache_dir(spec)}")
    for name, ds in sets.items():
        print(f"  {name:14s} {len(ds):6d} images  domain={spec.splits[name].domain}")
    return 0


def _train_config(args: argparse.Namespace):
    from shared.train import get_preset

    cfg = get_preset(args.preset)
    update: dict = {}
    for field in ("epochs", "seed", "width", "batch_size", "lr", "warmup_epochs", "device", "threads", "train_size"):
        v = getattr(args, field)
        if v is not None:
            update[field] = v
    if args.state_every is not None:
        update["state_every_s"] = args.state_every
    if args.no_watermark:
        update["watermark"] = False
    if args.kind:
        update["kind"] = args.kind
    if args.domain == "shifted":
        update["train_split"] = "shifted_train"
    if args.train_split is not None:
        update["train_split"] = args.train_split
    if args.dataset is not None:
        from shared.data.synthetic import dataset_spec

        update["data"] = dataset_spec(args.dataset, seed=cfg.data.seed, root=args.data_root)
    if args.data_seed is not None:
        update["data"] = update.get("data", cfg.data).model_copy(update={"seed": args.data_seed})
    return cfg.model_validate({**cfg.model_dump(), **update})


def _cmd_train(args: argparse.Namespace) -> int:
    from shared.device import resolve_device
    from shared.train import distributed
    from shared.train.evaluate import format_report, full_report
    from shared.train.simclr import finalize, train

    cfg = _train_config(args)
    out = Path(args.out)
    # under torchrun: every rank trains its slice of each batch; rank 0 alone prints, probes and writes
    with distributed.process_group(resolve_device(cfg.device)) as world:
        if world.main:
            procs = f" processes={world.size}" if world.distributed else ""
            print(f"training {cfg.kind} {cfg.arch} (width {cfg.width}) preset={cfg.preset} epochs={cfg.epochs} "
                  f"split={cfg.train_split} watermark={cfg.watermark} seed={cfg.seed}{procs} -> {out}", flush=True)
        outcome = train(cfg, out, progress=not args.quiet)
    if not world.main:
        return 0
    if outcome.resumed_from:
        print(f"resumed after epoch {outcome.resumed_from}")
    print(f"trained {outcome.epochs_run} epochs in {outcome.seconds:.0f} s ({outcome.images_per_s:.0f} img/s)", flush=True)
    metrics = full_report(outcome.checkpoint, cfg.data, resolve_device(cfg.device), cfg.probe_train_size,
                          with_baseline=not args.no_baseline, progress=not args.quiet)
    metrics["train_seconds"] = round(outcome.seconds, 1)
    metrics["train_images_per_s"] = round(outcome.images_per_s, 1)
    metrics["train_processes"] = outcome.processes
    finalize(outcome, out, metrics)
    print(format_report({k: v for k, v in metrics.items() if not k.startswith("train_")}))
    print(f"checkpoint written to {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from shared.checkpoint import load_checkpoint
    from shared.device import resolve_device
    from shared.train.evaluate import format_report, full_report

    ckpt = load_checkpoint(args.checkpoint)
    metrics = full_report(ckpt, ckpt.config.data_spec(), resolve_device("auto"), with_baseline=not args.no_baseline, progress=True)
    print(json.dumps(metrics, indent=2) if args.json else format_report(metrics))
    return 0


def _cmd_watermark_key(args: argparse.Namespace) -> int:
    import os

    from server.defences.output_watermark import calibrate_checkpoint

    secret = os.environ.get("HEIST_SERVER_SECRET", "")
    if len(secret) < 16:
        raise ValueError("set HEIST_SERVER_SECRET (at least 16 characters) to the secret the server will run with: "
                         "the key's vectors are drawn from it")
    cal = calibrate_checkpoint(Path(args.checkpoint), secret.encode(), args.directions, args.rate, args.split, args.n,
                               args.region_space, args.target_weighting, args.full_share)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(cal.model_dump_json(indent=1))
    print(f"watermark key: {cal.directions} directions ({cal.region_space} regions, {cal.target_weighting} targets), rate {cal.rate} each "
          f"({cal.full_share:g} of it at full strength), calibrated on {cal.calibrated_on['n']} "
          f"{cal.calibrated_on['split']} images -> {args.out}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.config import load_config
    from server.logs import setup_logging

    obf = None
    if args.obfuscate:
        obf = {"kind": args.obfuscate, "seed": args.obfuscation_seed or 0}
        if args.obfuscation_pad is not None:
            obf["pad"] = args.obfuscation_pad
    elif args.obfuscation_seed is not None or args.obfuscation_pad is not None:
        raise ValueError("--obfuscation-seed/--obfuscation-pad need --obfuscate KIND")
    cfg = load_config(args.config, checkpoint=args.checkpoint, host=args.host, port=args.port, device=args.device,
                      max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, obfuscation=obf, workers=args.workers)
    if cfg.checkpoint is None:
        raise ValueError("no checkpoint: pass --checkpoint DIR (or set HEIST_CHECKPOINT)")
    if not cfg.checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint folder {cfg.checkpoint} not found")
    setup_logging(cfg.log_level)
    common: dict[str, Any] = dict(host=cfg.host, port=cfg.port, log_config=None, access_log=False, timeout_graceful_shutdown=5,
                                  proxy_headers=False, server_header=False)
    if cfg.workers == 1:
        uvicorn.run(create_app(cfg), **common)
        return 0
    import os
    import tempfile

    from server.config import worker_handoff

    with tempfile.TemporaryDirectory(prefix="heist-workers-") as d:
        os.environ.update(worker_handoff(cfg, Path(d)))
        uvicorn.run("server.app:app_from_env", factory=True, workers=cfg.workers, **common)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:

    from server.config import env_table, load_config

    if args.env:
        rows = env_table()
        width = max(len(r["variable"]) for r in rows)
        for r in rows:
            default = f" [default: {r['default']}]" if r["default"] else ""
            print(f"{r['variable']:<{width}}  {r['type']}{default}\n{'':<{width}}  {r['description']}")
        return 0
    cfg = load_config(args.config)
    print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def _store_from_env(args: argparse.Namespace):
    from server.config import load_config
    from server.store import open_store

    cfg = load_config(args.config)
    if cfg.redis_url is None:
        raise ValueError("REDIS_URL is not set: the embedded store lives inside one server process; "
                         "set REDIS_URL=redis://... or use the admin endpoint POST /v1/admin/accounts")
    return cfg, open_store(cfg.redis_url, cfg.store_prefix, cfg.store_timeout_s)


def _cmd_accounts(args: argparse.Namespace) -> int:
    import asyncio

    from server.accounts import make_account
    from server.store import StoreUnavailable

    cfg, store = _store_from_env(args)

    async def run() -> int:
        try:
            if args.action == "create":
                if args.tier not in cfg.tiers:
                    raise ValueError(f"unknown tier {args.tier!r}; known: {', '.join(sorted(cfg.tiers))}")
                from shared.schemas import AccountCreate

                AccountCreate(name=args.name, tier=args.tier)  # same validation as the admin endpoint
                acct, key = make_account(args.name, args.tier)
                await store.add(acct)
                print(f"created account {acct.id} name={acct.name} tier={acct.tier}", file=sys.stderr)
                print("API key (shown once; only its hash is stored):", file=sys.stderr)
                print(key, flush=True)
                return 0
            if args.action == "list":
                accts = await store.list()
                rows = [a.info(await store.usage(a.id)) for a in accts]
                if args.json:
                    print(json.dumps([r.model_dump() for r in rows], indent=2))
                else:
                    print(f"{'id':22s} {'name':20s} {'tier':10s} {'revoked':7s} {'requests':>9s} {'images':>9s}  created")
                    for r in rows:
                        print(f"{r.id:22s} {r.name:20s} {r.tier:10s} {str(r.revoked).lower():7s} "
                              f"{r.usage.requests:9d} {r.usage.images:9d}  {r.created_at}")
                return 0
            acct = await store.get(args.account)
            if acct is None:
                print(f"heist-server accounts {args.action}: no account {args.account!r}", file=sys.stderr)
                return 1
            if args.action == "revoke":
                await store.revoke(acct.id)
                print(f"revoked {acct.id} ({acct.name})")
                return 0
            from server.app import defence_stats

            info = acct.info(await store.usage(acct.id)).model_dump()
            info["defences"] = (await defence_stats(store, acct)).model_dump()
            print(json.dumps(info, indent=2))
            return 0
        except StoreUnavailable as e:
            raise RuntimeError(str(e)) from None
        finally:
            await store.close()

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="heist-server", description="Encoder Heist provider: data, victim training, checkpoint reports, "
                                "the victim API and its accounts.")
    sub = p.add_subparsers(dest="command", required=True)

    from shared.data.synthetic import DATASETS

    d = sub.add_parser("data", help="generate (or reuse) a dataset's splits on disk (default: the procedural heist-shapes)")
    d.add_argument("--dataset", choices=DATASETS, default=DATASETS[0], help="heist-shapes (procedural), mnist5k (real MNIST "
                   "digits, installed with the package), or a folder dataset read from --data-root")
    d.add_argument("--data-root", default=None, help="folder of a folder dataset's files (cifar10, svhn, ...)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--scale", type=float, default=1.0, help="multiply every split size (tiny runs use 0.05)")
    d.set_defaults(func=_cmd_data)

    t = sub.add_parser("train", help="train a SimCLR encoder (victim with rotation watermark, or an independent control); "
                                     "under torchrun --nproc-per-node N, N processes share each batch (DDP)")
    t.add_argument("--preset", default="cpu", help="tiny (~1 min), cpu (default victim, <=15 min on 2 cores), gpu-r18, gpu-r34, gpu-r50 (CUDA)")
    t.add_argument("--out", required=True, help="checkpoint folder (also holds the resume state, rewritten at an epoch's end "
                                                "every --state-every seconds and after the last epoch)")
    t.add_argument("--state-every", type=float, metavar="SECONDS", help="seconds between resume states (default 60; 0: every epoch)")
    t.add_argument("--kind", choices=["victim", "independent"], help="label written in the checkpoint config")
    t.add_argument("--domain", choices=["in", "shifted"], default="in", help="train on the in-distribution or the shifted domain")
    t.add_argument("--train-split", help="train on this split (overrides --domain), e.g. attack: an independent encoder "
                   "of the victim's distribution that never saw its private set")
    t.add_argument("--no-watermark", action="store_true", help="train without the rotation predictor (negative controls)")
    t.add_argument("--seed", type=int)
    t.add_argument("--dataset", choices=DATASETS, help="train on this benchmark's splits instead of the preset's "
                   "(mnist5k: real MNIST digits)")
    t.add_argument("--data-root", default=None, help="folder of a folder dataset's files (cifar10, svhn, ...)")
    t.add_argument("--data-seed", type=int, help="dataset seed (default: the preset's)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--train-size", type=int, help="train on the first N images of the split only (a smaller private set)")
    t.add_argument("--width", type=int)
    t.add_argument("--batch-size", type=int, help="global batch; under torchrun each of N processes takes 1/N of it")
    t.add_argument("--lr", type=float)
    t.add_argument("--warmup-epochs", type=float, help="linear learning-rate warm-up (epochs)")
    t.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N; under torchrun cuda means each rank's own GPU")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--no-baseline", action="store_true", help="skip the random-init baseline probes")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_cmd_train)

    r = sub.add_parser("report", help="linear-probe and watermark report of a checkpoint")
    r.add_argument("checkpoint")
    r.add_argument("--no-baseline", action="store_true")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cmd_report)

    from shared.output_watermark import DIRECTIONS, FULL_SHARE, RATE, REGION_SPACES, TARGET_WEIGHTINGS

    k = sub.add_parser("watermark-key", help="calibrate the output watermark's key (defence output_watermark) on the "
                                             "victim; its vectors come from HEIST_SERVER_SECRET, which the file does not hold")
    k.add_argument("--checkpoint", required=True, help="victim checkpoint folder")
    k.add_argument("--out", required=True, help="calibration file (JSON) for the defence's key param and heist-defend --owm-key")
    k.add_argument("--directions", type=int, default=DIRECTIONS, help="region / target pairs (WARDEN's several directions; "
                   "default %(default)s)")
    k.add_argument("--rate", type=float, default=RATE, help="share of natural inputs each direction marks (default %(default)s)")
    k.add_argument("--full-share", type=float, default=FULL_SHARE,
                   help="share of those marked at full strength, the rest on a linear ramp (default %(default)s; a small share "
                        "over a larger --rate is a gentler mark that copies learn better: bench.owm_design)")
    k.add_argument("--split", default="test", help="calibration images: a split of the victim's benchmark")
    k.add_argument("--n", type=int, default=2000, help="calibration images")
    k.add_argument("--region-space", choices=REGION_SPACES, default=REGION_SPACES[0],
                   help="region normals: isotropic, or inside the victim's principal directions like the targets "
                        "(bench.owm_design compares them)")
    k.add_argument("--target-weighting", choices=TARGET_WEIGHTINGS, default=TARGET_WEIGHTINGS[0],
                   help="targets: combinations of the victim's principal directions weighted by their spread (mostly the "
                        "top few), or evenly (bench.owm_design compares them)")
    k.set_defaults(func=_cmd_watermark_key)

    s = sub.add_parser("serve", help="serve the victim embeddings API (uvicorn)")
    s.add_argument("--checkpoint", help="checkpoint folder (or HEIST_CHECKPOINT)")
    s.add_argument("--config", help="server config file, JSON or TOML (or HEIST_CONFIG); secrets come from env")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8000)")
    s.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N")
    s.add_argument("--workers", type=int, help="server processes sharing the port (default 1; more need REDIS_URL)")
    s.add_argument("--max-batch", type=int, help="micro-batch size cap (images)")
    s.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill")
    s.add_argument("--obfuscate", choices=["permute", "pad_shuffle", "affine", "binary"],
                   help="serve every answer through one fixed output transform (a suspect's obfuscation)")
    s.add_argument("--obfuscation-seed", type=int, help="seed of that transform (default 0)")
    s.add_argument("--obfuscation-pad", type=int, help="pad_shuffle: extra dimensions (default 16)")
    s.set_defaults(func=_cmd_serve)


    c = sub.add_parser("config", help="print the effective server config (file < env), secrets left out; "
                                      "--env lists every environment variable")
    c.add_argument("--config", help="server config file, JSON or TOML (or HEIST_CONFIG)")
    c.add_argument("--env", action="store_true", help="list the HEIST_* variables with type, default and meaning")
    c.set_defaults(func=_cmd_config)

    a = sub.add_parser("accounts", help="manage API accounts in the store named by REDIS_URL")
    a.add_argument("--config", help="server config file (for the tier names)")
    asub = a.add_subparsers(dest="action", required=True)
    ac = asub.add_parser("create", help="create an account; prints the new API key alone on the last line")
    ac.add_argument("name")
    ac.add_argument("--tier", required=True)
    al = asub.add_parser("list", help="list accounts with usage")
    al.add_argument("--json", action="store_true")
    ar = asub.add_parser("revoke", help="revoke an account's key (by id or name)")
    ar.add_argument("account")
    ash = asub.add_parser("show", help="show one account (by id or name) with usage")
    ash.add_argument("account")
    a.set_defaults(func=_cmd_accounts)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValidationError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"heist-server {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
