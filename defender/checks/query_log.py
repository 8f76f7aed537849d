"""Query-log inference: does the suspect match the victim better on the images one account bought
than on fresh images? A copy was trained on exactly those images, labelled by the victim; an
encoder that never saw the victim's answers to them has no reason to.

The log is the account's query log kept by the server (tier setting ``query_log``; ``GET
/v1/admin/accounts/{id}/queries``, saved to a file for ``heist-defend verify --query-log FILE``).
The suspect answers ``qlog_n`` logged images and as many held-out images (the last of
``di_public_split``); nothing else is queried. The map from the suspect's answers to the victim's
is fitted on logged images only, cross-fitted over two folds, and each image's error is
``|mapped - victim| / |victim|`` under the map of the fold it was not fitted on: logged and
held-out images are both out of sample, so for an encoder that never saw the victim's answers
their errors are alike (the map undoes an obfuscation all the same). A copy fits the victim on the
logged images, so there the map is close to exact and its error small; on the held-out images it
leaves the copy's generalisation error. (A map fitted on the public images instead would carry
corrections for the copy's errors there into the logged images.) The test is a one-sided
Mann-Whitney U: the logged images' errors are smaller. The effect is the ratio of the median
errors, logged / held-out.

The held-out images should come from the distribution the account queried: if they differ (a
thief querying sketches, a defender holding photos), an encoder's errors can differ between the
two sets without any copying. References guard against that: each of the defender's own encoders
(``--di-reference``, ``--wm-reference``) is measured the same way, locally, and a row calls the
suspect stolen only when its ratio is below every reference's by ``qlog_margin`` (below
1 - ``qlog_margin`` without references).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu

from defender.checks.base import Check, Verdict, finite
from defender.checks.context import Context
from defender.config import VerifyConfig
from defender.stats import fit_alignment
from shared.data.synthetic import load_split

MIN_IMAGES = 20  # fewer logged images: n/a


def relative_errors(aligned: np.ndarray, victim: np.ndarray) -> np.ndarray:
    """Per image: |aligned - victim| / |victim| (pure)."""
    return np.linalg.norm(aligned - victim, axis=1) / (np.linalg.norm(victim, axis=1) + 1e-12)


def log_test(err_log: np.ndarray, err_held: np.ndarray) -> tuple[float, float]:
    """(ratio of median errors logged / held-out, one-sided Mann-Whitney p: logged errors smaller)."""
    ratio = float(np.median(err_log) / (np.median(err_held) + 1e-12))
    return ratio, float(mannwhitneyu(err_log, err_held, alternative="less").pvalue)


def crossfit_errors(s_log: np.ndarray, v_log: np.ndarray, s_held: np.ndarray, v_held: np.ndarray, ridge: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image's relative error under a suspect -> victim map fitted on the logged images of the
    other fold (two folds; held-out images split alike): every error is out of sample."""
    rng = np.random.default_rng(seed)
    lf, hf = rng.permutation(len(s_log)) % 2, rng.permutation(len(s_held)) % 2
    err_log, err_held = np.empty(len(s_log)), np.empty(len(s_held))
    for k in (0, 1):
        fit = fit_alignment(s_log[lf != k], v_log[lf != k], ridge=ridge, holdout=0.0)
        err_log[lf == k] = relative_errors(fit.apply(s_log[lf == k]), v_log[lf == k])
        err_held[hf == k] = relative_errors(fit.apply(s_held[hf == k]), v_held[hf == k])
    return err_log, err_held


class QueryLogCheck(Check):
    name = "query_log"
    needs: frozenset[str] = frozenset()  # its own queries: the logged and the held-out images

    def run(self, ctx: Context) -> list[Verdict]:
        cfg = ctx.cfg
        if ctx.query_log is None:
            return [Verdict(self.name, "median error ratio", None, None, "n/a",
                            {"reason": "no query log (heist-defend verify --query-log FILE)"})]
        held_pool = load_split(ctx.spec, cfg.di_public_split, progress=ctx.progress).images
        n = min(len(ctx.query_log), cfg.qlog_n, len(held_pool))
        if n < MIN_IMAGES:
            return [Verdict(self.name, "median error ratio", None, None, "n/a",
                            {"reason": f"{len(ctx.query_log)} logged images, at least {MIN_IMAGES} needed"})]
        logged, held = ctx.query_log[-n:], held_pool[-n:]
        both = np.concatenate([logged, held])
        answers = ctx.suspect.embed(both, "query log and held-out")
        ctx.need["query log + held-out"] = len(both)
        victim = ctx.encode_victim(both)

        def errors(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return crossfit_errors(a[:n], victim[:n], a[n:], victim[n:], cfg.align_ridge, cfg.seed)

        err_log, err_held = errors(answers)
        ratio, p = log_test(err_log, err_held)
        ref_rows = {}
        for name, ref in {**ctx.references, **ctx.wm_references}.items():  # the same on the defender's encoders, locally
            r_ratio, r_p = log_test(*errors(ctx.encode(ref.encoder, both)))
            ref_rows[name] = {"ratio": round(r_ratio, 4), "p": r_p}
        bar = (min(r["ratio"] for r in ref_rows.values()) if ref_rows else 1.0) - cfg.qlog_margin
        detail = {"n": n, "median_error_logged": float(np.median(err_log)), "median_error_held_out": float(np.median(err_held)),
                  "held_out_split": cfg.di_public_split, "references": ref_rows, "bar": round(bar, 4)}
        row = Verdict(self.name, "median error ratio", finite(ratio), finite(p), "independent", detail)
        row.verdict = "stolen" if p < cfg.alpha and self.material(row, cfg) else "independent"
        return [row]

    def material(self, row: Verdict, cfg: VerifyConfig) -> bool:
        """The logged images' error ratio is below the references' (or 1) by ``qlog_margin``."""
        return row.value is not None and row.value <= row.detail.get("bar", 1.0 - cfg.qlog_margin)
