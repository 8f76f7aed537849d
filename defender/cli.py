"""heist-defend: ownership checks of a suspect encoder against the victim."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

from defender.config import VerifyConfig  # pydantic only: --help loads no model code

DI_MARGIN = VerifyConfig.model_fields["di_margin"].default


def _cmd_watermark(args: argparse.Namespace) -> int:
    from defender.watermark import watermark_test
    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import DataSpec, load_split, private_split_indices
    from shared.probe import extract_features
    from shared.watermark import predict, rotated_copies

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
    _, part_b = private_split_indices(spec, size=args.n, pool=victim.config.data.get("train_size"))
    private = load_split(spec, "train").images[part_b]
    rot, labels = rotated_copies(private, victim.config.watermark)
    res = watermark_test(predict(victim.watermark, extract_features(suspect.encoder, rot)) == labels)
    verdict = "stolen" if res.p_binomial < args.alpha else "not shown"
    row = {"method": "watermark", "suspect": str(Path(args.suspect)), **res.as_dict(), "verdict": verdict}
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        print(f"watermark accuracy {100 * res.accuracy:.1f}% on {res.n} rotated private images "
              f"(effect {res.effect:+.3f}, binomial p={res.p_binomial:.2e}, t={res.t_statistic:.2f}, p={res.p_ttest:.2e}) -> {verdict}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import os

    import numpy as np

    from defender.report import text_table, write
    from defender.suspects import SuspectError, open_suspect
    from defender.verify import verify
    from shared.checkpoint import load_checkpoint
    from shared.transforms import make_transform

    victim = load_checkpoint(args.victim)
    cfg = VerifyConfig(**{name: getattr(args, name) for _, name, _ in VERIFY_OPTIONS})
    references = {str(r): load_checkpoint(r) for r in args.di_reference or []}
    wm_references = {str(r): load_checkpoint(r) for r in args.wm_reference or []}
    owm = None
    if args.owm_key:
        from shared.output_watermark import load_calibration

        secret = os.environ.get("HEIST_SERVER_SECRET", "")
        if not secret:
            raise ValueError("--owm-key needs HEIST_SERVER_SECRET: the secret the victim's server runs with")
        owm = (load_calibration(Path(args.owm_key)), secret.encode())
    query_log = load_query_log(Path(args.query_log)) if args.query_log else None
    transform = None
    if args.obfuscate:  # testing aid: obfuscate a *local* suspect's answers (keyed by --obfuscate-seed)
        transform = make_transform(args.obfuscate, load_checkpoint(args.suspect).config.representation_dim,
                                   np.random.default_rng(args.obfuscate_seed), pad=args.pad)
    api_key = args.api_key or os.environ.get("HEIST_API_KEY")
    try:
        with open_suspect(args.suspect, api_key=api_key, transform=transform, progress=not args.quiet,
                          **({"max_wait_s": args.max_wait_s, "pow_workers": args.pow_workers}
                             if str(args.suspect).startswith(("http://", "https://")) else {})) as suspect:
            rep = verify(victim, suspect, cfg, victim_name=str(args.victim), progress=not args.quiet,
                         references=references, wm_references=wm_references, owm=owm, query_log=query_log)
    except SuspectError as e:
        print(f"heist-defend verify: suspect error (no verdict): {e}", file=sys.stderr)
        return 3
    print(text_table(rep))
    if args.out:
        paths = write(rep, Path(args.out))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.json:
        print(json.dumps(rep.as_dict(), indent=2, default=float))
    return 0


def load_query_log(path: Path):
    """An account's query log as saved from ``GET /v1/admin/accounts/{id}/queries`` (JSON: base64 PNGs)
    -> uint8 (N, H, W, 3)."""
    import numpy as np
    from pydantic import ValidationError

    from shared.images import ImageError, ImageLimits, decode_image
    from shared.schemas import QueryLog

    if not path.is_file():
        raise ValueError(f"query log {path} not found (save it from GET /v1/admin/accounts/ID/queries)")
    try:
        log = QueryLog.model_validate_json(path.read_text())
    except ValidationError as e:
        raise ValueError(f"{path} is not a query log (GET /v1/admin/accounts/ID/queries): {e}") from None
    if not log.images:
        raise ValueError(f"{path}: the query log of {log.account_id} is empty (is query_log set on its tier?)")
    try:
        images = [np.asarray(decode_image(s, i, ImageLimits(formats=("PNG",))), dtype=np.uint8) for i, s in enumerate(log.images)]
    except ImageError as e:
        raise ValueError(f"{path}: {e}") from None
    if any(im.shape != (log.size, log.size, 3) for im in images):
        raise ValueError(f"{path}: images are not all {log.size} x {log.size}")
    return np.stack(images)


def parse_components(v: str) -> int | str:
    """argparse type of a GMM size: a positive integer or ``auto``."""
    if v == "auto":
        return v
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {v!r}")
    return n


# verify's options that set VerifyConfig fields: flag, field, argparse settings beyond what the field gives
VERIFY_OPTIONS: tuple[tuple[str, str, dict], ...] = (
    ("--alpha", "alpha", {}),
    ("--wm-n", "wm_n", {}),
    ("--wm-margin", "wm_margin", {}),
    ("--align-n", "align_n", {}),
    ("--di-fit", "di_fit", {}),
    ("--di-private", "di_private", {}),
    ("--di-public", "di_public", {}),
    ("--di-public-split", "di_public_split", {}),
    ("--components", "di_components", {"type": parse_components, "metavar": "COMPONENTS"}),
    ("--di-alternative", "di_alternative", {}),
    ("--di-margin", "di_margin", {"metavar": "RHO"}),
    ("--owm-decoys", "owm_decoys", {}),
    ("--owm-shrink", "owm_shrink", {}),
    ("--owm-fit", "owm_fit", {}),
    ("--qlog-n", "qlog_n", {}),
    ("--qlog-margin", "qlog_margin", {}),
    ("--mi-dims", "mi_dims", {}),
    ("--methods", "methods", {}),
    ("--seed", "seed", {}),
)


def config_option(name: str, **extra) -> dict:
    """``add_argument`` keywords for the VerifyConfig field ``name``: its type (choices for a
    Literal, one or more values for a tuple), default and description."""
    f = VerifyConfig.model_fields[name]
    kw: dict = {"dest": name, "default": f.default}
    if get_origin(f.annotation) is Literal:
        kw["choices"] = list(get_args(f.annotation))
    elif get_origin(f.annotation) is tuple:
        kw["nargs"] = "+"
    elif f.annotation in (int, float):
        kw["type"] = f.annotation
    shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
    kw["help"] = f"{(f.description or '').replace('%', '%%')} (default: {shown})".lstrip()
    return kw | extra


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
    v = sub.add_parser("verify", help="all ownership checks (watermark raw/aligned, dataset inference, similarity) of a suspect")
    v.add_argument("--victim", required=True, help="victim checkpoint folder (the defender's own model)")
    v.add_argument("--suspect", required=True, help="suspect: http(s)://host:port of an embeddings API, or a checkpoint folder")
    v.add_argument("--api-key", help="API key for an HTTP suspect (default: $HEIST_API_KEY)")
    v.add_argument("--out", help="folder for verify.json, verify.md and plots")
    for flag, name, extra in VERIFY_OPTIONS:
        v.add_argument(flag, **config_option(name, **extra))
    v.add_argument("--di-reference", action="append", metavar="DIR",
                   help="reference encoder (checkpoint folder) that never saw the private data, e.g. trained on public data; "
                        "dataset inference then tests reference-calibrated log-likelihoods (repeatable; the raw test stays "
                        "in the JSON)")
    v.add_argument("--wm-reference", action="append", metavar="DIR",
                   help="the defender's own encoder without the watermark (checkpoint folder); the watermarks' chance level "
                        "becomes the highest accuracy the victim's predictor reaches on a reference's aligned answers instead "
                        "of 50%% (repeatable; needed where any encoder sees the images' orientation, e.g. digits)")
    v.add_argument("--owm-key", metavar="FILE",
                   help="the output watermark's calibration file (heist-server watermark-key); the key's vectors come "
                        "from HEIST_SERVER_SECRET, which must be the victim server's")
    v.add_argument("--query-log", metavar="FILE",
                   help="one account's query log, saved from the victim server's GET /v1/admin/accounts/ID/queries (a tier "
                        "with query_log); the query_log check tests whether the suspect matches the victim better on those "
                        "images than on held-out ones")
    v.add_argument("--obfuscate", choices=["permute", "pad_shuffle", "affine"], help="(local suspects) obfuscate its answers")
    v.add_argument("--obfuscate-seed", type=int, default=1)
    v.add_argument("--pad", type=int, default=16, help="padding dimensions for --obfuscate pad_shuffle")
    v.add_argument("--max-wait-s", type=float, default=120, help="HTTP: give up after waiting this long on 429/503")
    v.add_argument("--pow-workers", type=int, default=1)
    v.add_argument("--json", action="store_true", help="also print the JSON report")
    v.add_argument("--quiet", action="store_true", help="no progress bars")
    v.set_defaults(func=_cmd_verify)
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
