"""Pure statistics of the ownership checks (numpy/scipy/scikit-learn in, numbers out; no I/O).

- :func:`fit_alignment` / :class:`Alignment`: least squares (small ridge) from the suspect's
  representation space to the victim's, fitted on public queries both answered; undoes
  permutation, padding and affine obfuscation before the victim's watermark predictor is used.
- :func:`dataset_inference`: GMM (diagonal covariance) on L2-normalised representations of
  private part A; log-likelihoods of private part B vs public data; one-sided Welch t-test.
  :func:`membership_direction` learns the side of that test from the victim itself (cross-fitted
  on part A vs other public images), because memorisation can also make members *less* typical.
  :func:`calibrate` runs that test on scores regressed on a reference encoder's (difficulty
  calibration: what the suspect's density says beyond how typical an image is anyway).
  :func:`with_min_effect` tests the same scores against a smallest effect of interest instead of
  "no effect" (verify sets it to a share of the victim's own effect).
- :func:`similarity`: l2 and cosine between answers to the same inputs (rows standardised then
  L2-normalised) and mutual information from the Kozachenko-Leonenko 1-NN entropy estimator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy import special, stats


def _check(name: str, x: np.ndarray, min_rows: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d (N, D) array, got shape {x.shape}")
    if len(x) < min_rows:
        raise ValueError(f"{name}: need at least {min_rows} rows, got {len(x)}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return x


# ---- alignment ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alignment:
    """y_victim ~= x_suspect @ weight + bias."""

    weight: np.ndarray
    bias: np.ndarray
    r2_fit: float          # variance of the victim's answers explained, on the fitting queries
    r2_holdout: float      # the same on held-out public queries (nan when none were held out)
    n_fit: int
    ridge: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = _check("suspect representations", x, min_rows=1)
        if x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"alignment was fitted on {self.weight.shape[0]}-d suspect answers, got {x.shape[1]}-d")
        return (x @ self.weight + self.bias).astype(np.float32)

    def summary(self) -> dict:
        return {"r2_fit": self.r2_fit, "r2_holdout": self.r2_holdout, "n_fit": self.n_fit, "ridge": self.ridge,
                "suspect_dim": int(self.weight.shape[0]), "victim_dim": int(self.weight.shape[1])}


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Share of the total variance of ``y`` (all dimensions pooled) explained by ``pred``."""
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean(0)) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def fit_alignment(suspect: np.ndarray, victim: np.ndarray, ridge: float = 1e-3, holdout: float = 0.2, seed: int = 0) -> Alignment:
    """Least squares (ridge relative to the mean eigenvalue) from suspect answers to victim answers.

    ``holdout`` of the rows are kept aside to report an honest R^2, then the map is refitted on all rows.
    """
    x, y = _check("suspect answers", suspect, 3), _check("victim answers", victim, 3)
    if len(x) != len(y):
        raise ValueError(f"alignment needs answers to the same inputs: {len(x)} suspect rows vs {len(y)} victim rows")

    def solve(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mx, my = xs.mean(0), ys.mean(0)
        xc, yc = xs - mx, ys - my
        gram = xc.T @ xc
        lam = ridge * (np.trace(gram) / gram.shape[0] + 1e-12)
        w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)
        return w, my - mx @ w

    r2_hold = float("nan")
    n_hold = int(len(x) * holdout)
    if n_hold >= 2 and len(x) - n_hold >= 3:
        perm = np.random.default_rng(seed).permutation(len(x))
        hold, fit = perm[:n_hold], perm[n_hold:]
        w, b = solve(x[fit], y[fit])
        r2_hold = r2_score(y[hold], x[hold] @ w + b)
    w, b = solve(x, y)
    return Alignment(weight=w.astype(np.float32), bias=b.astype(np.float32), r2_fit=r2_score(y, x @ w + b),
                     r2_holdout=r2_hold, n_fit=len(x), ridge=ridge)


# ---- dataset inference --------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetInferenceResult:
    t_statistic: float
    p_value: float
    mean_ll_private: float     # mean log-likelihood of private part B
    mean_ll_public: float      # mean log-likelihood of the public data
    effect: float              # mean difference / pooled standard deviation (Cohen's d)
    n_fit: int                 # private part A
    n_private: int             # private images scored (part B; A + B when cross-fitted)
    n_public: int
    components: int
    alpha: float
    crossfit: bool             # parts swapped too (A and B both scored)
    alternative: str           # side of the test: "greater" (B more likely than public), "less", "two-sided"
    verdict: str               # "stolen" (p < alpha) or "independent"
    ll_private: np.ndarray = field(repr=False, compare=False)
    ll_public: np.ndarray = field(repr=False, compare=False)
    references: int = 0        # reference encoders the scores were calibrated against (0: the paper's raw test)
    reference_r2: float | None = None       # share of the raw scores' variance the references explain
    t_uncalibrated: float | None = None     # the raw test, when calibrated
    p_uncalibrated: float | None = None
    min_effect: float = 0.0                 # smallest effect of interest (Cohen's d) the test is against; 0: "no effect"
    t_zero_effect: float | None = None      # the same scores' test against zero effect, when min_effect > 0
    p_zero_effect: float | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("ll_private")
        d.pop("ll_public")
        return d


def l2_normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if (n == 0).any():
        raise ValueError("a representation is all zeros: cannot L2-normalise it")
    return x / n


ALTERNATIVES = ("greater", "less", "two-sided")


def _gmm_scores(fit: np.ndarray, *score: np.ndarray, components: int, seed: int, reg_covar: float) -> list[np.ndarray]:
    if components < 1 or components > len(fit):
        raise ValueError(f"components must be in 1..{len(fit)} (the size of the fitted part), got {components}")
    from sklearn.mixture import GaussianMixture  # a few seconds of import: only processes that fit a GMM pay them

    gmm = GaussianMixture(n_components=components, covariance_type="diag", reg_covar=reg_covar, random_state=seed, max_iter=200)
    gmm.fit(l2_normalise(fit))
    return [gmm.score_samples(l2_normalise(x)) for x in score]


def _welch(ll_b: np.ndarray, ll_p: np.ndarray, alternative: str, min_effect: float = 0.0) -> tuple[float, float, float]:
    """(t, p, Cohen's d) of a Welch t-test; both samples constant: no evidence (t 0, p 1).

    ``min_effect`` > 0 tests against a smallest effect of interest instead of zero: the null is
    "the gap is at most ``min_effect`` pooled standard deviations on the alternative's side", so
    the gap is shifted by that much towards the null before the usual one-sided test.
    """
    vb, vp = ll_b.var(ddof=1) / len(ll_b), ll_p.var(ddof=1) / len(ll_p)
    pooled = math.sqrt((ll_b.var(ddof=1) + ll_p.var(ddof=1)) / 2) or float("nan")
    diff = float(ll_b.mean() - ll_p.mean())
    d = diff / pooled
    if min_effect < 0:
        raise ValueError(f"min_effect must be >= 0, got {min_effect}")
    if min_effect > 0 and alternative == "two-sided":
        raise ValueError("a smallest effect of interest needs a one-sided test (alternative 'greater' or 'less')")
    se = math.sqrt(vb + vp)
    if not (se > 0 and math.isfinite(se)):
        return 0.0, 1.0, d
    shift = {"greater": -1.0, "less": 1.0}.get(alternative, 0.0) * min_effect * pooled
    t = (diff + shift) / se
    df = (vb + vp) ** 2 / (vb**2 / (len(ll_b) - 1) + vp**2 / (len(ll_p) - 1))
    dist = stats.t(df)
    pv = {"greater": dist.sf(t), "less": dist.cdf(t)}.get(alternative, 2 * dist.sf(abs(t)))
    return float(t), float(pv), d


def dataset_inference(part_a: np.ndarray, part_b: np.ndarray, public: np.ndarray, components: int = 10,
                      alpha: float = 0.01, seed: int = 0, reg_covar: float = 1e-6,
                      alternative: str = "greater", crossfit: bool = False,
                      min_effect: float = 0.0) -> DatasetInferenceResult:
    """Does the suspect's density tell the victim's private data from public data?

    A GMM (diagonal covariance) is fitted on the L2-normalised representations of private part A;
    the one-sided Welch t-test asks whether the mean log-likelihood of private part B exceeds
    (``alternative="greater"``, the paper's side) or falls below (``"less"``) that of public data.
    Under independence (no use of the private data) B and public are exchangeable, so either side
    chosen before looking at B has a uniform p-value.

    ``crossfit`` also swaps the parts: a GMM fitted on A scores B and the even public rows, one
    fitted on B scores A and the odd public rows; both folds' scores are pooled. Every private image
    is scored (by a GMM that never saw it), so the test has twice the members for the same queries.

    ``min_effect`` (Cohen's d, >= 0) tests against a smallest effect of interest: the null becomes
    "members and public data differ by at most ``min_effect`` pooled standard deviations on the
    chosen side". Every p-value is then at least the zero-effect one, so the test stays valid for
    an independent suspect (exactly: no effect) and only gets more conservative; the zero-effect
    test is kept in ``t_zero_effect`` / ``p_zero_effect``.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    a, b, p = _check("private part A", part_a), _check("private part B", part_b), _check("public data", public)
    if not (a.shape[1] == b.shape[1] == p.shape[1]):
        raise ValueError(f"dimensions differ: A {a.shape[1]}, B {b.shape[1]}, public {p.shape[1]}")
    ll_b, ll_p = _gmm_scores(a, b, p[0::2] if crossfit else p, components=components, seed=seed, reg_covar=reg_covar)
    if crossfit:
        ll_a, ll_p2 = _gmm_scores(b, a, p[1::2], components=components, seed=seed, reg_covar=reg_covar)
        ll_b, ll_p = np.concatenate([ll_b, ll_a]), np.concatenate([ll_p, ll_p2])
    return _tested(DatasetInferenceResult(
        t_statistic=0.0, p_value=1.0, mean_ll_private=float(ll_b.mean()), mean_ll_public=float(ll_p.mean()),
        effect=0.0, n_fit=len(a), n_private=len(ll_b), n_public=len(p),
        components=components, alpha=alpha, crossfit=crossfit, alternative=alternative, verdict="independent",
        ll_private=ll_b, ll_public=ll_p, min_effect=min_effect))


def _tested(di: DatasetInferenceResult) -> DatasetInferenceResult:
    """``di`` with its test (t, p, effect, verdict) computed from its scores and settings."""
    t, pv, d = _welch(di.ll_private, di.ll_public, di.alternative, di.min_effect)
    zero = {}
    if di.min_effect > 0:
        t0, p0, _ = _welch(di.ll_private, di.ll_public, di.alternative)
        zero = {"t_zero_effect": t0, "p_zero_effect": p0}
    return replace(di, t_statistic=t, p_value=pv, effect=d, verdict="stolen" if pv < di.alpha else "independent",
                   mean_ll_private=float(di.ll_private.mean()), mean_ll_public=float(di.ll_public.mean()), **zero)


def with_min_effect(di: DatasetInferenceResult, min_effect: float) -> DatasetInferenceResult:
    """The same scores tested against another smallest effect of interest (see :func:`dataset_inference`)."""
    return _tested(replace(di, min_effect=min_effect, t_zero_effect=None, p_zero_effect=None))


def calibrate(di: DatasetInferenceResult, references: list[DatasetInferenceResult]) -> DatasetInferenceResult:
    """Dataset inference on reference-calibrated scores (difficulty calibration).

    Much of a log-likelihood's spread is the image itself: a plain image is typical in every
    encoder, a cluttered one atypical. ``references`` are the same test run on encoders that never
    saw the private data (same parts, components and cross-fitting, so rows line up). Each image's
    suspect score is regressed on its reference scores (ordinary least squares over private and
    public rows pooled, blind to which is which) and the Welch test is run on the residuals: what is
    left is what the suspect's density says about an image beyond how typical it is anyway.

    Under independence the pooled fit is symmetric in the labels, so private and public residuals
    stay exchangeable and the p-value keeps its level (tests/defender/test_stats.py checks the
    false-positive rate). The raw test is kept in ``t_uncalibrated`` / ``p_uncalibrated``.
    """
    if not references:
        return di
    nb = len(di.ll_private)
    y = np.concatenate([di.ll_private, di.ll_public])
    cols = [np.ones_like(y)]
    for r in references:
        if len(r.ll_private) != nb or len(r.ll_public) != len(di.ll_public) or r.crossfit != di.crossfit:
            raise ValueError("a reference must be scored on the same private and public rows as the suspect "
                             f"({nb} + {len(di.ll_public)}), got {len(r.ll_private)} + {len(r.ll_public)}")
        cols.append(np.concatenate([r.ll_private, r.ll_public]))
    x = np.column_stack(cols)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    r2 = r2_score(y[:, None], (x @ beta)[:, None])
    return _tested(replace(di, references=len(references), reference_r2=r2, t_uncalibrated=di.t_statistic,
                           p_uncalibrated=di.p_value, ll_private=resid[:nb], ll_public=resid[nb:]))


@dataclass(frozen=True)
class MembershipDirection:
    alternative: str      # "greater" or "less": the side the victim's own members fall on
    t_statistic: float    # victim: members (cross-fitted) vs other public images
    n_members: int
    n_public: int

    def as_dict(self) -> dict:
        return asdict(self)


def membership_direction(victim_part_a: np.ndarray, victim_public: np.ndarray, components: int = 10, seed: int = 0,
                         reg_covar: float = 1e-6) -> MembershipDirection:
    """On which side of public data do the victim's own training images fall?

    The paper's test assumes members are *more* likely under the GMM. A contrastive encoder that
    memorised its training images can instead spread them out (less likely than public images).
    The defender measures the side on its own victim, with data disjoint from the test it then
    runs on suspects: part A is split in two halves, a GMM fitted on each half scores the other
    half and half of ``victim_public`` (images outside the test's public set); the sign of the
    Welch t-statistic of members vs public picks ``greater`` or ``less``.
    """
    a, pub = _check("victim part A", victim_part_a, 4), _check("victim public", victim_public, 4)
    if a.shape[1] != pub.shape[1]:
        raise ValueError(f"dimensions differ: part A {a.shape[1]}, public {pub.shape[1]}")
    rng = np.random.default_rng([seed, 0xD1])
    ia, ip = rng.permutation(len(a)), rng.permutation(len(pub))
    halves_a, halves_p = (ia[: len(a) // 2], ia[len(a) // 2:]), (ip[: len(pub) // 2], ip[len(pub) // 2:])
    members, public = [], []
    for k in (0, 1):
        ll_m, ll_p = _gmm_scores(a[halves_a[k]], a[halves_a[1 - k]], pub[halves_p[k]],
                                 components=min(components, len(halves_a[k])), seed=seed, reg_covar=reg_covar)
        members.append(ll_m)
        public.append(ll_p)
    t = float(stats.ttest_ind(np.concatenate(members), np.concatenate(public), equal_var=False).statistic)
    t = t if math.isfinite(t) else 0.0
    return MembershipDirection("greater" if t >= 0 else "less", t, len(a), len(pub))


# ---- similarity and mutual information ----------------------------------------------------------

def standardise_rows(x: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation, then L2-normalised."""
    x = _check("representations", x, 1)
    z = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-12)
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)


def knn_entropy(x: np.ndarray) -> float:
    """Kozachenko-Leonenko differential entropy (nats) with the nearest neighbour (k = 1).

    H = psi(N) - psi(1) + log V_d + (d / N) * sum_i log eps_i, eps_i the distance of row i to its
    nearest other row, V_d the volume of the unit d-ball.
    """
    x = _check("entropy input", x, 3)
    n, d = x.shape
    sq = (x * x).sum(1)
    dist2 = sq[:, None] + sq[None, :] - 2 * x @ x.T
    np.fill_diagonal(dist2, np.inf)
    eps = np.sqrt(np.maximum(dist2.min(1), 0.0))
    eps = np.maximum(eps, 1e-10)  # duplicates: a tiny floor instead of log(0)
    log_vd = (d / 2) * math.log(math.pi) - special.gammaln(d / 2 + 1)
    return float(special.digamma(n) - special.digamma(1) + log_vd + d * np.log(eps).mean())


def whiten(x: np.ndarray, dims: int | None = None) -> np.ndarray:
    """PCA-whiten (centred, unit variance per principal component), keeping ``dims`` components.

    With all components kept this makes distances invariant to any invertible affine map of x
    (whitened copies differ by a rotation), so MI survives permutation/affine obfuscation; padding
    dimensions are kept out by the truncation when they carry less variance.
    """
    x = _check("representations", x, 3)
    xc = x - x.mean(0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    keep = s > s[0] * 1e-6
    k = int(keep.sum()) if dims is None else min(int(keep.sum()), dims)
    return u[:, :k] * math.sqrt(len(x) - 1)


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """MI = H(X) + H(Y) - H([X, Y]) with the 1-NN entropy estimator (nats)."""
    if len(x) != len(y):
        raise ValueError(f"MI needs paired rows: {len(x)} vs {len(y)}")
    return knn_entropy(x) + knn_entropy(y) - knn_entropy(np.concatenate([x, y], axis=1))


@dataclass(frozen=True)
class SimilarityResult:
    l2: float | None           # mean distance of standardised rows (None when the dimensions differ)
    cosine: float | None       # mean cosine of standardised rows
    mi: float                  # MI(victim, suspect), nats, on whitened answers
    mi_random: float           # MI(victim, random-init encoder): the floor
    mi_self: float             # MI(victim, victim): the ceiling
    mi_normalised: float       # (mi - mi_random) / (mi_self - mi_random)
    n: int
    mi_dims: int

    def as_dict(self) -> dict:
        return asdict(self)


def similarity(victim: np.ndarray, suspect: np.ndarray, random_init: np.ndarray, mi_dims: int = 16) -> SimilarityResult:
    """Similarity of the suspect's answers to the victim's on the same inputs (rows paired)."""
    v, s, r = _check("victim answers", victim, 3), _check("suspect answers", suspect, 3), _check("random-init answers", random_init, 3)
    if not (len(v) == len(s) == len(r)):
        raise ValueError(f"similarity needs answers to the same inputs: {len(v)}, {len(s)}, {len(r)} rows")
    l2 = cos = None
    if v.shape[1] == s.shape[1]:
        vs, ss = standardise_rows(v), standardise_rows(s)
        l2 = float(np.linalg.norm(vs - ss, axis=1).mean())
        cos = float((vs * ss).sum(1).mean())
    wv, ws, wr = whiten(v, mi_dims), whiten(s, mi_dims), whiten(r, mi_dims)
    mi = mutual_information(wv, ws)
    mi_rand = mutual_information(wv, wr)
    mi_self = mutual_information(wv, wv)
    span = mi_self - mi_rand
    norm = (mi - mi_rand) / span if span > 0 else float("nan")
    return SimilarityResult(l2=l2, cosine=cos, mi=mi, mi_random=mi_rand, mi_self=mi_self, mi_normalised=float(norm),
                            n=len(v), mi_dims=wv.shape[1])
