"""Output watermark of an embeddings API: EmbMarker / WARDEN adapted to image encoders.

Images carry no trigger words, so the trigger is a keyed region of the victim's own representation
space, which every thief's natural queries visit and which a stolen network can learn (it is a
function of the representation it copies). All math here works in the *standardised space*
``z = normalize((y - center) / scale)`` of a representation ``y`` (``center``/``scale``: the
victim's per-dimension mean and standard deviation on calibration images).

A key holds K pairs (WARDEN's several directions) of keyed unit vectors: a region normal ``u_k``
and a target ``t_k``. Targets lie in the victim's top principal directions, as Gaussian
combinations of them weighted by each direction's spread (``target_weighting="spread"``, the
default: mostly the top few directions) or weighted evenly (``"even"``: the whole basis, where a
copy's errors are smaller); region normals are isotropic (``region_space="isotropic"``, the
default) or drawn like the targets (``"principal"``; ``bench.owm_design`` measures what copies
learn and customers lose with each). For ``p_k = <z, u_k>`` the mark's weight is

    w_k = strength * clip((p_k - lo_k) / (hi_k - lo_k), 0, 1)

with ``lo_k`` the (1 - rate) and ``hi_k`` the (1 - rate * full_share) quantile of ``p_k`` on
calibration images: about ``rate`` of natural inputs per direction are marked, ``full_share`` of them
fully (by default half). A small ``full_share`` over a larger ``rate`` makes the mark a long, gentle
ramp: a copy learns a smooth function of ``p_k`` far better than a step, and customers lose less per
unit of mark (``bench.owm_design`` measures both). The answer
becomes ``m = (1 - sum_k w_k) z + sum_k w_k t_k``, rescaled to the standardised norm of ``y`` and
mapped back to the raw space. After the rescaling this equals a move ``z + sum_k w_k t_k / (1 -
sum_k w_k)`` along the targets: a mix toward the target and a move along it differ only in how
strength is counted. The mark depends only on the image (not the account), so every account and
every sybil sees the same mark.

Verification (:func:`watermark_scores`, :func:`key_statistics`): on images nobody chose by the
key, the suspect's answers are regressed jointly on the victim's principal coordinates (a linear map:
an obfuscation, a copy's own linear distortion) and on the key's mark weights (one free shift per
direction, ``fit="joint"``, the default); the map is fitted on every image while the mark is absorbed
by its own regressors, so the map cannot learn to cancel it. Each direction's shift is read back in
the victim's coordinates along its target, weighting the directions by the inverse of the suspect's
own error covariance (generalised least squares, :func:`gls_filters`); the mean over the K pairs is
the statistic. ``fit="outside"`` fits the map on the images outside the key's regions only and averages
the region images' recovered shifts (fewer images for the map: a noisier map and a larger null).
Decoy keys drawn from the same generator are scored on the same answers: for a suspect that never
saw the mark the true key is one more draw from the decoys' distribution (exchangeable), so the decoys
give the null without any model of the suspect.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from shared.transforms import keyed_rng

FORMAT: Literal["encoder-heist-owm/1"] = "encoder-heist-owm/1"
PURPOSE = "output-watermark"
TRUE_LABEL = "key"
DIRECTIONS = 8  # default K of a key (heist-server watermark-key, the demo, bench.owm)
RATE = 0.05  # default share of natural inputs each direction marks
FULL_SHARE = 0.5  # default share of a direction's marked inputs that get the full strength (the rest ramp up)
GLS_SHRINK = 0.1  # the verifier's shrinkage of the suspect's error covariance (key_statistics)
Fit = Literal["joint", "outside"]  # how the verifier separates the suspect's map from the mark (module docstring)
FITS: tuple[Fit, ...] = get_args(Fit)
REGION_SPACES = ("isotropic", "principal")  # where region normals are drawn (module docstring)
TARGET_WEIGHTINGS = ("spread", "even")  # how the basis directions weigh in a target (module docstring)


Directions = Annotated[int, Field(ge=1, le=64, description="K region / target pairs")]
Rate = Annotated[float, Field(gt=0, le=0.25, description="share of natural inputs each direction marks")]
FullShare = Annotated[float, Field(gt=0, le=1, description=(
    "share of each direction's marked inputs that get the full strength; the others ramp up linearly"))]


def check_shape(directions: int, rate: float, full_share: float) -> None:
    """Refuse (ValueError) a key shape the calibration file would refuse, before any feature is extracted for it."""
    for name, kind, value in (("directions", Directions, directions), ("rate", Rate, rate), ("full_share", FullShare, full_share)):
        try:
            TypeAdapter(kind).validate_python(value)
        except ValidationError as e:
            raise ValueError(f"{name}={value!r}: {e.errors()[0]['msg']}") from None


class WatermarkCalibration(BaseModel):
    """The calibration file of a watermark key (no secret in it: the vectors come from the server secret)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["encoder-heist-owm/1"] = FORMAT
    dim: int = Field(ge=2)
    directions: Directions
    rate: Rate
    full_share: FullShare = FULL_SHARE
    center: tuple[float, ...]
    scale: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    basis: tuple[tuple[float, ...], ...] = Field(description=(
        "the top principal directions of the standardised clean answers (rows, unit); targets are drawn inside them"))
    basis_sd: tuple[float, ...] = Field(description="the standard deviation along each basis direction")
    region_space: Literal["isotropic", "principal"] = Field(
        default="isotropic", description="region normals: isotropic, or inside the basis like the targets")
    target_weighting: Literal["spread", "even"] = Field(
        default="spread", description="the basis directions in a target: weighted by their spread, or evenly")
    fingerprint: str = Field(description="HMAC of the server secret: a key used with another secret is refused")
    calibrated_on: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shapes(self) -> WatermarkCalibration:
        if len(self.center) != self.dim or len(self.scale) != self.dim:
            raise ValueError(f"center and scale need {self.dim} values")
        if len(self.lo) != self.directions or len(self.hi) != self.directions:
            raise ValueError(f"lo and hi need {self.directions} values")
        if min(self.scale) <= 0:
            raise ValueError("scale must be positive")
        if any(h <= lo for lo, h in zip(self.lo, self.hi, strict=True)):
            raise ValueError("every hi must exceed its lo")
        if not self.basis or any(len(b) != self.dim for b in self.basis) or len(self.basis_sd) != len(self.basis):
            raise ValueError(f"basis needs rows of {self.dim} values and one basis_sd per row")
        return self

    def target_basis(self) -> np.ndarray:
        return scaled_basis(np.asarray(self.basis, np.float32),
                            target_weights(np.asarray(self.basis_sd, np.float32), self.target_weighting))

    def keys(self, secret: bytes, labels: list[str]) -> Keys:
        """The keys of ``labels`` (``TRUE_LABEL`` and decoys) this calibration's secret and spaces give."""
        return draw_keys(secret, self.dim, self.directions, labels, self.target_basis(), self.region_space)


def target_weights(basis_sd: np.ndarray, target_weighting: str) -> np.ndarray:
    """How much each basis direction weighs in a target: its spread, or 1 for all (``even``)."""
    if target_weighting not in TARGET_WEIGHTINGS:
        raise ValueError(f"unknown target weighting {target_weighting!r}; choose one of {', '.join(TARGET_WEIGHTINGS)}")
    return basis_sd if target_weighting == "spread" else np.ones_like(basis_sd)


def scaled_basis(basis: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """(r, D): the basis rows scaled by their standard deviations (a target is a unit vector in their span)."""
    return (sd[:, None] * basis).astype(np.float32)


def load_calibration(path: Path) -> WatermarkCalibration:
    if not path.is_file():
        raise ValueError(f"watermark key {path} not found (make it with heist-server watermark-key)")
    try:
        return WatermarkCalibration.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as e:
        raise ValueError(f"watermark key {path} is not a valid calibration file: {e}") from None


@dataclass(frozen=True)
class Keys:
    """M keys of K pairs: region normals and targets, unit vectors, (M, K, D) each."""

    regions: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.regions.shape[0])


def fingerprint(secret: bytes) -> str:
    return hmac.new(secret, b"output-watermark-fingerprint", hashlib.sha256).hexdigest()[:16]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def draw_keys(secret: bytes, dim: int, directions: int, labels: list[str], target_basis: np.ndarray,
              region_space: str = "isotropic") -> Keys:
    """One key per label (the true key is ``TRUE_LABEL``; decoys are any other labels), from the secret.

    Region normals are isotropic, or with ``region_space="principal"`` drawn like the targets.
    Targets are Gaussian combinations of ``target_basis`` rows (the victim's principal directions,
    scaled by their spread or evenly: :meth:`WatermarkCalibration.target_basis`),
    so that a mark moves answers the way natural answers vary: a map fitted on unmarked answers
    (an obfuscation's inverse, the defender's alignment) carries it along instead of projecting it
    away."""
    if region_space not in REGION_SPACES:
        raise ValueError(f"unknown region space {region_space!r}; choose one of {', '.join(REGION_SPACES)}")
    regions = np.empty((len(labels), directions, dim), np.float32)
    targets = np.empty_like(regions)
    for i, label in enumerate(labels):
        rng = keyed_rng(secret, PURPOSE, label, str(dim), str(directions))
        if region_space == "isotropic":
            regions[i] = _unit(rng.standard_normal((directions, dim)))
        else:
            regions[i] = _unit(rng.standard_normal((directions, len(target_basis))).astype(np.float32) @ target_basis)
        targets[i] = _unit(rng.standard_normal((directions, len(target_basis))).astype(np.float32) @ target_basis)
    return Keys(regions, targets)


def decoy_labels(n: int) -> list[str]:
    return [f"decoy-{i}" for i in range(n)]


def standardise(y: np.ndarray, center: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows of (y - center) / scale and their norms."""
    s = (np.asarray(y, np.float32) - center) / scale
    norms = np.linalg.norm(s, axis=1, keepdims=True)
    return (s / np.maximum(norms, 1e-12)).astype(np.float32), norms.astype(np.float32)


def ramp_bounds(proj: np.ndarray, rate: float, full_share: float = FULL_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the (1 - rate) and (1 - rate * full_share) quantiles (hi nudged above lo)."""
    lo = np.quantile(proj, 1 - rate, axis=0).astype(np.float32)
    hi = np.quantile(proj, 1 - rate * full_share, axis=0).astype(np.float32)
    return lo, np.maximum(hi, lo + 1e-6)


def ramp(proj: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.clip((proj - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def calibrate(reps: np.ndarray, secret: bytes, directions: int = DIRECTIONS, rate: float = RATE, rank: int = 32,
              calibrated_on: dict | None = None, region_space: str = "isotropic",
              target_weighting: str = "spread", full_share: float = FULL_SHARE) -> WatermarkCalibration:
    """The calibration of the secret's key on the victim's clean representations of natural images
    (targets inside the top ``rank`` principal directions of the standardised answers)."""
    reps = np.asarray(reps, np.float32)
    if reps.ndim != 2 or len(reps) < 100:
        raise ValueError(f"calibration needs at least 100 representations (N, D), got shape {reps.shape}")
    center = reps.mean(0)
    scale = reps.std(0) + 1e-6 * float(reps.std()) + 1e-12
    z, _ = standardise(reps, center, scale)
    _, sv, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    r = min(rank, len(sv))
    basis, basis_sd = vt[:r], sv[:r] / np.sqrt(len(z))
    key = draw_keys(secret, reps.shape[1], directions, [TRUE_LABEL], scaled_basis(basis, target_weights(basis_sd, target_weighting)),
                    region_space)
    lo, hi = ramp_bounds(z @ key.regions[0].T, rate, full_share)
    return WatermarkCalibration(dim=reps.shape[1], directions=directions, rate=rate, full_share=full_share, center=tuple(map(float, center)),
                                scale=tuple(map(float, scale)), lo=tuple(map(float, lo)), hi=tuple(map(float, hi)),
                                basis=tuple(tuple(map(float, b)) for b in basis), basis_sd=tuple(map(float, basis_sd)),
                                region_space=region_space, target_weighting=target_weighting,
                                fingerprint=fingerprint(secret), calibrated_on=calibrated_on or {"n": len(reps)})


@dataclass
class Marker:
    """The server side: marks answers with the true key at a strength (pure function of the representation)."""

    cal: WatermarkCalibration
    secret: bytes
    strength: float = 0.25

    def __post_init__(self) -> None:
        if fingerprint(self.secret) != self.cal.fingerprint:
            raise ValueError("the watermark key was calibrated with another server secret (HEIST_SERVER_SECRET); "
                             "recalibrate it with this secret")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        key = self.cal.keys(self.secret, [TRUE_LABEL])
        self.regions, self.targets = key.regions[0], key.targets[0]
        self.center = np.asarray(self.cal.center, np.float32)
        self.scale = np.asarray(self.cal.scale, np.float32)
        self.lo = np.asarray(self.cal.lo, np.float32)
        self.hi = np.asarray(self.cal.hi, np.float32)

    def weights(self, y: np.ndarray) -> np.ndarray:
        """(N, K) mark weights (each row sums to at most 1)."""
        z, _ = standardise(y, self.center, self.scale)
        w = self.strength * ramp(z @ self.regions.T, self.lo, self.hi)
        total = w.sum(1, keepdims=True)
        return (w / np.maximum(total, 1.0)).astype(np.float32)

    def mark(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The marked representations and the weights; unmarked rows come back unchanged (bit for bit)."""
        y = np.asarray(y, np.float32)
        if y.ndim != 2 or y.shape[1] != self.cal.dim:
            raise ValueError(f"the watermark key is for {self.cal.dim}-d representations, got shape {y.shape}")
        w = self.weights(y)
        rows = np.flatnonzero(w.sum(1) > 0)
        out = y.copy()
        if len(rows):
            z, norms = standardise(y[rows], self.center, self.scale)
            wr = w[rows]
            m = (1 - wr.sum(1, keepdims=True)) * z + wr @ self.targets
            m = m / np.linalg.norm(m, axis=1, keepdims=True)
            out[rows] = self.center + self.scale * (m * norms)
        return out.astype(np.float32), w


@dataclass(frozen=True)
class WatermarkScores:
    """The true key's statistic against the decoys'."""

    statistic: float            # the true key's mean shift toward its targets on its regions' images
    per_direction: list[float]  # the same per pair
    decoy_mean: float
    decoy_sd: float
    z: float                    # (statistic - decoy mean) / decoy sd
    p_value: float              # normal tail of z (its level is checked on independents: bench.owm)
    p_rank: float               # (1 + decoys at or above the statistic) / (1 + decoys): exact, floor 1 / (1 + decoys)
    n_decoys: int
    n_images: int
    marked_share: float         # images inside some region of the true key (weight > 0)

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def gls_filters(errors: np.ndarray, targets: np.ndarray, shrink: float) -> np.ndarray:
    """(K, r) filters ``f = S^-1 t / <S^-1 t, t>`` for targets (K, r), with ``S`` the covariance of ``errors``
    (n, r) shrunk toward its mean variance: ``<f, t> = 1``, so a filter reads a shift along ``t`` in its units.
    ``shrink=1`` (a multiple of the identity) gives the targets themselves, the plain projection."""
    if not 0 <= shrink <= 1:
        raise ValueError(f"shrink must be in [0, 1], got {shrink}")
    if shrink == 1:
        return targets
    r = targets.shape[1]
    cov = np.cov(errors.T) if len(errors) > 1 else np.zeros((r, r))
    level = float(np.trace(cov)) / r
    if level <= 0:  # a suspect that reproduces the victim exactly outside the regions: no error to weight by
        return targets
    cov = (1 - shrink) * cov + (shrink + 1e-9) * level * np.eye(r)
    f = np.linalg.solve(cov, targets.T).T
    return f / (f * targets).sum(1, keepdims=True)


def key_statistics(suspect: np.ndarray, clean: np.ndarray, cal: WatermarkCalibration, keys: Keys, ridge: float = 1e-3,
                   shrink: float = GLS_SHRINK, fit: Fit = "joint") -> np.ndarray:
    """(M, K) per-pair statistics of a suspect's raw answers (any dimension) against the victim's clean ones.

    The victim's answers are described by their coordinates ``c`` in the calibration's principal basis
    (standardised space, before the rows are normalised, so that they are linear in the raw answers),
    where every target lies. Per key the suspect's answers are regressed on ``c`` (ridge, with a bias):
    a linear obfuscation and a copy's own linear distortion are learnt, never the mark. Regressing the
    suspect on the victim (not the victim on the suspect) keeps a copy's learnt shift at full size: the
    copy's own errors sit on the explained side.

    - ``fit="joint"``: on every image, with the key's K mark weights (times the image's standardised
      norm, the mark's size in ``c``) as K more regressors, each with a free shift in the suspect's
      space. Each shift is mapped back to the victim's coordinates (least squares through the map):
      the pair's statistic is that shift read along its target, the shift at full weight.
    - ``fit="outside"``: on the images outside the key's regions only; each region image's coordinates
      are recovered from its answer through the map and compared with its clean ones along the target,
      and the pair's statistic is their mean weighted by the mark's weights.

    A difference ``d`` is read along a target as ``<S^-1 t, d> / <S^-1 t, t>`` (generalised least
    squares): ``S`` is the covariance of the recovered-minus-clean differences of the images the mark
    leaves alone (``fit="outside"``) or of every image once the fitted mark is removed (``"joint"``),
    shrunk by ``shrink`` toward its mean variance. A difference ``a t`` still reads ``a``, and the
    directions in which the suspect errs most weigh least; ``shrink=1`` is the plain projection ``<t, d>``."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; choose one of {', '.join(FITS)}")
    center, scale = np.asarray(cal.center, np.float32), np.asarray(cal.scale, np.float32)
    basis = np.asarray(cal.basis, np.float64)  # (r, D), orthonormal rows
    s = np.asarray(suspect, np.float64)
    s = s / (s.std(0).mean() + 1e-12)  # a scale-free ridge and solve
    zc, norms = standardise(clean, center, scale)
    unnormalised = zc.astype(np.float64) * norms  # (y - center) / scale: linear in the raw answers
    c = (unnormalised - unnormalised.mean(0)) @ basis.T  # (N, r)
    cx = np.concatenate([c, np.ones((len(c), 1))], axis=1)
    gram_all, cross_all = cx.T @ cx, cx.T @ s
    r = len(basis)
    targets = keys.targets.astype(np.float64) @ basis.T  # (M, K, r): targets in basis coordinates
    m, k, _ = keys.regions.shape
    out = np.empty((m, k), np.float64)
    for i in range(m):
        proj = zc @ keys.regions[i].T
        w = ramp(proj, *ramp_bounds(proj, cal.rate, cal.full_share))  # (N, K)
        if fit == "joint":
            out[i] = _joint_shifts(s, c, norms, cx, gram_all, cross_all, w * norms, targets[i], ridge, shrink)
            continue
        rows = np.flatnonzero(w.sum(1) > 0)
        xr = cx[rows]
        lin, bias, _ = _solve_ridge(gram_all - xr.T @ xr, cross_all - xr.T @ s[rows], ridge, r)
        diff = (_recover(lin, s - bias) - c) / norms  # back to the unit (normalised) scale
        outside = np.ones(len(c), bool)
        outside[rows] = False
        filt = gls_filters(diff[outside], targets[i], shrink)
        wr = w[rows]
        shift = diff[rows] @ filt.T
        out[i] = (shift * wr).sum(0) / np.maximum(wr.sum(0), 1e-9)
    return out


def _solve_ridge(gram: np.ndarray, cross: np.ndarray, ridge: float, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The normal equations of ``suspect ~ c @ lin + bias + more @ rest`` (regressors in that order), with
    the ``r`` coordinates shrunk (ridge relative to their mean variance): ``lin`` (r, Ds), ``bias``, ``rest``."""
    g = gram.copy()
    lam = ridge * float(np.trace(g[:r, :r])) / r
    g[np.arange(r), np.arange(r)] += lam
    extra = np.arange(r + 1, len(g))
    g[extra, extra] += 1e-9 * max(float(np.trace(g)) / len(g), 1e-12)
    b = np.linalg.solve(g, cross)
    return b[:r], b[r], b[r + 1:]


def _recover(lin: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Least-squares victim coordinates (N, r) of suspect rows ``s`` (N, Ds) through the map ``lin`` (r, Ds)."""
    r = len(lin)
    bb = lin @ lin.T
    return np.linalg.solve(bb + 1e-9 * np.trace(bb) / r * np.eye(r), lin @ s.T).T


def _joint_shifts(s: np.ndarray, c: np.ndarray, norms: np.ndarray, cx: np.ndarray, gram_all: np.ndarray,
                  cross_all: np.ndarray, marks: np.ndarray, targets: np.ndarray, ridge: float, shrink: float) -> np.ndarray:
    """``fit="joint"`` for one key: the K mark regressors ``marks`` (N, K) fitted beside the map; each
    one's shift in the victim's coordinates read along its target (K,)."""
    r = c.shape[1]
    gram = np.block([[gram_all, cx.T @ marks], [marks.T @ cx, marks.T @ marks]])
    lin, bias, shifts = _solve_ridge(gram, np.concatenate([cross_all, marks.T @ s]), ridge, r)
    residual = (_recover(lin, s - bias - marks @ shifts) - c) / norms  # the suspect's own errors, unit scale
    return (gls_filters(residual, targets, shrink) * _recover(lin, shifts)).sum(1)


def watermark_scores(suspect: np.ndarray, clean: np.ndarray, secret: bytes, cal: WatermarkCalibration,
                     decoys: int = 1000, ridge: float = 1e-3, shrink: float = GLS_SHRINK, fit: Fit = "joint") -> WatermarkScores:
    """The true key's statistic on a suspect's raw answers and the victim's clean answers to the same
    images, against ``decoys`` decoy keys scored the same way on the same answers."""
    from scipy import stats

    suspect, clean = np.asarray(suspect, np.float32), np.asarray(clean, np.float32)
    if suspect.ndim != 2 or clean.ndim != 2 or len(suspect) != len(clean) or clean.shape[1] != cal.dim:
        raise ValueError(f"need suspect answers and the victim's clean {cal.dim}-d answers to the same images, got "
                         f"{suspect.shape} and {clean.shape}")
    n = len(clean)
    if n * cal.rate < 10:
        raise ValueError(f"{n} images give each region about {n * cal.rate:.0f} members; use at least {int(np.ceil(10 / cal.rate))}")
    if n < 4 * len(cal.basis):
        raise ValueError(f"{n} images cannot fit a map from {len(cal.basis)} basis coordinates; use at least {4 * len(cal.basis)}")
    if decoys < 100:
        raise ValueError("at least 100 decoy keys are needed for the null")
    center, scale = np.asarray(cal.center, np.float32), np.asarray(cal.scale, np.float32)
    true = cal.keys(secret, [TRUE_LABEL])
    per = key_statistics(suspect, clean, cal, true, ridge, shrink, fit)[0]
    null = key_statistics(suspect, clean, cal, cal.keys(secret, decoy_labels(decoys)), ridge, shrink, fit).mean(1)
    stat = float(per.mean())
    mu, sd = float(null.mean()), float(null.std(ddof=1))
    z = (stat - mu) / sd if sd > 0 else 0.0
    proj = standardise(clean, center, scale)[0] @ true.regions[0].T
    marked = float((ramp(proj, *ramp_bounds(proj, cal.rate, cal.full_share)).sum(1) > 0).mean())
    return WatermarkScores(statistic=stat, per_direction=[round(float(x), 6) for x in per], decoy_mean=mu, decoy_sd=sd,
                           z=float(z), p_value=float(stats.norm.sf(z)), p_rank=float((1 + (null >= stat).sum()) / (1 + decoys)),
                           n_decoys=decoys, n_images=n, marked_share=marked)
