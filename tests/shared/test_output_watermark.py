"""The output watermark's math (shared/output_watermark.py): calibration, marking, and the decoy-null
test behind alignment, on a synthetic representation cloud."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared import output_watermark as ow

SECRET = b"owm-test-secret-0123456789"
D = 48


def cloud(n: int, seed: int) -> np.ndarray:
    """Anisotropic, non-negative, shifted representations (like post-ReLU features)."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((D, D)).astype(np.float32) * np.linspace(2, 0.2, D, dtype=np.float32)
    return np.abs(rng.standard_normal((n, D)).astype(np.float32) @ mix + 3).astype(np.float32)


@pytest.fixture(scope="module")
def cal() -> ow.WatermarkCalibration:
    return ow.calibrate(cloud(4000, 0), SECRET, directions=4, rate=0.05)


def scores(suspect: np.ndarray, clean: np.ndarray, cal, secret: bytes = SECRET, decoys: int = 300) -> ow.WatermarkScores:
    return ow.watermark_scores(suspect, clean, secret, cal, decoys)


def test_marking_touches_about_k_times_rate_and_leaves_the_rest_bit_for_bit(cal):
    y = cloud(3000, 1)
    marked, w = ow.Marker(cal, SECRET, 0.3).mark(y)
    hit = w.sum(1) > 0
    assert 0.12 < hit.mean() < 0.24  # 4 directions x 5%, a few overlaps
    assert np.array_equal(marked[~hit], y[~hit])
    assert (w.sum(1) <= 1 + 1e-6).all() and w.max() <= 0.3 + 1e-6
    c, s = np.asarray(cal.center), np.asarray(cal.scale)
    n0 = np.linalg.norm((y[hit] - c) / s, axis=1)
    n1 = np.linalg.norm((marked[hit] - c) / s, axis=1)
    np.testing.assert_allclose(n1, n0, rtol=1e-4)  # the standardised norm is kept
    again, _ = ow.Marker(cal, SECRET, 0.3).mark(y)
    assert np.array_equal(again, marked)  # deterministic: averaging repeated asks gains nothing
    z_before = ow.standardise(y[hit], c, s)[0]
    z_after = ow.standardise(marked[hit], c, s)[0]
    key = ow.draw_keys(SECRET, D, 4, [ow.TRUE_LABEL], cal.target_basis())
    k = w[hit].argmax(1)
    pulled = ((z_after - z_before) * key.targets[0][k]).sum(1)
    assert (pulled > 0).mean() > 0.95  # marked answers move toward their direction's target


def test_a_key_made_with_another_secret_or_dimension_is_refused(cal):
    with pytest.raises(ValueError, match="another server secret"):
        ow.Marker(cal, b"another-secret-0123456789", 0.2)
    with pytest.raises(ValueError, match="strength"):
        ow.Marker(cal, SECRET, 0.0)
    with pytest.raises(ValueError, match=f"{D}-d"):
        ow.Marker(cal, SECRET).mark(np.zeros((3, D + 1), np.float32))
    with pytest.raises(ValueError, match="at least 100"):
        ow.calibrate(cloud(50, 2), SECRET)


def test_calibration_file_round_trips_and_bad_files_are_refused(cal, tmp_path):
    p = tmp_path / "key.json"
    p.write_text(cal.model_dump_json())
    assert ow.load_calibration(p) == cal
    assert "SECRET" not in p.read_text() and SECRET.decode() not in p.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text('{"dim": 3}')
    with pytest.raises(ValueError, match="not a valid calibration file"):
        ow.load_calibration(bad)
    with pytest.raises(ValueError, match="not found"):
        ow.load_calibration(tmp_path / "missing.json")


def test_marked_answers_behind_an_affine_map_are_found_and_clean_ones_are_not(cal):
    clean = cloud(1000, 3)
    marked, _ = ow.Marker(cal, SECRET, 0.25).mark(clean)
    rng = np.random.default_rng(4)
    a = rng.standard_normal((D, D + 8)).astype(np.float32)
    hit = scores(marked @ a + 1.0, clean, cal)
    assert hit.p_value < 1e-6 and hit.p_rank == pytest.approx(1 / 301)
    miss = scores(clean @ a + 1.0, clean, cal)
    assert miss.p_value > 0.01
    # half-learnt marks (a copy that learnt a quarter of the shift, plus noise) are still found
    partial = clean + 0.25 * (marked - clean) + 0.3 * clean.std(0) * rng.standard_normal(clean.shape).astype(np.float32)
    assert scores(partial, clean, cal).p_value < 1e-6


def test_the_decoy_null_holds_its_level_on_unrelated_suspects(cal):
    """Suspects that never saw the mark (non-linear functions of the clean answers plus noise), each
    under its own secret: the rejections at 5% stay near 5%."""
    clean = cloud(800, 5)
    ps = []
    for i in range(40):
        rng = np.random.default_rng(100 + i)
        s = np.tanh(clean @ rng.standard_normal((D, 32)).astype(np.float32) * 0.1) + 0.1 * rng.standard_normal((800, 32))
        ps.append(scores(s.astype(np.float32), clean, cal, secret=f"null-{i}".encode(), decoys=100).p_value)
    ps = np.asarray(ps)
    assert (ps < 0.05).mean() <= 0.12 and (ps < 0.5).mean() > 0.3  # level held, and not a test that never rejects


def test_scores_refuse_too_few_images_or_decoys(cal):
    z = np.zeros((100, D), np.float32)
    with pytest.raises(ValueError, match="at least 200"):
        ow.watermark_scores(z, z, SECRET, cal)
    z = np.ones((400, D), np.float32)
    with pytest.raises(ValueError, match="100 decoy"):
        ow.watermark_scores(z, z, SECRET, cal, decoys=10)
    with pytest.raises(ValueError, match="same images"):
        ow.watermark_scores(z[:300], z, SECRET, cal)
    with pytest.raises(ValueError, match="cannot fit a map"):
        ow.watermark_scores(z[:150], z[:150], SECRET, ow.calibrate(cloud(500, 9), SECRET, rate=0.25, rank=40), decoys=100)


@pytest.fixture(scope="module")
def principal_cal() -> ow.WatermarkCalibration:
    return ow.calibrate(cloud(4000, 0), SECRET, directions=4, rate=0.05, region_space="principal")


def test_principal_regions_lie_in_the_basis_and_isotropic_keys_are_unchanged(cal, principal_cal, tmp_path):
    key = principal_cal.keys(SECRET, [ow.TRUE_LABEL, "decoy-0"])
    basis = np.asarray(principal_cal.basis)
    inside = np.linalg.norm(key.regions @ basis.T, axis=-1)  # the basis rows are orthonormal
    np.testing.assert_allclose(inside, 1.0, atol=1e-4)
    iso = cal.keys(SECRET, [ow.TRUE_LABEL]).regions[0]
    assert np.linalg.norm(iso @ np.asarray(cal.basis).T, axis=-1).max() < 0.99  # isotropic normals leave the basis
    np.testing.assert_array_equal(iso, ow.draw_keys(SECRET, D, 4, [ow.TRUE_LABEL], cal.target_basis()).regions[0])
    # a calibration file written before region_space existed reads as isotropic
    p = tmp_path / "old.json"
    p.write_text(json.dumps({k: v for k, v in json.loads(cal.model_dump_json()).items() if k != "region_space"}))
    assert ow.load_calibration(p).region_space == "isotropic"
    with pytest.raises(ValueError, match="region space"):
        ow.draw_keys(SECRET, D, 4, [ow.TRUE_LABEL], cal.target_basis(), "diagonal")
    # marked answers are found through an affine map, clean ones are not
    clean = cloud(1000, 3)
    marked, w = ow.Marker(principal_cal, SECRET, 0.25).mark(clean)
    assert 0.1 < (w.sum(1) > 0).mean() < 0.3
    a = np.random.default_rng(4).standard_normal((D, D + 8)).astype(np.float32)
    assert scores(marked @ a + 1.0, clean, principal_cal).p_value < 1e-6
    assert scores(clean @ a + 1.0, clean, principal_cal).p_value > 0.01


def test_gls_filters_read_a_shift_in_its_units_and_weight_noisy_directions_least():
    rng = np.random.default_rng(11)
    targets = ow._unit(rng.standard_normal((3, 6)))
    sd = np.array([5.0, 5.0, 1.0, 1.0, 0.2, 0.2])
    errors = rng.standard_normal((4000, 6)) * sd
    f = ow.gls_filters(errors, targets, shrink=0.0)
    np.testing.assert_allclose((f * targets).sum(1), 1.0, rtol=1e-9)  # a shift a * t reads a
    noise = errors[:2000] @ f.T
    plain = errors[:2000] @ targets.T
    assert (noise.std(0) < plain.std(0)).all()  # less error per unit of shift than the plain projection
    np.testing.assert_array_equal(ow.gls_filters(np.zeros((50, 6)), targets, 0.1), targets)  # no error: plain
    with pytest.raises(ValueError, match="shrink"):
        ow.gls_filters(errors, targets, 1.5)


def test_gls_finds_a_partly_learnt_mark_that_the_plain_projection_misses(cal):
    """A copy that carries a fifth of the shift, with errors largest along the victim's top principal
    directions (where the targets mostly lie): the covariance weighting recovers power, the null holds."""
    clean = cloud(1000, 3)
    marked, _ = ow.Marker(cal, SECRET, 0.25).mark(clean)
    rng = np.random.default_rng(12)
    basis = np.asarray(cal.basis, np.float32)
    coords = rng.standard_normal((len(clean), 4)).astype(np.float32) * 0.6 * np.asarray(cal.basis_sd[:4], np.float32)
    err = (coords @ basis[:4]) * np.asarray(cal.scale, np.float32)
    err += 0.05 * clean.std(0) * rng.standard_normal(clean.shape).astype(np.float32)
    copy = clean + 0.2 * (marked - clean) + err
    plain = ow.watermark_scores(copy, clean, SECRET, cal, 300, shrink=1.0)
    gls = ow.watermark_scores(copy, clean, SECRET, cal, 300)
    assert gls.z > plain.z + 1.0 and gls.p_value < 1e-6
    unmarked = ow.watermark_scores(clean + err, clean, SECRET, cal, 300)
    assert unmarked.p_value > 0.01


def test_even_targets_spread_over_the_basis_and_spread_keys_are_unchanged(cal):
    even = ow.calibrate(cloud(4000, 0), SECRET, directions=4, rate=0.05, target_weighting="even")
    assert cal.target_weighting == "spread" and even.target_weighting == "even"
    basis = np.asarray(cal.basis)
    assert np.allclose(np.asarray(even.basis), basis) and even.lo == cal.lo  # same basis and regions
    labels = [ow.TRUE_LABEL, *ow.decoy_labels(50)]
    top = {c.target_weighting: (np.linalg.norm(c.keys(SECRET, labels).targets @ basis[:4].T, axis=-1) ** 2).mean()
           for c in (cal, even)}
    sd2 = np.asarray(cal.basis_sd) ** 2
    # the share of a target in the top 4 directions: their share of the spread, or 4 of the basis's 32 evenly
    assert top["spread"] == pytest.approx(sd2[:4].sum() / sd2.sum(), abs=0.03)
    assert top["even"] == pytest.approx(4 / len(basis), abs=0.03) and top["spread"] > top["even"] + 0.04
    np.testing.assert_array_equal(cal.keys(SECRET, labels).targets,
                                  ow.draw_keys(SECRET, D, 4, labels, ow.scaled_basis(basis.astype(np.float32),
                                                                                    np.asarray(cal.basis_sd, np.float32))).targets)
    with pytest.raises(ValueError, match="target weighting"):
        ow.calibrate(cloud(200, 0), SECRET, target_weighting="odd")
    marked, _ = ow.Marker(even, SECRET, 0.25).mark(cloud(1000, 3))
    assert ow.watermark_scores(marked, cloud(1000, 3), SECRET, even, 200).p_value < 1e-6


def test_a_long_ramp_marks_more_answers_gently_and_old_keys_keep_half_at_full_strength(cal, tmp_path):
    """full_share: the share of a direction's marked answers at full strength. A small one over a larger
    rate marks more answers, most of them weakly; key files written before the field read as 0.5."""
    ramped = ow.calibrate(cloud(4000, 0), SECRET, directions=4, rate=0.1, full_share=0.05)
    y = cloud(3000, 1)
    w_half = ow.Marker(cal, SECRET, 0.3).weights(y)
    w_ramp = ow.Marker(ramped, SECRET, 0.3).weights(y)
    assert (w_ramp.sum(1) > 0).mean() > 1.6 * (w_half.sum(1) > 0).mean()  # 10% per direction against 5%

    def full(w: np.ndarray) -> np.ndarray:  # per direction, the share of its marked answers at full strength
        return (w >= 0.3 - 1e-6).sum(0) / np.maximum((w > 0).sum(0), 1)

    assert full(w_half).mean() == pytest.approx(0.5, abs=0.12) and full(w_ramp).mean() < 0.15
    assert (w_ramp ** 2).sum(1).mean() < 2 * (w_half ** 2).sum(1).mean()  # twice the answers, not twice the mark's energy
    old = json.loads(cal.model_dump_json())
    del old["full_share"]
    p = tmp_path / "old.json"
    p.write_text(json.dumps(old))
    assert ow.load_calibration(p) == cal and cal.full_share == 0.5
    lo, hi = ow.ramp_bounds(np.arange(1000, dtype=np.float32)[:, None], 0.1, 0.05)
    assert (lo[0], hi[0]) == pytest.approx((899.1, 994.005), abs=0.01)  # the 90% and 99.5% quantiles
    marked, _ = ow.Marker(ramped, SECRET, 0.25).mark(cloud(1000, 3))
    assert ow.watermark_scores(marked, cloud(1000, 3), SECRET, ramped, 200).p_value < 1e-6
    with pytest.raises(ValueError):
        ow.calibrate(cloud(400, 0), SECRET, full_share=0.0)
    # a bad shape is refused before the victim is even loaded (the checkpoint here does not exist)
    from server.defences.output_watermark import calibrate_checkpoint

    ow.check_shape(ow.DIRECTIONS, ow.RATE, ow.FULL_SHARE)
    for bad in ((8, 0.1, 0.0), (8, 0.3, 0.5), (0, 0.1, 0.5)):
        with pytest.raises(ValueError, match="greater than|less than"):
            calibrate_checkpoint(tmp_path / "no-such-victim", SECRET, bad[0], bad[1], full_share=bad[2])


def test_the_joint_fit_finds_a_partly_learnt_mark_better_than_the_map_fitted_outside_the_regions():
    """A long ramp over a large rate leaves few images outside the regions: a map fitted on those alone
    is noisy, while the joint fit uses every image and absorbs the mark with its own regressors.
    Copies that carry 15% of the shift behind an affine map, with noise: the joint fit reads them
    higher on most draws, and neither flags the same answers without the mark."""
    cal = ow.calibrate(cloud(4000, 0), SECRET, directions=4, rate=0.15, full_share=0.1)
    clean = cloud(600, 3)
    marked, _ = ow.Marker(cal, SECRET, 0.25).mark(clean)
    z = {fit: [] for fit in ow.FITS}
    for i in range(6):
        rng = np.random.default_rng(20 + i)
        a = rng.standard_normal((D, D + 8)).astype(np.float32)
        noise = 0.3 * clean.std(0) * rng.standard_normal(clean.shape).astype(np.float32)
        for fit in ow.FITS:
            z[fit].append(ow.watermark_scores((clean + 0.15 * (marked - clean) + noise) @ a, clean, SECRET, cal, 100, fit=fit).z)
            if i < 2:
                assert ow.watermark_scores((clean + noise) @ a, clean, SECRET, cal, 100, fit=fit).p_value > 0.01
    joint, outside = np.asarray(z["joint"]), np.asarray(z["outside"])
    assert (joint > outside).sum() >= 5 and joint.mean() > outside.mean() + 0.3 and joint.min() > 3
    with pytest.raises(ValueError, match="unknown fit"):
        ow.key_statistics(clean, clean, cal, cal.keys(SECRET, [ow.TRUE_LABEL]), fit="inside")
