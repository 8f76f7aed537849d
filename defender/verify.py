"""``verify``: query a suspect on the defender's data and run every ownership check.

The victim is the defender's own checkpoint (local); the suspect is only queried. Queries:

- public images (``align_n``): the victim's and the suspect's answers fit the alignment map and
  feed the similarity scores;
- rotated private images (part B, ``wm_n`` images x the watermark's angles): the watermark;
- private part A (``di_fit``), private part B (``di_private``), public data (``di_public`` images of
  the ``di_public_split`` split): dataset inference. Its side (``di_alternative``) is by default
  learned on the victim itself (its part A vs public-split images, no suspect queries): the
  paper's "members are more likely" or the opposite, which contrastive memorisation can give.
  With ``references`` (the defender's own encoders that never saw the private data), the test
  runs on reference-calibrated scores (:func:`defender.stats.calibrate`); no extra queries.

Identical images are paid for once (the 0-degree copies of part B are part B). The report says
how many images each check needed and how many the suspect was actually sent.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from defender.stats import (
    DatasetInferenceResult,
    calibrate,
    dataset_inference,
    fit_alignment,
    membership_direction,
    similarity,
    standardise_rows,
    with_min_effect,
)
from defender.suspects import Suspect
from defender.watermark import watermark_test
from shared.checkpoint import Checkpoint
from shared.data.synthetic import DataSpec, load_split, private_set_size, private_split_indices
from shared.probe import extract_features
from shared.train.evaluate import random_init_like
from shared.watermark import predict, rotated_copies

METHODS = ("watermark", "watermark_aligned", "dataset_inference", "dataset_inference_aligned", "similarity")
DECISIVE = ("watermark", "watermark_aligned", "dataset_inference", "dataset_inference_aligned")


class VerifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    alpha: float = Field(default=0.01, gt=0, lt=1)
    wm_n: int = Field(default=500, ge=10, description="private images for the watermark (each rotated to every angle)")
    wm_margin: float = Field(default=0.05, ge=0, lt=0.5, description=(
        "a watermark says stolen only at accuracy >= 0.5 + margin (and p < alpha): the victim's predictor read on an "
        "unrelated, obfuscated space strays from 50% by more than sampling noise (up to 4.9 points in results/zoo_di.md)"))
    wm_raw_min_cosine: float = Field(default=0.5, ge=-1, le=1, description=(
        "the raw watermark decides only when the suspect answers in the victim's coordinates: the mean cosine of "
        "row-standardised answers to the public queries must reach this (copies read 0.87-0.95; independent or "
        "obfuscated spaces |cos| < 0.04 in results/zoo_di12*.json). Elsewhere the victim's predictor reads a foreign "
        "space, whose accuracy can stray far from 50% either way (67.1% on an affine-obfuscated independent in "
        "results/zoo_di12b.md): the row is reported as n/a, and watermark_aligned decides"))
    align_n: int = Field(default=1000, ge=10, description="public images for the alignment map and similarity")
    align_ridge: float = Field(default=1e-3, ge=0)
    di_fit: int = Field(default=1000, ge=10, description="private part A: GMM fit")
    di_private: int = Field(default=1000, ge=10, description="private part B: scored")
    di_public: int = Field(default=1000, ge=10, description="public images scored")
    di_public_split: str = "test"
    di_components: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto", description="GMM components; auto: the count in di_candidates whose membership signal is "
                                    "strongest on the victim itself (cross-fitted, no suspect data)")
    di_candidates: tuple[int, ...] = (1, 3, 10)
    di_crossfit: bool = Field(default=True, description="also fit on B and score A (every private image scored once)")
    di_alternative: Literal["victim", "greater", "less", "two-sided"] = Field(
        default="victim", description="side of the DI t-test; victim: the side the victim's own members fall on")
    di_margin: float = Field(default=0.1, ge=0, lt=1, description=(
        "smallest share of the victim's own membership effect (its Cohen's d on the same rows, measured locally) "
        "that counts as inherited: DI tests H0 'the suspect's effect is at most di_margin x the victim's' instead of "
        "'no effect' (0: the paper's test). Never less conservative than the zero-effect test; 0.1 is the setting "
        "the zoo registered and checked (README, results/zoo_di12*.md)"))
    mi_dims: int = Field(default=16, ge=1)
    seed: int = 0
    methods: tuple[str, ...] = METHODS


@dataclass
class Verdict:
    method: str
    statistic: str
    value: float | None
    p_value: float | None
    verdict: str
    detail: dict = field(default_factory=dict)


@dataclass
class VerifyReport:
    victim: str
    suspect: dict
    config: dict
    rows: list[Verdict]
    overall: str
    overall_rule: str
    queries: dict
    seconds: float
    arrays: dict = field(default_factory=dict, repr=False)  # for plots (log-likelihoods), not serialised

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("arrays")
        return d

    def row(self, method: str) -> Verdict | None:
        return next((r for r in self.rows if r.method == method), None)


_REFERENCE_CACHE: dict[tuple, tuple[Checkpoint, DatasetInferenceResult]] = {}


def _reference_test(ref: Checkpoint, rows_key: tuple, images: Callable[[], tuple[np.ndarray, ...]],
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
    res = dataset_inference(*(extract_features(ref.encoder, x) for x in images()), **di_kwargs)
    if len(_REFERENCE_CACHE) >= 64:
        _REFERENCE_CACHE.clear()
    _REFERENCE_CACHE[key] = (ref, res)
    return res


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def verify(victim: Checkpoint, suspect: Suspect, cfg: VerifyConfig | None = None, victim_name: str = "victim",
           progress: bool = False, references: dict[str, Checkpoint] | None = None) -> VerifyReport:
    """Run the checks of ``cfg.methods`` on ``suspect``.

    ``references``: the defender's own encoders that never saw the private data (e.g. trained on
    public data). When given, dataset inference runs on reference-calibrated scores
    (:func:`defender.stats.calibrate`); the paper's raw test stays in each row's detail.
    """
    cfg = cfg or VerifyConfig()
    references = references or {}
    unknown = set(cfg.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    t0 = time.perf_counter()
    spec = DataSpec.model_validate(victim.config.data["spec"])
    if cfg.di_public_split not in spec.splits or cfg.di_public_split in ("train",):
        raise ValueError(f"di_public_split must be a split the victim was not trained on, got {cfg.di_public_split!r}")
    want = set(cfg.methods)
    sizes = ([cfg.di_fit, cfg.di_private] if want & {"dataset_inference", "dataset_inference_aligned"} else []) + (
        [cfg.wm_n] if want & {"watermark", "watermark_aligned"} else [])
    n_private = max(sizes, default=1)  # only the checks asked for need private images
    pool = victim.config.data.get("train_size")
    try:
        part_a, part_b = private_split_indices(spec, size=n_private, seed=cfg.seed, pool=pool)
    except ValueError as e:  # before any query: say which settings to lower
        n_train = private_set_size(spec, pool)
        raise ValueError(f"the checks need two private parts of {n_private} images (di_fit={cfg.di_fit}, "
                         f"di_private={cfg.di_private}, wm_n={cfg.wm_n}) but the victim's private set has {n_train}: "
                         f"use at most {n_train // 2} each (heist-defend verify --di-fit/--di-private/--wm-n)") from e
    train = load_split(spec, "train", progress=progress).images
    public = load_split(spec, "public", progress=progress).images
    if cfg.align_n > len(public) and want & {"watermark_aligned", "dataset_inference_aligned", "similarity"}:
        raise ValueError(f"align_n={cfg.align_n} but the public split has {len(public)} images")
    rows: list[Verdict] = []
    arrays: dict = {}
    need: dict[str, int] = {}
    wm_spec = victim.config.watermark
    has_wm = victim.watermark is not None and wm_spec is not None
    venc = lambda x: extract_features(victim.encoder, x)  # noqa: E731 - the victim is local
    n_vpub = min(len(public), max(cfg.align_n, cfg.di_public))
    v_public = functools.cache(lambda: venc(public[:n_vpub]))  # the victim's answers on public images, encoded once

    # public queries: alignment + similarity
    align = None
    raw_cosine = None
    if want & {"watermark", "watermark_aligned", "dataset_inference_aligned", "similarity"}:
        pub = public[: cfg.align_n]
        s_pub = suspect.embed(pub, "public queries")
        v_pub = v_public()[: cfg.align_n]
        need["public (alignment, similarity)"] = len(pub)
        if s_pub.shape[1] == v_pub.shape[1]:  # are the answers in the victim's coordinates? (the raw watermark's premise)
            raw_cosine = float((standardise_rows(s_pub) * standardise_rows(v_pub)).sum(1).mean())
        if want & {"watermark_aligned", "dataset_inference_aligned"}:
            align = fit_alignment(s_pub, v_pub, ridge=cfg.align_ridge, seed=cfg.seed)
        if "similarity" in want:
            r_pub = extract_features(random_init_like(victim.config, cfg.seed + 12345).encoder, pub)
            sim = similarity(v_pub, s_pub, r_pub, mi_dims=cfg.mi_dims)
            rows.append(Verdict("similarity", "MI normalised", _finite(sim.mi_normalised), None, "n/a", sim.as_dict()))

    # watermark, raw and aligned
    if want & {"watermark", "watermark_aligned"}:
        if not has_wm:
            for m in ("watermark", "watermark_aligned"):
                if m in want:
                    rows.append(Verdict(m, "accuracy", None, None, "n/a", {"reason": "the victim checkpoint has no watermark predictor"}))
        else:
            imgs, labels = rotated_copies(train[part_b[: cfg.wm_n]], wm_spec)
            s_rot = suspect.embed(imgs, "rotated private queries")
            need["rotated private (watermark)"] = len(imgs)
            variants = []
            if "watermark" in want:
                if s_rot.shape[1] == victim.config.representation_dim:
                    variants.append(("watermark", s_rot, {}))
                else:
                    rows.append(Verdict("watermark", "accuracy", None, None, "n/a",
                                        {"reason": f"suspect answers are {s_rot.shape[1]}-d, the victim's predictor reads "
                                                   f"{victim.config.representation_dim}-d; see watermark_aligned"}))
            if "watermark_aligned" in want and align is not None:
                variants.append(("watermark_aligned", align.apply(s_rot), {"alignment": align.summary()}))
            for name, reps, extra in variants:
                correct = predict(victim.watermark, reps) == labels
                res = watermark_test(correct)
                verdict = "stolen" if (res.p_ttest < cfg.alpha and res.accuracy >= 0.5 + cfg.wm_margin) else "independent"
                detail = {**res.as_dict(), "t_statistic": _finite(res.t_statistic), **extra}
                p_row = _finite(res.p_ttest)
                if name == "watermark":
                    detail["raw_cosine"] = raw_cosine
                    if raw_cosine is None or raw_cosine < cfg.wm_raw_min_cosine:  # a foreign space: not evidence
                        verdict, p_row = "n/a", None
                        cos = "unknown" if raw_cosine is None else f"{raw_cosine:.3f}"
                        detail["reason"] = (f"the suspect does not answer in the victim's coordinates (mean cosine {cos} "
                                            f"< {cfg.wm_raw_min_cosine} on public queries): the predictor reads a "
                                            "foreign space; see watermark_aligned")
                rows.append(Verdict(name, "accuracy", res.accuracy, p_row, verdict, detail))
                arrays[f"{name}_accuracy"] = res.accuracy
                arrays[f"{name}_n"] = res.n

    # dataset inference, on the suspect's answers and on them mapped into the victim's space
    if want & {"dataset_inference", "dataset_inference_aligned"}:
        pub_split = load_split(spec, cfg.di_public_split, progress=progress).images
        if cfg.di_public > len(pub_split):
            raise ValueError(f"di_public={cfg.di_public} but the {cfg.di_public_split} split has {len(pub_split)} images")
        ra = suspect.embed(train[part_a[: cfg.di_fit]], "private part A")
        rb = suspect.embed(train[part_b[: cfg.di_private]], "private part B")
        rp = suspect.embed(pub_split[: cfg.di_public], "public data")
        need["private A + B, public (dataset inference)"] = cfg.di_fit + cfg.di_private + cfg.di_public
        alternative, components, side = cfg.di_alternative, cfg.di_components, {}
        if alternative == "victim" or components == "auto":
            # calibrated on the victim alone: its part A (cross-fitted) vs public-split images, never the test split
            va, vp = venc(train[part_a[: cfg.di_fit]]), v_public()[: cfg.di_public]
            ks = cfg.di_candidates if components == "auto" else (components,)
            cal = {k: membership_direction(va, vp, components=k, seed=cfg.seed) for k in ks}
            components = max(ks, key=lambda k: abs(cal[k].t_statistic))
            if alternative == "victim":
                alternative = cal[components].alternative
            side = {"calibration_on_victim": {"components": components,
                                              "t_by_components": {str(k): round(c.t_statistic, 3) for k, c in cal.items()},
                                              "alternative": alternative}}
        variants = [("dataset_inference", (ra, rb, rp), {})] if "dataset_inference" in want else []
        if "dataset_inference_aligned" in want and align is not None:
            # the map was fitted on public-split answers only: B and the test split stay exchangeable
            variants.append(("dataset_inference_aligned", tuple(align.apply(x) for x in (ra, rb, rp)),
                             {"alignment": align.summary()}))
        # local encoders of the defender: scored on the same rows, no suspect queries
        rows_key = (spec.digest(), cfg.di_public_split, cfg.di_public,
                    part_a[: cfg.di_fit].tobytes(), part_b[: cfg.di_private].tobytes())
        di_rows = lambda: (train[part_a[: cfg.di_fit]], train[part_b[: cfg.di_private]], pub_split[: cfg.di_public])  # noqa: E731
        di_kwargs = dict(components=components, alpha=cfg.alpha, seed=cfg.seed, alternative=alternative,
                         crossfit=cfg.di_crossfit)
        refs = [_reference_test(ref, rows_key, di_rows, **di_kwargs) for ref in references.values()]
        if refs:
            side["reference_tests"] = {n: {"t": round(r.t_statistic, 3), "p": r.p_value} for n, r in zip(references, refs, strict=True)}
        min_effect = 0.0
        if cfg.di_margin > 0:
            # the victim's own effect on the same rows and settings (local, no queries): the yardstick of the margin
            own = calibrate(_reference_test(victim, rows_key, di_rows, **di_kwargs), refs)
            victim_effect = {"less": -own.effect, "greater": own.effect}.get(alternative, abs(own.effect))
            min_effect = cfg.di_margin * max(victim_effect, 0.0)
            side["margin"] = {"di_margin": cfg.di_margin, "victim_effect": round(victim_effect, 4),
                              "victim_t": round(own.t_statistic, 3), "min_effect": round(min_effect, 4)}
        for name, (a_, b_, p_), extra in variants:
            di = calibrate(dataset_inference(a_, b_, p_, **di_kwargs), refs)
            if min_effect > 0:
                di = with_min_effect(di, min_effect)
            label = (f"t (Welch, {alternative}{', reference-calibrated' if refs else ''}"
                     f"{f', H0 effect <= {min_effect:.3g}' if min_effect > 0 else ''})")
            rows.append(Verdict(name, label, _finite(di.t_statistic), _finite(di.p_value), di.verdict,
                                {**di.as_dict(), **side, **extra}))
            if name == "dataset_inference" or "ll_private" not in arrays:
                arrays["ll_private"], arrays["ll_public"] = di.ll_private, di.ll_public

    decisive = [r for r in rows if r.method in DECISIVE and r.p_value is not None]
    k = max(1, len(decisive))

    def material(r: Verdict) -> bool:  # a watermark also needs its accuracy margin
        return not r.method.startswith("watermark") or (r.value is not None and r.value >= 0.5 + cfg.wm_margin)

    overall = "stolen" if any(r.p_value < cfg.alpha / k and material(r) for r in decisive) else "independent"
    rule = (f"stolen when any of {[r.method for r in decisive]} has p < alpha/{k} = {cfg.alpha / k:.2g} "
            f"(Bonferroni over the decisive checks; a watermark also needs accuracy >= {0.5 + cfg.wm_margin:.2f}); "
            f"similarity is reported, not decided on")
    queries = {"needed": need, "needed_total": int(sum(need.values())), "sent": suspect.queries, "requests": suspect.requests}
    return VerifyReport(victim=victim_name, suspect=suspect.describe(), config=cfg.model_dump(), rows=rows, overall=overall,
                        overall_rule=rule, queries=queries, seconds=round(time.perf_counter() - t0, 2), arrays=arrays)
