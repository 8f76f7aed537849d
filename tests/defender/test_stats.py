"""Pure statistics of the defender: alignment, dataset inference, entropy/MI (the watermark test: test_watermark.py)."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import numpy as np
import pytest

from defender.stats import (
    calibrate,
    dataset_inference,
    fit_alignment,
    knn_entropy,
    membership_direction,
    mutual_information,
    similarity,
    whiten,
    with_min_effect,
)
from shared.transforms import make_transform


def test_alignment_undoes_permutation_affine_and_padding():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(600, 24)).astype(np.float32)
    for kind, pad in (("permute", 0), ("affine", 0), ("pad_shuffle", 8)):
        t = make_transform(kind, 24, np.random.default_rng(1), pad=pad)
        s = t.apply(v, [str(i) for i in range(len(v))] if pad else None)
        al = fit_alignment(s[:500], v[:500])
        err = np.abs(al.apply(s[500:]) - v[500:]).max()
        assert err < 0.05, (kind, err)
        assert al.r2_holdout > 0.99
    # unrelated answers are not "aligned": held-out R^2 near zero
    al = fit_alignment(rng.normal(size=(500, 24)), v[:500])
    assert al.r2_holdout < 0.1


def test_alignment_rejects_unpaired_answers():
    with pytest.raises(ValueError, match="same inputs"):
        fit_alignment(np.zeros((10, 4)), np.zeros((11, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fit_alignment(np.full((10, 4), np.nan), np.zeros((10, 4)))


def _clusters(rng, n, centres, spread):
    k = rng.integers(0, len(centres), n)
    return centres[k] + rng.normal(scale=spread, size=(n, centres.shape[1]))


def test_dataset_inference_flags_members_and_not_exchangeable_data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    # "members": tight around the centres; public data of the same centres but looser
    a, b = _clusters(rng, 400, centres, 0.2), _clusters(rng, 300, centres, 0.2)
    pub = _clusters(rng, 300, centres, 0.35)
    r = dataset_inference(a, b, pub, components=5)
    assert r.verdict == "stolen" and r.p_value < 1e-6 and r.effect > 0.5
    # the same test with exchangeable B and public data
    pub2 = _clusters(rng, 300, centres, 0.2)
    r2 = dataset_inference(a, b, pub2, components=5)
    assert r2.verdict == "independent" and r2.p_value > 0.01


@pytest.mark.parametrize("crossfit", [False, True])
def test_dataset_inference_false_positive_rate_is_about_alpha(crossfit):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8))
    ps = []
    for _ in range(60):
        a, b, p = (_clusters(rng, n, centres, 0.3) for n in (150, 100, 100))
        ps.append(dataset_inference(a, b, p, components=3, seed=0, crossfit=crossfit).p_value)
    ps = np.array(ps)
    assert (ps < 0.05).mean() <= 0.15  # nominal 5%; 60 draws
    assert 0.3 < np.median(ps) < 0.7   # roughly uniform under the null


def test_cross_fitted_dataset_inference_scores_every_member():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(5, 16))
    a, b = _clusters(rng, 300, centres, 0.2), _clusters(rng, 300, centres, 0.2)
    pub = _clusters(rng, 400, centres, 0.3)
    plain, cross = dataset_inference(a, b, pub, components=5), dataset_inference(a, b, pub, components=5, crossfit=True)
    assert (plain.n_private, cross.n_private, cross.n_public) == (300, 600, 400) and cross.crossfit
    assert cross.verdict == "stolen" and cross.t_statistic > plain.t_statistic  # twice the members: more power


def _difficulty_reps(rng, n, atypical, dim=16, member_spread=1.0):
    """Answers of one encoder: a shared offset plus an image's own atypicality times a random direction.

    ``atypical`` is the images' difficulty (shared by every encoder that looks at them); members of
    a memorising suspect are spread a little further (``member_spread``)."""
    offset = np.full(dim, 2.0)
    return offset + (atypical * member_spread)[:, None] * rng.normal(size=(n, dim))


def _difficulty_case(rng, member_spread):
    n_a, n_b, n_p = 300, 300, 600
    difficulty = rng.lognormal(0.0, 0.6, size=n_a + n_b + n_p)
    spread = np.r_[np.full(n_a + n_b, member_spread), np.ones(n_p)]
    suspect = _difficulty_reps(rng, len(difficulty), difficulty, member_spread=spread)
    reference = _difficulty_reps(rng, len(difficulty), difficulty)  # never saw the members
    cut = (slice(0, n_a), slice(n_a, n_a + n_b), slice(n_a + n_b, None))
    run = lambda x: dataset_inference(*(x[c] for c in cut), components=1, alternative="less", crossfit=True)  # noqa: E731
    return run(suspect), run(reference)


def _scores_case(rng, n_b, n_p, shift):
    """A DI result on given scores: members' log-likelihoods ``shift`` standard deviations below public data."""
    a = rng.normal(size=(50, 4))
    r = dataset_inference(a, a[:10] + 1, a[:20] + 2, components=1, alternative="less")
    return with_min_effect(replace(r, ll_private=rng.normal(shift, 1, n_b), ll_public=rng.normal(0, 1, n_p)), 0.0)


def test_smallest_effect_of_interest_is_exact_at_the_margin_and_conservative_below_it():
    """H0 'effect <= delta': at a true effect of exactly delta the rejection rate is alpha; with no
    effect (an independent suspect) it is far below; a large effect is still found."""
    rng = np.random.default_rng(11)
    delta, n_b, n_p = 0.1, 500, 4000

    def rejections(shift):
        ps = np.array([with_min_effect(_scores_case(rng, n_b, n_p, shift), delta).p_value for _ in range(400)])
        return (ps < 0.05).mean()

    at_margin, null = rejections(-delta), rejections(0.0)
    assert 0.02 < at_margin < 0.09  # nominal 5% (400 draws: sd 1.1 points)
    assert null < 0.015             # expected: P(Z < -1.645 - 0.1 * sqrt(444)) = 0.5%
    strong = with_min_effect(_scores_case(rng, n_b, n_p, -0.4), delta)
    assert strong.verdict == "stolen" and strong.p_value < 1e-6


def test_smallest_effect_of_interest_only_raises_p_values_and_keeps_the_zero_effect_test():
    rng = np.random.default_rng(12)
    for shift in (-0.3, -0.05, 0.0, 0.2):
        base = _scores_case(rng, 300, 900, shift)
        m = with_min_effect(base, 0.08)
        assert m.p_value >= base.p_value and m.t_statistic >= base.t_statistic  # side "less": t moves towards the null
        assert (m.t_zero_effect, m.p_zero_effect) == (base.t_statistic, base.p_value) and m.min_effect == 0.08
        assert m.effect == base.effect  # Cohen's d itself is not shifted
    assert with_min_effect(base, 0.0).t_zero_effect is None
    with pytest.raises(ValueError, match="one-sided"):
        with_min_effect(replace(base, alternative="two-sided"), 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        with_min_effect(base, -0.1)


def test_calibrated_dataset_inference_removes_image_difficulty():
    """Scores driven mostly by how atypical an image is anyway: the raw test barely sees members
    spread 15% further; regressing out a reference encoder's scores of the same images does."""
    rng = np.random.default_rng(7)
    raw, ref = _difficulty_case(rng, member_spread=1.15)
    cal = calibrate(raw, [ref])
    assert cal.references == 1 and cal.t_uncalibrated == raw.t_statistic and cal.p_uncalibrated == raw.p_value
    assert cal.reference_r2 > 0.3
    assert cal.verdict == "stolen" and cal.p_value < 1e-4
    assert raw.p_value > 1e-3 and cal.t_statistic < 2 * raw.t_statistic  # both negative: calibrated twice as far out
    assert calibrate(raw, []) is raw


def test_calibrated_dataset_inference_false_positive_rate_is_about_alpha():
    rng = np.random.default_rng(8)
    ps = np.array([calibrate(*(lambda r: (r[0], [r[1]]))(_difficulty_case(rng, 1.0))).p_value for _ in range(60)])
    assert (ps < 0.05).mean() <= 0.15
    assert 0.3 < np.median(ps) < 0.7


def test_calibration_refuses_a_reference_scored_on_other_rows():
    rng = np.random.default_rng(9)
    raw, _ = _difficulty_case(rng, 1.0)
    other = dataset_inference(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)), rng.normal(size=(80, 4)), components=1)
    with pytest.raises(ValueError, match="same private and public rows"):
        calibrate(raw, [other])


def test_dataset_inference_invariant_to_permutation():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 12))
    a, b, p = _clusters(rng, 300, centres, 0.2), _clusters(rng, 200, centres, 0.2), _clusters(rng, 200, centres, 0.3)
    perm = rng.permutation(12)
    r1, r2 = dataset_inference(a, b, p, components=4), dataset_inference(a[:, perm], b[:, perm], p[:, perm], components=4)
    assert r1.t_statistic == pytest.approx(r2.t_statistic, rel=1e-3, abs=1e-3)


def test_membership_direction_learns_the_side_members_fall_on():
    """Members spread out (contrastive memorisation) are LESS likely than public data: the paper's
    side misses them, the side learned on the victim (disjoint data) catches them; tight members
    give the paper's side."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 16))
    spread_a, spread_b = _clusters(rng, 400, centres, 0.35), _clusters(rng, 300, centres, 0.35)
    pub_cal, pub = _clusters(rng, 400, centres, 0.2), _clusters(rng, 300, centres, 0.2)
    d = membership_direction(spread_a, pub_cal, components=5)
    assert d.alternative == "less" and d.t_statistic < -3
    assert dataset_inference(spread_a, spread_b, pub, components=5).verdict == "independent"
    r = dataset_inference(spread_a, spread_b, pub, components=5, alternative=d.alternative)
    assert r.verdict == "stolen" and r.p_value < 1e-6 and r.alternative == "less"
    tight = _clusters(rng, 400, centres, 0.1)
    assert membership_direction(tight, pub_cal, components=5).alternative == "greater"
    with pytest.raises(ValueError, match="alternative"):
        dataset_inference(spread_a, spread_b, pub, alternative="sideways")


def test_dataset_inference_refuses_bad_input():
    a = np.ones((50, 4))
    with pytest.raises(ValueError, match="NaN"):
        dataset_inference(a, np.full((10, 4), np.nan), a)
    with pytest.raises(ValueError, match="dimensions differ"):
        dataset_inference(a, np.ones((10, 5)), a)


def test_knn_entropy_matches_gaussian_entropy():
    rng = np.random.default_rng(0)
    for d, sigma in ((1, 1.0), (4, 2.0)):
        x = rng.normal(scale=sigma, size=(2000, d))
        exact = 0.5 * d * math.log(2 * math.pi * math.e * sigma**2)
        assert knn_entropy(x) == pytest.approx(exact, abs=0.1 * d)


def test_mutual_information_of_correlated_gaussians():
    rng = np.random.default_rng(0)
    rho = 0.9
    x = rng.normal(size=(2000, 1))
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=(2000, 1))
    exact = -0.5 * math.log(1 - rho**2)
    assert mutual_information(x, y) == pytest.approx(exact, abs=0.15)
    assert abs(mutual_information(x, rng.normal(size=(2000, 1)))) < 0.1


def test_similarity_ordering_and_obfuscation():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 32))
    noisy = v + 0.3 * rng.normal(size=v.shape) * v.std()
    rand = rng.normal(size=(500, 32))
    s_self = similarity(v, v, rand, mi_dims=8)
    s_copy = similarity(v, noisy, rand, mi_dims=8)
    s_ind = similarity(v, rng.normal(size=(500, 32)), rand, mi_dims=8)
    assert s_self.mi_normalised == pytest.approx(1.0)
    assert 0.2 < s_copy.mi_normalised < 1.0
    assert abs(s_ind.mi_normalised) < 0.1
    assert s_copy.cosine > 0.9 and abs(s_ind.cosine) < 0.1
    # affine obfuscation: raw cosine collapses, MI on whitened answers stays far above independent
    # (truncated whitening is only approximately affine-invariant: the top components move)
    t = make_transform("affine", 32, np.random.default_rng(3))
    s_aff = similarity(v, t.apply(noisy), rand, mi_dims=8)
    assert s_aff.cosine < 0.5
    assert s_aff.mi_normalised > 0.5
    assert whiten(v, 8).shape == (500, 8)


def test_dataset_inference_settings_are_validated_before_any_query():
    from pydantic import ValidationError

    from defender.cli import DI_MARGIN, parse_components
    from defender.verify import VerifyConfig

    assert VerifyConfig().di_margin == DI_MARGIN  # the CLI's default is the config's
    for bad in (-0.1, 1.0):
        with pytest.raises(ValidationError):
            VerifyConfig(di_margin=bad)

    assert VerifyConfig(di_components="auto").di_components == "auto" and VerifyConfig(di_components=3).di_components == 3
    for bad in (0, -2, "many"):
        with pytest.raises(ValidationError):
            VerifyConfig(di_components=bad)
    assert parse_components("auto") == "auto" and parse_components("4") == 4
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer or auto"):
            parse_components(bad)
