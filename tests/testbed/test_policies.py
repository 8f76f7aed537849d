"""Defence policies (testbed/policies.py) as server tiers the server's own validation accepts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from server.config import ConfigError, ServerConfig
from server.defences.b4b import sigma_of_coverage
from testbed.policies import POLICIES, b4b_beta, policy_defences, policy_tiers


def _profile(path: Path, coverage: float = 0.12) -> Path:
    path.write_text(json.dumps({"version": 1, "lsh": {"hyperplanes": 12, "hash_sets": 20, "center": None},
                                "similarity": {"space": "projection", "metric": "cosine", "tau": 0.93},
                                "images": [100, 1200], "coverage": [0.02, coverage], "similar_rate": 0.1, "volume": 1200}))
    return path


def test_b4b_beta_prices_the_legitimate_envelope_at_a_thousandth_of_alpha(tmp_path):
    prof = json.loads(_profile(tmp_path / "p.json").read_text())
    for alpha in (0.05, 1.0, 3.0):
        beta = b4b_beta(prof, alpha)
        assert math.isclose(sigma_of_coverage(0.14, alpha=alpha, beta=beta), 1e-3 * alpha, rel_tol=0.02)
        assert sigma_of_coverage(beta, alpha=alpha, beta=beta) == pytest.approx(alpha, rel=1e-5)  # full noise at c = beta
        assert sigma_of_coverage(0.10, alpha=alpha, beta=beta) < 1e-3 * alpha


def test_every_policy_is_a_valid_server_tier(tmp_path):
    prof = _profile(tmp_path / "p.json")
    tiers = policy_tiers(POLICIES, prof, scale=0.2)
    assert set(tiers) == {f"policy-{p}" for p in POLICIES}
    assert tiers["policy-none"]["defences"] == []
    noise = policy_defences("noise", prof, scale=0.2)[0]
    assert noise["name"] == "gaussian_noise" and noise["params"]["sigma"] == pytest.approx(0.1)
    assert [d["name"] for d in tiers["policy-all"]["defences"]] == ["b4b", "gaussian_noise", "similar_query", "pow"]
    cfg = ServerConfig.model_validate({"tiers": tiers})  # the server's own validation, cross-checks included
    assert "policy-pow" in cfg.tiers
    with pytest.raises(ValueError, match="unknown policy"):
        policy_defences("paranoid", prof, scale=0.2)
    _ = ConfigError
