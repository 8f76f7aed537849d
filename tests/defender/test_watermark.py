"""The watermark test: a suspect's accuracy on the watermark task against chance."""

from __future__ import annotations

import numpy as np
import pytest

from defender.watermark import watermark_test


def test_watermark_test_against_chance():
    rng = np.random.default_rng(0)
    r = watermark_test(rng.random(2000) < 0.6)
    assert r.p_ttest < 1e-6 and r.p_binomial < 1e-6 and r.effect > 0.07
    r = watermark_test(rng.random(2000) < 0.5)
    assert r.p_binomial > 0.001
    with pytest.raises(ValueError):
        watermark_test(np.array([], dtype=bool))
