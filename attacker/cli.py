"""heist-attack: the attacker's commands (measure a copy; stealing over HTTP comes with the attacker issue)."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_probe(args: argparse.Namespace) -> int:
    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import DataSpec
    from shared.device import resolve_device
    from shared.train.evaluate import format_report, probe_report

    ckpt = load_checkpoint(args.checkpoint)
    spec = DataSpec(seed=args.data_seed)
    metrics = probe_report(ckpt.encoder, spec, resolve_device("auto"), args.probe_train_size, progress=True)
    print(json.dumps(metrics, indent=2) if args.json else format_report(metrics))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="heist-attack", description="Encoder Heist attacker: measure a (stolen) encoder copy.")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("probe", help="linear-probe accuracy of a checkpoint on the downstream tasks")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--data-seed", type=int, default=0)
    pr.add_argument("--probe-train-size", type=int, default=None)
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=_cmd_probe)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"heist-attack {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
