"""Output watermark (EmbMarker / WARDEN adapted to images): answers for inputs in a keyed region of
the victim's representation space are pulled toward a keyed target direction, K directions per key
(:mod:`shared.output_watermark` has the math, the defender's check verifies it).

Params: ``key``, the calibration file written by ``heist-server watermark-key`` with the same
``HEIST_SERVER_SECRET`` (a file made with another secret is refused at start), and ``strength``, the
largest share of a marked answer that the target replaces. The mark is a pure function of the
image's representation: every account (and every sybil) gets the same mark, answers stay
deterministic, nothing is stored. It must run before any defence that changes the answers' space
(noise, similar-query perturbation, B4B), so it marks the victim's own representations; the
projection output (``outputs: projection``) is not marked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from server.defences.base import Defence, DefenceParams
from shared.output_watermark import DIRECTIONS, FULL_SHARE, RATE, Marker, WatermarkCalibration, load_calibration

GATES = frozenset({"rate_limit", "pow", "noop"})  # defences that never change answers


class OutputWatermark(Defence):
    name = "output_watermark"
    params: Params  # the validated Params below (Defence.__init__ stores it)

    class Params(DefenceParams):
        key: Path = Field(description="calibration file from heist-server watermark-key (made with this server's secret)")
        strength: float = Field(default=0.25, gt=0, le=1, description="largest share of a marked answer the target replaces")

    def __init__(self, ctx, params) -> None:
        super().__init__(ctx, params)
        self.marker = Marker(load_calibration(params.key), ctx.secret, params.strength)

    def check(self, tier: str, others: list[Defence]) -> None:
        before = others[:others.index(self)]
        changed = [d.name for d in before if d.name not in GATES]
        if changed:
            raise ValueError(f"output_watermark must come before {changed}: it marks the victim's own representations")

    async def transform(self, account, request, images, representations, projections):
        marked, w = self.marker.mark(representations)
        self.ctx.count(self.name, "marked", int((w.sum(1) > 0).sum()))
        return marked.astype(np.float32)


def calibrate_checkpoint(checkpoint: Path, secret: bytes, directions: int = DIRECTIONS, rate: float = RATE, split: str = "test",
                         n: int = 2000, region_space: str = "isotropic", target_weighting: str = "spread",
                         full_share: float = FULL_SHARE) -> WatermarkCalibration:
    """The key's calibration on the victim's clean representations of ``n`` images of its benchmark's ``split``."""
    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import load_split
    from shared.output_watermark import check_shape
    from shared.probe import extract_features

    check_shape(directions, rate, full_share)  # before loading and extracting anything
    ck = load_checkpoint(checkpoint)
    spec = ck.config.data_spec()
    if split not in spec.splits:
        raise ValueError(f"split {split!r} is not in the victim's benchmark ({', '.join(spec.splits)})")
    images = load_split(spec, split, progress=False).images[:n]
    from shared.output_watermark import calibrate

    return calibrate(extract_features(ck.encoder, images), secret, directions, rate,
                     calibrated_on={"checkpoint": str(checkpoint), "dataset": spec.dataset, "split": split, "n": len(images)},
                     region_space=region_space, target_weighting=target_weighting, full_share=full_share)
