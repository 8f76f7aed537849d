"""Watermark: the victim's rotation predictor read on the suspect's answers to rotated private
images (part B, ``wm_n`` images x the watermark's angles), as they come.

The raw reading decides only when the suspect answers in the victim's coordinates (mean cosine
of at least ``wm_raw_min_cosine`` on the public queries); elsewhere the row is n/a and
:mod:`defender.checks.watermark_aligned` decides. The helpers here are shared with that check.
"""

from __future__ import annotations

import numpy as np

from defender.checks.base import Check, Verdict, finite
from defender.checks.context import COORDINATES, WATERMARK_IMAGES, Context
from defender.config import VerifyConfig
from defender.stats import fit_alignment
from defender.watermark import WatermarkResult, watermark_test
from shared.watermark import predict, rotated_copies


def has_watermark(ctx: Context) -> bool:
    return ctx.victim.watermark is not None and ctx.victim.config.watermark is not None


def no_watermark(name: str) -> Verdict:
    return Verdict(name, "accuracy", None, None, "n/a", {"reason": "the victim checkpoint has no watermark predictor"})


def rotated_answers(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """The suspect's answers to the rotated private images and their rotation labels (queried once)."""

    def query() -> tuple[np.ndarray, np.ndarray]:
        imgs, labels = rotated_copies(ctx.train[ctx.part_b[: ctx.cfg.wm_n]], ctx.victim.config.watermark)
        answers = ctx.suspect.embed(imgs, "rotated private queries")
        ctx.need["rotated private (watermark)"] = len(imgs)
        return answers, labels

    return ctx.memo("watermark", query)


def chance_level(ctx: Context) -> tuple[float, dict[str, float]]:
    """The accuracy an encoder without the watermark shows: 50%, or with watermark references the
    highest accuracy the victim's predictor reaches on a reference's answers to the same rotated
    private images, aligned to the victim's space on the same public images as a suspect's.

    On data whose orientation any encoder sees (upright digits), an unrelated encoder aligned to the
    victim reads well above 50% through the victim's predictor; the references measure that level
    locally (no queries), so the test asks for more than it.
    """
    if not ctx.wm_references:
        return 0.5, {}

    def build() -> dict[str, float]:
        imgs, labels = rotated_copies(ctx.train[ctx.part_b[: ctx.cfg.wm_n]], ctx.victim.config.watermark)
        n = min(ctx.cfg.align_n, len(ctx.public))
        pub, v_pub = ctx.public[:n], ctx.victim_public()[:n]
        accs = {}
        for name, ref in ctx.wm_references.items():
            al = fit_alignment(ctx.encode(ref.encoder, pub), v_pub, ridge=ctx.cfg.align_ridge, seed=ctx.cfg.seed)
            accs[name] = round(float((predict(ctx.victim.watermark, al.apply(ctx.encode(ref.encoder, imgs))) == labels).mean()), 4)
        return accs

    accs = ctx.memo("watermark references", build)
    return max(0.5, *accs.values()), accs


def score(ctx: Context, reps: np.ndarray, labels: np.ndarray) -> tuple[WatermarkResult, str, dict]:
    """The predictor's accuracy on ``reps`` against the chance level: the result, its verdict and the row's detail."""
    cfg = ctx.cfg
    chance, refs = chance_level(ctx)
    res = watermark_test(predict(ctx.victim.watermark, reps) == labels, chance)
    verdict = "stolen" if (res.p_ttest < cfg.alpha and res.accuracy >= chance + cfg.wm_margin) else "independent"
    detail = {**res.as_dict(), "t_statistic": finite(res.t_statistic), "chance": chance}
    if refs:
        detail["reference_accuracy"] = refs
    return res, verdict, detail


def row(ctx: Context, name: str, res: WatermarkResult, p_value: float | None, verdict: str, detail: dict) -> Verdict:
    """The check's row; its accuracy and image count are kept for the plots."""
    ctx.arrays[f"{name}_accuracy"] = res.accuracy
    ctx.arrays[f"{name}_n"] = res.n
    return Verdict(name, "accuracy", res.accuracy, p_value, verdict, detail)


class WatermarkBase(Check):
    def material(self, row: Verdict, cfg: VerifyConfig) -> bool:  # a watermark also needs its accuracy margin
        return row.value is not None and row.value >= row.detail.get("chance", 0.5) + cfg.wm_margin


class WatermarkCheck(WatermarkBase):
    name = "watermark"
    needs = frozenset({COORDINATES, WATERMARK_IMAGES})

    def run(self, ctx: Context) -> list[Verdict]:
        if not has_watermark(ctx):
            return [no_watermark(self.name)]
        cfg, dim = ctx.cfg, ctx.victim.config.representation_dim
        answers, labels = rotated_answers(ctx)
        if answers.shape[1] != dim:
            return [Verdict(self.name, "accuracy", None, None, "n/a",
                            {"reason": f"suspect answers are {answers.shape[1]}-d, the victim's predictor reads "
                                       f"{dim}-d; see watermark_aligned"})]
        res, verdict, detail = score(ctx, answers, labels)
        p_row = finite(res.p_ttest)
        raw_cosine = detail["raw_cosine"] = ctx.raw_cosine
        if raw_cosine is None or raw_cosine < cfg.wm_raw_min_cosine:  # a foreign space: not evidence
            verdict, p_row = "n/a", None
            cos = "unknown" if raw_cosine is None else f"{raw_cosine:.3f}"
            detail["reason"] = (f"the suspect does not answer in the victim's coordinates (mean cosine {cos} "
                                f"< {cfg.wm_raw_min_cosine} on public queries): the predictor reads a "
                                "foreign space; see watermark_aligned")
        return [row(ctx, self.name, res, p_row, verdict, detail)]
