"""heist-defend: ownership checks of a suspect encoder against the victim."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_watermark(args: argparse.Namespace) -> int:
    from defender.watermark import watermark_test
    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import DataSpec, load_split, private_split_indices
    from shared.probe import extract_features
    from shared.watermark import rotated_copies

    victim = load_checkpoint(args.victim)
    if victim.watermark is None or victim.config.watermark is None:
        print(f"heist-defend: {args.victim} has no watermark predictor", file=sys.stderr)
        return 2
    suspect = load_checkpoint(args.suspect)
    if suspect.config.representation_dim != victim.config.representation_dim:
        print(f"heist-defend: suspect is {suspect.config.representation_dim}-d, victim {victim.config.representation_dim}-d; "
              "the alignment step (least squares on public queries) is needed for that", file=sys.stderr)
        return 2
    spec = DataSpec.model_validate(victim.config.data["spec"])
    _, part_b = private_split_indices(spec, size=args.n)
    private = load_split(spec, "train").images[part_b]
    rot, labels = rotated_copies(private, victim.config.watermark)
    feats = extract_features(suspect.encoder, rot)
    import torch

    with torch.no_grad():
        pred = victim.watermark(torch.from_numpy(feats)).argmax(1).numpy()
    res = watermark_test(pred == labels)
    verdict = "stolen" if res.p_binomial < args.alpha else "not shown"
    row = {"method": "watermark", "suspect": str(Path(args.suspect)), **res.as_dict(), "verdict": verdict}
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        print(f"watermark accuracy {100 * res.accuracy:.1f}% on {res.n} rotated private images "
              f"(effect {res.effect:+.3f}, binomial p={res.p_binomial:.2e}, t={res.t_statistic:.2f}, p={res.p_ttest:.2e}) -> {verdict}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="heist-defend", description="Encoder Heist defender: ownership checks of a suspect encoder.")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watermark", help="score a local suspect checkpoint with the victim's rotation-watermark predictor")
    w.add_argument("--victim", required=True, help="victim checkpoint folder (with its watermark predictor)")
    w.add_argument("--suspect", required=True, help="suspect checkpoint folder")
    w.add_argument("--n", type=int, default=1000, help="private images (each rotated 4 ways)")
    w.add_argument("--alpha", type=float, default=0.01)
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=_cmd_watermark)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"heist-defend {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
