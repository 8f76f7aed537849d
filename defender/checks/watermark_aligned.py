"""Aligned watermark: the victim's rotation predictor read on the suspect's answers to the rotated
private images mapped into the victim's space (the alignment fitted on the public queries), so
that a permuted, padded or affine-obfuscated copy is still read in the victim's coordinates."""

from __future__ import annotations

from defender.checks.base import Verdict, finite
from defender.checks.context import ALIGNMENT, WATERMARK_IMAGES, Context
from defender.checks.watermark import WatermarkBase, has_watermark, no_watermark, rotated_answers, row, score


class AlignedWatermarkCheck(WatermarkBase):
    name = "watermark_aligned"
    needs = frozenset({ALIGNMENT, WATERMARK_IMAGES})

    def run(self, ctx: Context) -> list[Verdict]:
        if not has_watermark(ctx):
            return [no_watermark(self.name)]
        answers, labels = rotated_answers(ctx)
        res, verdict, detail = score(ctx, ctx.alignment.apply(answers), labels)
        detail["alignment"] = ctx.alignment.summary()
        return [row(ctx, self.name, res, finite(res.p_ttest), verdict, detail)]
