"""The defence policies the testbed compares, as server tiers (one tier per policy).

Each policy is a list of ``{name, params}`` defence specs, validated by the server's own config
model (``server.config.TierConfig``) before any process starts. The calibrated parts (B4B's LSH
centre, PoW's legitimate envelope) read the legitimate profile recorded from the victim with
``python -m testbed.profile`` (default ``assets/profiles/legit_profile.json``).

- ``none``: undefended.
- ``noise``: keyed Gaussian output noise (StolenEncoder-style perturbation), sigma relative to the
  victim's answers (``noise_sigma`` x the mean per-dimension standard deviation on public data).
- ``similar``: FAISS similar-query perturbation (head space, cosine tau 0.93, heavy noise on a hit).
- ``b4b``: coverage-priced noise (SimHash 12 x 20, centred) with a per-account affine transform;
  alpha = 5 x scale and lambda = 1e-10 (steeper than the paper's 1e-7, whose curve only reaches
  alpha far beyond a 4,000-query thief's coverage here); ``beta`` is set from the profile so the
  legitimate envelope (+2 points) costs 1e-3 alpha. Calibrated with the profile's recorded
  attacker trace: ``assets/profiles/legit_profile_traces.json``.
- ``pow``: calibrated proof-of-work (volume + coverage deviation from the profile); answers untouched.
  Difficulty 12-18 bits, scaled to the testbed's Python solver (production: 20-28, docs/defences.md).
- ``all``: b4b + noise + similar + pow together (b4b first: defences run in order, and coverage
  must be measured on the victim's own representations).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from server.config import TierConfig

POLICIES = ("none", "noise", "similar", "b4b", "pow", "all")


def b4b_beta(profile: dict, alpha: float, lam: float = 1e-7, legit_sigma: float = 1e-3, slack: float = 0.02) -> float:
    """beta such that sigma(legitimate envelope's final coverage + slack) = legit_sigma * alpha.

    sigma(c) = lam * (exp(ln(alpha/lam) * c / beta) - 1)  =>  beta = ln(alpha/lam) * c / ln(1 + legit_sigma*alpha/lam).
    """
    c = max(profile["coverage"]) + slack
    return round(math.log(alpha / lam) * c / math.log1p(legit_sigma * alpha / lam), 4)


def policy_defences(name: str, profile_path: Path, scale: float, noise_sigma: float = 0.5,
                    b4b_alpha: float = 5.0, b4b_lam: float = 1e-10, pow_bits: tuple[int, int] = (12, 18)) -> list[dict]:
    """Defence specs of one policy; ``scale`` = the victim's mean per-dimension std of representations."""
    profile = json.loads(Path(profile_path).read_text())
    sim = profile["similarity"]
    alpha = b4b_alpha * scale
    noise = {"name": "gaussian_noise", "params": {"mean": 0.0, "sigma": round(noise_sigma * scale, 6)}}
    similar = {"name": "similar_query", "params": {"space": sim["space"], "metric": sim["metric"], "tau": sim["tau"],
                                                    "action": "noise", "noise_mean": 0.0, "noise_sigma": round(10 * scale, 6)}}
    b4b = {"name": "b4b", "params": {"hyperplanes": profile["lsh"]["hyperplanes"], "hash_sets": profile["lsh"]["hash_sets"],
                                     "alpha": round(alpha, 6), "beta": b4b_beta(profile, alpha, b4b_lam), "lam": b4b_lam,
                                     "transform": "affine",
                                     "center_from": str(Path(profile_path).resolve())}}
    b4b_silent = {"name": "b4b", "params": {**b4b["params"], "noise": False, "transform": "none"}}
    # bits scaled to a pure-Python hashlib solver: 12..18 bits = 4k..262k hashes per request
    pow_ = {"name": "pow", "params": {"profile": str(Path(profile_path).resolve()), "min_bits": pow_bits[0],
                                      "max_bits": pow_bits[1], "w_similar": 0.0}}
    table = {"none": [], "noise": [noise], "similar": [similar], "b4b": [b4b], "pow": [b4b_silent, pow_],
             # b4b first: coverage must hash the victim's own representations, not ones already noised
             "all": [b4b, noise, similar, {**pow_, "params": {**pow_["params"], "w_similar": 1.0}}]}
    if name not in table:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return table[name]


def representation_scale(checkpoint: str | Path, n: int = 1000) -> float:
    """Mean per-dimension standard deviation of the victim's representations on public images
    (the provider knows its own model; noise levels are set relative to this)."""
    from shared.checkpoint import load_checkpoint
    from shared.data.synthetic import load_split
    from shared.probe import extract_features

    ck = load_checkpoint(checkpoint)
    spec = ck.config.data_spec()
    x = extract_features(ck.encoder, load_split(spec, "public", progress=False).images[:n])
    return float(x.std(axis=0).mean())


def policy_tiers(policies: list[str] | tuple[str, ...], profile_path: Path, scale: float, **kw) -> dict[str, dict]:
    """``{"policy-<name>": tier}`` for the server config, each validated as a TierConfig."""
    tiers = {}
    for p in policies:
        tier = {"description": f"testbed policy {p}", "outputs": ["representation", "projection"],
                "defences": policy_defences(p, profile_path, scale, **kw)}
        TierConfig.model_validate(tier)
        tiers[f"policy-{p}"] = tier
    return tiers
