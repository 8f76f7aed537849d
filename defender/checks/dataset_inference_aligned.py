"""Aligned dataset inference: :mod:`defender.checks.dataset_inference` on the suspect's answers
mapped into the victim's space. The map was fitted on public-split answers only, so part B and
the public rows stay exchangeable."""

from __future__ import annotations

from defender.checks.base import Check, Verdict
from defender.checks.context import ALIGNMENT, DI_IMAGES, Context
from defender.checks.dataset_inference import prepared, row


class AlignedDatasetInferenceCheck(Check):
    name = "dataset_inference_aligned"
    needs = frozenset({ALIGNMENT, DI_IMAGES})

    def run(self, ctx: Context) -> list[Verdict]:
        answers = tuple(ctx.alignment.apply(x) for x in prepared(ctx).answers)
        return [row(ctx, self.name, answers, {"alignment": ctx.alignment.summary()})]
