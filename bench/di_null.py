"""Empirical null of dataset inference: the same test on pools of images nobody trained on.

The zoo tests every suspect on one fixed sample, the victim's private set. An independent suspect's
p-value on it is one draw, and all suspects share the draw. This bench puts it in context: for
each suspect it runs the zoo's test (cross-fitted, the side and GMM size given here, optionally
reference-calibrated) on the victim's private set and on ``--pools`` disjoint blocks of the train
split beyond the victim's ``train_size`` (same distribution, never seen by the victim). For an
independent suspect every pool is a null draw; for the victim and its copies only the private set
carries the signal. ``--di-margin RHO`` runs the test against a smallest effect of interest, RHO x the
victim's own effect on its private set (as ``heist-defend verify --di-margin`` does), and also
counts the zero-effect test's rejections. ``--aligned`` runs ``dataset_inference_aligned`` instead:
every encoder's answers mapped into the victim's space first.

Usage: ``python -m bench.di_null --victim runs/di5/victim --reference runs/di_ref/reference-dataseed2
--suspects runs/di5/independent-dataseed1 runs/di5/independent-shifted runs/di5/stolen-infonce-4000``.
Writes results/defender/<out>.json (``--out``, default di_null).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.harness import table, write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--victim", type=Path, required=True)
    ap.add_argument("--suspects", type=Path, nargs="+", required=True)
    ap.add_argument("--reference", type=Path, action="append", default=[], help="reference encoder(s) for calibration")
    ap.add_argument("--pools", type=int, default=8, help="null pools of the victim's private-set size")
    ap.add_argument("--public", type=int, default=4000, help="images of --public-split as public data")
    ap.add_argument("--public-split", default="test", help="split the public data comes from (the zoo's: test)")
    ap.add_argument("--public-start", type=int, default=0,
                    help="first image of the public data in its split (e.g. --public-split train --public-start 16000: "
                         "train images beyond every pool)")
    ap.add_argument("--components", type=int, default=1)
    ap.add_argument("--alternative", choices=["less", "greater"], default="less")
    ap.add_argument("--di-margin", type=float, default=0.0, metavar="RHO",
                    help="test against RHO x the victim's own effect on the private set (verify --di-margin), "
                         "on the private set and on every pool")
    ap.add_argument("--aligned", action="store_true",
                    help="dataset_inference_aligned: every encoder's answers mapped into the victim's space by least "
                         "squares on --align-n public-split images, as verify does")
    ap.add_argument("--align-n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="di_null", help="results/defender/<out>.json")
    args = ap.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from defender.stats import calibrate, dataset_inference, fit_alignment, with_min_effect
    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import DataSpec, load_split, private_split_indices
    from shared.probe import extract_features

    torch.set_num_threads(args.threads)
    victim = load_checkpoint(args.victim)
    spec = DataSpec.model_validate(victim.config.data["spec"])
    size = victim.config.data.get("train_size")
    if size is None:
        raise SystemExit("the victim trained on its whole train split: there is no unseen pool of that split")
    train = load_split(spec, "train").images
    public = load_split(spec, args.public_split).images[args.public_start: args.public_start + args.public]
    if len(public) < args.public:
        raise SystemExit(f"split {args.public_split!r} has {len(public)} images from {args.public_start}, asked for {args.public}")
    pools = [("private", train[:size])] + [
        (f"null{j}", train[size * j: size * (j + 1)]) for j in range(1, args.pools + 1) if size * (j + 1) <= len(train)]
    if args.public_split == "train" and args.public_start < size * len(pools):
        raise SystemExit(f"public train images must start after the pools (at {size * len(pools)} or later)")
    part_a, part_b = private_split_indices(spec, size=size // 2, seed=0, pool=size)  # verify's parts A and B

    align_imgs = load_split(spec, "public").images[: args.align_n]  # verify's alignment queries (public split)
    v_align = extract_features(victim.encoder, align_imgs) if args.aligned else None

    def tests(enc, aligned: bool = False) -> list:
        """The test on every pool; ``aligned``: on the encoder's answers mapped into the victim's space."""
        embed = lambda x: extract_features(enc, x)  # noqa: E731
        if aligned:
            mapping = fit_alignment(extract_features(enc, align_imgs), v_align)
            embed = lambda x: mapping.apply(extract_features(enc, x))  # noqa: E731
        out, rp = [], embed(public)
        for _, pool in pools:
            ra, rb = embed(pool[part_a]), embed(pool[part_b])
            out.append(dataset_inference(ra, rb, rp, components=args.components, alternative=args.alternative, crossfit=True))
        return out

    refs = [tests(load_checkpoint(r).encoder) for r in args.reference]
    min_effect = 0.0
    if args.di_margin > 0:  # the victim's own effect on the private set, as verify measures it
        own = calibrate(tests(victim.encoder)[0], [ref[0] for ref in refs])
        side = -own.effect if args.alternative == "less" else own.effect
        min_effect = args.di_margin * max(side, 0.0)
        print(f"victim's effect on the private set d = {side:.4f} (t {own.t_statistic:+.2f}): null d <= {min_effect:.4f}")
    rows, payload = [], []
    for path in tqdm(args.suspects, desc="suspects", unit="suspect"):
        raw = tests(load_checkpoint(path).encoder, aligned=args.aligned)  # references and the margin's yardstick: plain, as in verify
        cal = [calibrate(r, [ref[i] for ref in refs]) for i, r in enumerate(raw)]
        if min_effect > 0:
            cal = [with_min_effect(c, min_effect) for c in cal]
        t = np.array([c.t_statistic for c in cal])
        null = t[1:]
        rows.append({"suspect": path.name, "t private (p)": f"{t[0]:+.2f} ({cal[0].p_value:.3g})",
                     "t null pools": " ".join(f"{x:+.1f}" for x in null),
                     "null mean / sd": f"{null.mean():+.2f} / {null.std(ddof=1):.2f}",
                     "null pools with p < 0.05": f"{int((np.array([c.p_value for c in cal[1:]]) < 0.05).sum())}/{len(null)}"})
        if min_effect > 0:
            rows[-1]["... with the no-effect test"] = f"{int((np.array([c.p_zero_effect for c in cal[1:]]) < 0.05).sum())}/{len(null)}"
        payload.append({"suspect": str(path), "pools": [name for name, _ in pools], "t": t.tolist(),
                        "p": [c.p_value for c in cal], "t_raw": [r.t_statistic for r in raw],
                        "p_zero_effect": [c.p_zero_effect if c.p_zero_effect is not None else c.p_value for c in cal]})
    cols = ["suspect", "t private (p)", "t null pools", "null mean / sd", "null pools with p < 0.05"]
    cols += ["... with the no-effect test"] if min_effect > 0 else []
    print(table(rows, cols))
    path = write_json("defender", args.out, {"args": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
                                           for k, v in vars(args).items()},
                                  "references": [str(r) for r in args.reference], "min_effect": min_effect,
                                  "suspects": payload})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
