"""Rotation-watermark verification: does the suspect carry the victim's rotation skill?

Rotated private images go through the suspect; the victim's own predictor reads the suspect's
representations. An independent encoder scores near chance (50%); a copy inherits the skill.
Statistics: one-sided exact binomial test of accuracy > 1/2, and a one-sample t-test of the
per-image correctness against 1/2 (the paper's test), with effect size (accuracy - 1/2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class WatermarkResult:
    accuracy: float
    n: int
    effect: float
    p_binomial: float
    t_statistic: float
    p_ttest: float

    def as_dict(self) -> dict:
        return asdict(self)


def watermark_test(correct: np.ndarray, chance: float = 0.5) -> WatermarkResult:
    """Test per-query correctness (bool array) against ``chance``, one-sided (greater)."""
    c = np.asarray(correct, dtype=bool)
    if c.size == 0:
        raise ValueError("no watermark queries to test")
    k, n = int(c.sum()), int(c.size)
    p_bin = float(stats.binomtest(k, n, chance, alternative="greater").pvalue)
    x = c.astype(np.float64)
    if x.std() == 0:  # all right or all wrong: the t-test is undefined, the binomial test is not
        t, p_t = (np.inf, 0.0) if x.mean() > chance else (-np.inf, 1.0)
    else:
        res = stats.ttest_1samp(x, chance, alternative="greater")
        t, p_t = float(res.statistic), float(res.pvalue)
    return WatermarkResult(accuracy=k / n, n=n, effect=k / n - chance, p_binomial=p_bin, t_statistic=t, p_ttest=p_t)
