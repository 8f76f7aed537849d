"""Dataset inference: are the victim's private images more (or less) likely than public ones under
a GMM of the suspect's answers?

The suspect is queried on private part A (``di_fit``, the GMM fit), private part B
(``di_private``, scored) and ``di_public`` images of the ``di_public_split`` split. The test's
side (``di_alternative``) and GMM size (``di_components``) are by default learned on the victim
alone (its part A vs public-split images, no suspect queries). With ``references`` (the
defender's own encoders that never saw the private data) the test runs on reference-calibrated
scores (:func:`defender.stats.calibrate`); with ``di_margin`` it tests against a share of the
victim's own effect on the same rows. The preparation here is shared with
:mod:`defender.checks.dataset_inference_aligned`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from defender.checks.base import Check, Verdict, finite
from defender.checks.context import DI_IMAGES, Context, Encode
from defender.stats import DatasetInferenceResult, calibrate, dataset_inference, membership_direction, with_min_effect
from shared.checkpoint import Checkpoint
from shared.data.synthetic import load_split

_REFERENCE_CACHE: dict[tuple, tuple[Checkpoint, DatasetInferenceResult]] = {}


def reference_test(ref: Checkpoint, rows_key: tuple, images: Callable[[], tuple[np.ndarray, ...]], encode: Encode,
                   **di_kwargs) -> DatasetInferenceResult:
    """A local encoder's raw dataset-inference test on the private and public rows: a reference's,
    or the victim's own (the yardstick of ``di_margin``).

    It does not depend on the suspect, so one encoder object on the same rows and settings is
    encoded and scored once per process: the zoo verifies many suspects against one panel. The
    cache holds the checkpoint itself, so its ``id`` cannot be reused while the entry lives.
    """
    key = (id(ref), rows_key, tuple(sorted(di_kwargs.items())))
    hit = _REFERENCE_CACHE.get(key)
    if hit is not None and hit[0] is ref:
        return hit[1]
    res = dataset_inference(*(encode(ref.encoder, x) for x in images()), **di_kwargs)
    if len(_REFERENCE_CACHE) >= 64:
        _REFERENCE_CACHE.clear()
    _REFERENCE_CACHE[key] = (ref, res)
    return res


@dataclass(frozen=True)
class Prepared:
    """What both dataset-inference checks use: the suspect's answers on part A, part B and the
    public rows, the test's settings, the references' tests, the margin and the shared detail."""

    answers: tuple[np.ndarray, np.ndarray, np.ndarray]
    kwargs: dict
    references: list[DatasetInferenceResult]
    min_effect: float
    side: dict

    @property
    def alternative(self) -> str:
        return self.kwargs["alternative"]


def prepared(ctx: Context) -> Prepared:
    """The suspect's answers and the test's settings, prepared by the first dataset-inference check."""
    return ctx.memo("dataset_inference", lambda: _prepare(ctx))


def _prepare(ctx: Context) -> Prepared:
    cfg, train = ctx.cfg, ctx.train
    part_a, part_b = ctx.part_a[: cfg.di_fit], ctx.part_b[: cfg.di_private]
    pub_split = load_split(ctx.spec, cfg.di_public_split, progress=ctx.progress).images
    if cfg.di_public > len(pub_split):
        raise ValueError(f"di_public={cfg.di_public} but the {cfg.di_public_split} split has {len(pub_split)} images")
    ra = ctx.suspect.embed(train[part_a], "private part A")
    rb = ctx.suspect.embed(train[part_b], "private part B")
    rp = ctx.suspect.embed(pub_split[: cfg.di_public], "public data")
    ctx.need["private A + B, public (dataset inference)"] = cfg.di_fit + cfg.di_private + cfg.di_public
    alternative, components, side = cfg.di_alternative, cfg.di_components, {}
    if alternative == "victim" or components == "auto":
        # calibrated on the victim alone: its part A (cross-fitted) vs public-split images, never the test split
        va, vp = ctx.encode_victim(train[part_a]), ctx.victim_public()[: cfg.di_public]
        ks = cfg.di_candidates if components == "auto" else (components,)
        cal = {k: membership_direction(va, vp, components=k, seed=cfg.seed) for k in ks}
        components = max(ks, key=lambda k: abs(cal[k].t_statistic))
        if alternative == "victim":
            alternative = cal[components].alternative
        side = {"calibration_on_victim": {"components": components,
                                          "t_by_components": {str(k): round(c.t_statistic, 3) for k, c in cal.items()},
                                          "alternative": alternative}}
    # local encoders of the defender: scored on the same rows, no suspect queries
    rows_key = (ctx.spec.digest(), cfg.di_public_split, cfg.di_public, part_a.tobytes(), part_b.tobytes())
    di_rows = lambda: (train[part_a], train[part_b], pub_split[: cfg.di_public])  # noqa: E731
    di_kwargs = dict(components=components, alpha=cfg.alpha, seed=cfg.seed, alternative=alternative,
                     crossfit=cfg.di_crossfit)
    refs = [reference_test(ref, rows_key, di_rows, ctx.encode, **di_kwargs) for ref in ctx.references.values()]
    if refs:
        side["reference_tests"] = {n: {"t": round(r.t_statistic, 3), "p": r.p_value}
                                   for n, r in zip(ctx.references, refs, strict=True)}
    min_effect = 0.0
    if cfg.di_margin > 0:
        # the victim's own effect on the same rows and settings (local, no queries): the yardstick of the margin
        own = calibrate(reference_test(ctx.victim, rows_key, di_rows, ctx.encode, **di_kwargs), refs)
        victim_effect = {"less": -own.effect, "greater": own.effect}.get(alternative, abs(own.effect))
        min_effect = cfg.di_margin * max(victim_effect, 0.0)
        side["margin"] = {"di_margin": cfg.di_margin, "victim_effect": round(victim_effect, 4),
                          "victim_t": round(own.t_statistic, 3), "min_effect": round(min_effect, 4)}
    return Prepared((ra, rb, rp), di_kwargs, refs, min_effect, side)


def row(ctx: Context, name: str, answers: tuple[np.ndarray, ...], extra: dict) -> Verdict:
    """The test on ``answers`` (part A, part B, public rows); its log-likelihoods are kept for the
    plots, the unaligned check's in preference."""
    prep = prepared(ctx)
    di = calibrate(dataset_inference(*answers, **prep.kwargs), prep.references)
    if prep.min_effect > 0:
        di = with_min_effect(di, prep.min_effect)
    label = (f"t (Welch, {prep.alternative}{', reference-calibrated' if prep.references else ''}"
             f"{f', H0 effect <= {prep.min_effect:.3g}' if prep.min_effect > 0 else ''})")
    if name == "dataset_inference" or "ll_private" not in ctx.arrays:
        ctx.arrays["ll_private"], ctx.arrays["ll_public"] = di.ll_private, di.ll_public
    return Verdict(name, label, finite(di.t_statistic), finite(di.p_value), di.verdict, {**di.as_dict(), **prep.side, **extra})


class DatasetInferenceCheck(Check):
    name = "dataset_inference"
    needs = frozenset({DI_IMAGES})

    def run(self, ctx: Context) -> list[Verdict]:
        return [row(ctx, self.name, prepared(ctx).answers, {})]
