"""Watermark removal (attacker.removal) against a planted output watermark, and heist-attack steal's
--remove-watermark options.

The synthetic victim: 2,000 answers of dimension 64 (an anisotropic Gaussian cloud in a few groups);
the mark is the server's: K = 4 secret (u_k, t_k) pairs in the standardised space, the weight of
t_k ramps from 0 to ``strength`` between the (1 - rate) and (1 - rate / 2) quantiles of <z, u_k>.
The thief's reference is a random linear map of the clean answers (wider than them) plus noise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from attacker.cli import build_parser, main
from attacker.removal import cse, perturb_images, spa_keep, spa_scores, standardise
from shared.checkpoint import load_checkpoint
from shared.proc import run as run_child
from tests.attacker.test_steal import _env, _steal_cmd, _usage
from tests.support import REPO

N, D, K, STRENGTH = 2000, 64, 4, 0.25


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class Planted:
    clean: np.ndarray  # (N, D) the victim's answers before marking
    marked: np.ndarray  # (N, D) what the API answers
    weights: np.ndarray  # (N, K) the weight of each target
    targets: np.ndarray  # (K, D) t_k, unit, in the server's standardised space
    center: np.ndarray
    scale: np.ndarray
    mark: Callable[[np.ndarray], np.ndarray]  # the server's marking of any answers
    reference: np.ndarray  # (N, 96) the thief's own features of the same images

    def on_target(self, answers: np.ndarray) -> np.ndarray:
        """Each row's projection on its strongest target, in the server's standardised space."""
        z = _unit((answers - self.center) / self.scale)
        return (z @ self.targets.T)[np.arange(len(z)), self.weights.argmax(1)]


def _plant(seed: int = 0, rate: float = 0.05) -> Planted:
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.standard_normal((D, D)))[0]
    groups = 0.6 * rng.standard_normal((8, D))
    clean = 3 * ((rng.standard_normal((N, D)) * np.exp(np.linspace(0, -2, D))) @ rotation.T + groups[rng.integers(0, 8, N)])
    clean += rng.standard_normal(D)
    center, scale = clean.mean(0), clean.std(0)
    u, t = _unit(rng.standard_normal((K, D))), _unit(rng.standard_normal((K, D)))
    p = _unit((clean - center) / scale) @ u.T
    lo, hi = np.quantile(p, 1 - rate, axis=0), np.quantile(p, 1 - rate / 2, axis=0)

    def weights(e: np.ndarray) -> np.ndarray:
        return STRENGTH * np.clip((_unit((e - center) / scale) @ u.T - lo) / (hi - lo), 0, 1)

    def mark(e: np.ndarray) -> np.ndarray:
        v = (e - center) / scale
        z, w = _unit(v), weights(e)
        m = (1 - w.sum(1, keepdims=True)) * z + w @ t
        return center + scale * np.linalg.norm(v, axis=1, keepdims=True) * _unit(m)

    ref = clean @ rng.standard_normal((D, 96))
    ref += 0.1 * ref.std() * rng.standard_normal(ref.shape)
    return Planted(clean, mark(clean), weights(clean), t, center, scale, mark, ref)


@pytest.fixture(scope="module")
def planted() -> Planted:
    return _plant()


def _in_span(directions: np.ndarray, pl: Planted, answers: np.ndarray) -> np.ndarray:
    """How much of each target (mapped into the thief's standardised space) lies in the span of ``directions``."""
    targets = _unit(pl.targets * pl.scale / standardise(answers).scale)
    return np.linalg.norm(directions.astype(np.float64) @ targets.T, axis=0)


def _thief_stats(answers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    st = standardise(answers)
    return st.center, st.scale


def test_cse_finds_and_removes_the_planted_directions(planted):
    pl = planted
    res = cse(pl.marked, pl.reference, seed=0)
    assert res.answers.shape == pl.marked.shape and res.answers.dtype == np.float32
    assert res.directions.shape == (4, D) and res.details["removed"] == 4
    assert np.array_equal(res.selected, np.unique(res.selected)) and 0 <= res.selected.min() and res.selected.max() < N
    span = _in_span(res.directions, pl, pl.marked)
    assert (span > 0.8).sum() >= 3 and span.mean() > 0.85, span

    marked = pl.weights.sum(1) > 0
    before, planted_on, after = pl.on_target(pl.clean), pl.on_target(pl.marked), pl.on_target(res.answers)
    pulled, left = (planted_on - before)[marked].mean(), (after - before)[marked].mean()
    assert pulled > 0.1 and left < 0.5 * pulled, (pulled, left)
    z_in, z_out = (_unit((a - pl.center) / pl.scale) for a in (pl.marked, res.answers))
    assert (z_in * z_out).sum(1)[~marked].mean() > 0.93  # unmarked answers lose only the removed directions
    np.testing.assert_allclose(standardise(res.answers, *_thief_stats(pl.marked)).norm, standardise(pl.marked).norm,
                               rtol=1e-4)  # every row keeps its standardised norm


def test_cse_on_unmarked_answers_finds_no_target(planted):
    res = cse(planted.clean, planted.reference, seed=0)
    assert _in_span(res.directions, planted, planted.clean).max() < 0.5


def test_cse_rounds_add_orthonormal_directions(planted):
    res = cse(planted.marked, planted.reference, directions=2, rounds=2, seed=1)
    assert res.directions.shape == (4, D) and len(res.details["rounds"]) == 2
    np.testing.assert_allclose(res.directions @ res.directions.T, np.eye(4), atol=1e-5)
    assert _in_span(res.directions, planted, planted.marked).mean() > 0.8


def test_spa_flags_answers_on_the_ramp(planted):
    pl = planted
    rng = np.random.default_rng(3)
    copies = np.stack([pl.mark(pl.clean + 0.05 * pl.scale * rng.standard_normal(pl.clean.shape)) for _ in range(2)], 1)
    scores = spa_scores(pl.marked, copies, neighbours=10)
    keep = spa_keep(scores, drop=0.1)
    assert scores.shape == (N,) and len(keep) == N - 200 and np.all(np.diff(keep) > 0)
    flagged = np.ones(N, bool)
    flagged[keep] = False
    w = pl.weights.max(1)
    ramp, unmarked = (w > 0) & (w < STRENGTH - 1e-9), pl.weights.sum(1) == 0
    assert ramp.sum() > 100
    assert flagged[ramp].mean() > 0.4 and flagged[ramp].mean() > 5 * flagged[unmarked].mean(), \
        (flagged[ramp].mean(), flagged[unmarked].mean())


def test_perturb_images_is_deterministic_and_bounded():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    out = perturb_images(images, 3, seed=1)
    assert out.shape == (15, 16, 16, 3) and out.dtype == np.uint8
    assert np.array_equal(out, perturb_images(images, 3, seed=1))
    assert not np.array_equal(out, perturb_images(images, 3, seed=2))
    noisy = perturb_images(images, 3, sigma=4.0, shift=0, seed=1).astype(int)
    diff = np.abs(noisy - np.repeat(images, 3, axis=0).astype(int))
    assert diff.max() <= 12 and diff.mean() > 1  # noise clipped at 3 sigma
    shifted = perturb_images(images, 3, sigma=0.0, shift=1, seed=1)
    pad = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    for j, copy in enumerate(shifted):  # image-major: copy j is a shift of image j // 3, by at most one pixel
        assert any(np.array_equal(copy, pad[j // 3, 1 + dy : 17 + dy, 1 + dx : 17 + dx])
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def _call_errors() -> list:
    a = np.random.default_rng(0).standard_normal((50, 8))
    im = np.zeros((2, 8, 8, 3), np.uint8)
    return [
        (lambda: cse(a, a[:10]), "same rows"),
        (lambda: cse(a, a, clusters=0), "--cse-clusters"),
        (lambda: cse(a, a, select=0.0), "--cse-select"),
        (lambda: cse(a, a, directions=8), "--cse-directions"),
        (lambda: cse(a, a, rounds=0), "--cse-rounds"),
        (lambda: perturb_images(im.astype(np.float32), 1), "uint8"),
        (lambda: perturb_images(im, 0), "--spa-copies"),
        (lambda: perturb_images(im, 1, shift=8), "--spa-shift"),
        (lambda: perturb_images(im, 1, sigma=-1.0), "--spa-sigma"),
        (lambda: spa_scores(a, a[:, None, :4]), "must match"),
        (lambda: spa_scores(a, a[:, None], neighbours=50), "--spa-neighbours"),
        (lambda: spa_keep(np.zeros(5), drop=1.0), "--spa-drop"),
    ]


@pytest.mark.parametrize("case", range(len(_call_errors())))
def test_argument_errors_say_what_to_change(case):
    call, text = _call_errors()[case]
    with pytest.raises(ValueError, match=text):
        call()


def test_steal_refuses_bad_removal_options_before_buying(tmp_path, capsys):
    base = ["steal", "--url", "http://127.0.0.1:9", "--api-key", "k", "--cache", str(tmp_path / "c"), "--queries", "8",
            "--out", str(tmp_path / "o")]
    args = build_parser().parse_args([*base, "--remove-watermark", "spa"])
    assert (args.spa_copies, args.spa_drop, args.spa_neighbours, args.spa_sigma, args.spa_shift, args.cse_directions,
            args.cse_clusters, args.cse_select, args.cse_rounds) == (2, 0.1, 10, 2.0, 0, 4, 20, 0.05, 1)
    assert main([*base, "--remove-watermark", "cse"]) == 2
    assert "--remove-watermark cse needs --cse-reference DIR" in capsys.readouterr().err
    assert main([*base, "--remove-watermark", "cse", "--cse-reference", str(tmp_path / "missing")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main([*base, "--cse-reference", str(tmp_path)]) == 2
    assert "only used with --remove-watermark cse" in capsys.readouterr().err
    assert main([*base, "--remove-watermark", "spa", "--spa-drop", "1"]) == 2
    assert "--spa-drop in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # nothing was bought, not even a cache opened


def test_steal_cse_step_uses_the_reference_checkpoint(tiny_checkpoint, tmp_path, capsys):
    """The steal command's CSE step: the reference encoder's features of the queries, the record it keeps."""
    from attacker.cli import _remove_watermark
    from attacker.steal import StealConfig

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    answers = rng.standard_normal((120, 16)).astype(np.float32)
    args = build_parser().parse_args(["steal", "--url", "u", "--cache", "c", "--queries", "120", "--out", "o",
                                      "--remove-watermark", "cse", "--cse-reference", str(tiny_checkpoint),
                                      "--cse-clusters", "4", "--cse-directions", "2"])
    imgs, cleaned, labels, record = _remove_watermark(args, StealConfig(width=4), images, answers, None, None)
    assert imgs is images and labels is None and cleaned.shape == answers.shape and not np.allclose(cleaned, answers)
    assert record["attack"] == "cse" and record["directions_removed"] == 2 and record["reference_dim"] == 32
    assert "remove-watermark cse: removed 2 directions from all 120 answers" in capsys.readouterr().out


@pytest.mark.live
@pytest.mark.slow
def test_steal_with_spa_buys_counts_and_drops(victim, tmp_path, data_root):
    acct, key = victim.new_account("unlimited")
    n, out = 64, tmp_path / "stolen"
    cmd = _steal_cmd(victim.url, out, tmp_path / "cache", n, "--remove-watermark", "spa", "--spa-copies", "1")
    assert cmd[:3] == [sys.executable, "-m", "attacker.cli"]
    r = run_child(cmd, cwd=REPO, env=_env(key, data_root), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "spa queries: 64 answers needed (64 perturbed copies, 1 per query), 0 served from cache, 64 bought" in r.stdout
    assert "remove-watermark spa: 6 of 64 answers flagged" in r.stdout
    assert _usage(victim, acct)["images"] == 2 * n  # the copies are bought once each, and counted
    training = load_checkpoint(out).config.training
    assert training["removal"]["kept"] == 58 and training["removal"]["flagged"] == 6
    assert training["cost"]["removal_queries"] == n and training["cost"]["removal_answers_bought_this_run"] == n
