"""A victim trained for a few epochs only, without the probe report: for throughput benches.

    python -m bench.quick_victim --preset gpu-r18 --epochs 10 --out runs/gpu-bench-victim

Throughput does not need a good encoder, but the defended tier does need a trained one: a random-init
ResNet maps every image to nearly the same direction (cosine above 0.99 between most pairs), so the
similar-query defence flags every request and proof of work is asked at once. A few epochs of the
preset's SimCLR training (``heist-server train`` without its linear-probe report) spread them out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.train.config import PRESETS, get_preset
from shared.train.simclr import finalize, train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpu-r18", choices=sorted(PRESETS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--device", help="override the preset's device (cpu for a smoke run)")
    args = p.parse_args(argv)
    update: dict = {"epochs": args.epochs, "warmup_epochs": min(1.0, args.epochs / 2)}
    if args.device:
        update["device"] = args.device
    cfg = get_preset(args.preset).model_copy(update=update)
    outcome = train(cfg, Path(args.out), progress=False)
    finalize(outcome, Path(args.out), {"train_images_per_s": round(outcome.images_per_s, 1),
                                       "note": "bench.quick_victim: a few epochs, no probe report"})
    print(f"trained {args.preset} {outcome.epochs_run} epochs in {outcome.seconds:.0f} s "
          f"({outcome.images_per_s:.0f} img/s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
