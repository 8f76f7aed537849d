"""Removing an output watermark from bought answers before training the stolen copy.

The target: a server that mixes secret target directions into the answers of inputs falling in
secret regions (WARDEN / EmbMarker style, on images). Both attacks below need nothing from the
victim but its answers (plus, for SPA, answers to a few perturbed copies of the queries).

- **CSE** (WARDEN's Clustering, Selection, Elimination), :func:`cse`. Every answer is standardised
  with the thief's own statistics (center and per-dimension scale of the bought answers) and
  normalised; the reference (the thief's own encoder's features of the same images) is standardised
  too and mapped linearly into that space (ridge least squares, cross-fitted), so both cosines
  below are taken in one space. *Clustering*: k-means on the answers. *Selection*: inside each
  cluster, a pair (i, j) scores cos_answers(i, j) - cos_reference(i, j): answers pulled toward a
  shared target direction are closer to each other than the images justify; the members of the top
  ``select`` share of pairs are kept. *Elimination*: the principal directions of the selected
  answers' deviations from what the reference predicts are the target directions; the top
  ``directions`` are projected out of every answer (each row keeps its standardised norm) and the
  rows are mapped back to the answer space. ``rounds`` > 1 repeats the three steps on the cleaned
  answers, each round removing directions orthogonal to the earlier ones. WARDEN compares raw
  cosines of the two spaces and decomposes the selected answers themselves; against a mark that
  moves answers a quarter of the way toward its target neither finds the targets. The attack is
  only as good as the reference's linear fit to the answers (its out-of-fold R^2 is reported as
  ``reference_fit``): the mark is found in what the reference leaves unexplained.
- **SPA-style detector** (perturb the queries, flag answers that move unlike their neighbours),
  :func:`perturb_images`, :func:`spa_scores`, :func:`spa_keep`. The weight of a watermarked
  answer ramps up across the border of its region, so near the border a small change of the image
  moves the answer much more than it moves the answers of similar, unmarked images. Each query is
  asked again as ``copies`` slightly perturbed images (pixel noise, optionally a small shift); an answer's
  score is its mean movement (standardised, normalised space) divided by the median movement of
  its nearest neighbours; the highest-scoring share is dropped from the training set. Saturated
  answers (full weight) do not move more than their neighbours and are not found this way.

Everything here is numpy only (no torch), deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CseResult", "Standardised", "cse", "kmeans", "nearest_neighbours", "perturb_images", "predict_from_reference",
           "spa_keep", "spa_scores", "standardise"]

EPS = 1e-8
MAX_BLOCK = 600  # CSE scores the pairs of at most this many answers at once: a larger cluster is split at random


@dataclass(frozen=True)
class Standardised:
    """Rows in a standardised space: ``unit`` = normalize((x - center) / scale), ``norm`` = |(x - center) / scale|."""

    center: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    unit: np.ndarray  # (N, D) float64, unit rows
    norm: np.ndarray  # (N,)

    def to_raw(self, unit: np.ndarray) -> np.ndarray:
        """Unit rows of this space back to the answer space, each with its row's standardised norm."""
        u = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), EPS)
        return (self.center + self.scale * (self.norm[:, None] * u)).astype(np.float32)


def standardise(x: np.ndarray, center: np.ndarray | None = None, scale: np.ndarray | None = None) -> Standardised:
    """Standardise rows with the given (or their own) center and per-dimension scale, then normalise."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need a (N, D) array of at least 2 rows, got shape {x.shape}")
    c = x.mean(0) if center is None else np.asarray(center, np.float64)
    s = x.std(0) if scale is None else np.asarray(scale, np.float64)
    s = np.where(s > EPS, s, 1.0)  # a constant dimension stays as it is
    v = (x - c) / s
    n = np.linalg.norm(v, axis=1)
    return Standardised(c, s, v / np.maximum(n, EPS)[:, None], n)


def kmeans(x: np.ndarray, k: int, *, iters: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: (labels (N,), centroids (k, D)). An emptied cluster
    is reseeded at the row farthest from its centroid."""
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= clusters <= rows ({n}), got {k}; lower --cse-clusters")
    rng = np.random.default_rng(seed)
    sq = (x * x).sum(1)
    cent = np.empty((k, x.shape[1]))
    cent[0] = x[rng.integers(n)]
    d2 = np.maximum(sq - 2 * x @ cent[0] + cent[0] @ cent[0], 0)
    for j in range(1, k):
        total = d2.sum()
        i = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        cent[j] = x[i]
        d2 = np.minimum(d2, np.maximum(sq - 2 * x @ cent[j] + cent[j] @ cent[j], 0))
    labels = np.full(n, -1)
    for _ in range(iters):
        dist = sq[:, None] - 2 * x @ cent.T + (cent * cent).sum(1)[None]
        new = dist.argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=k)
        if (counts == 0).any():
            own = dist[np.arange(n), labels]
            for empty in np.flatnonzero(counts == 0):
                far = int(own.argmax())
                labels[far], own[far] = empty, -np.inf
            counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(cent)
        np.add.at(sums, labels, x)
        cent = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], cent)
    return labels, cent


@dataclass
class CseResult:
    answers: np.ndarray  # cleaned answers, float32, the shape of the input
    directions: np.ndarray  # (R, D) orthonormal directions removed, in the thief's standardised space
    selected: np.ndarray  # indices of the answers selected (every round), sorted
    details: dict = field(default_factory=dict)  # per-round numbers (JSON-friendly)


def predict_from_reference(target: np.ndarray, reference: np.ndarray, *, folds: int = 5, ridge: float = 1e-3,
                           seed: int = 0) -> np.ndarray:
    """``target`` (N, D) as predicted linearly (ridge least squares with bias) from ``reference`` (N, D'),
    cross-fitted: each fold is predicted by a map fitted on the other folds, so a wide reference cannot
    memorise the rows it predicts."""
    n = len(target)
    x = np.hstack([reference, np.ones((n, 1))])
    gram, cross = x.T @ x, x.T @ target  # every fold's fit is the whole minus its own part
    ridge_eye = ridge * float(np.trace(gram)) / len(gram) * np.eye(len(gram))
    order = np.random.default_rng(seed).permutation(n)
    pred = np.empty_like(target)
    for part in np.array_split(order, max(2, min(folds, n))):
        xp = x[part]
        w = np.linalg.solve(gram - xp.T @ xp + ridge_eye, cross - xp.T @ target[part])
        pred[part] = xp @ w
    return pred


def _select(a: np.ndarray, r: np.ndarray, labels: np.ndarray, k: int, select: float,
            rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Members of the top ``select`` share of each cluster's pairs by cos_answers - cos_reference;
    also the numbers of pairs scored and selected. A cluster of more than ``MAX_BLOCK`` answers is
    split at random into blocks of about equal size and only pairs inside a block are scored."""
    chosen: list[np.ndarray] = []
    scored = picked = 0
    blocks: list[np.ndarray] = []
    for j in range(k):
        members = np.flatnonzero(labels == j)
        blocks += np.array_split(rng.permutation(members), -(-len(members) // MAX_BLOCK)) if len(members) > MAX_BLOCK \
            else [members]
    for idx in blocks:
        if len(idx) < 2:
            continue
        gap = a[idx] @ a[idx].T - r[idx] @ r[idx].T
        iu, ju = np.triu_indices(len(idx), 1)
        score = gap[iu, ju]
        m = max(1, int(np.ceil(select * len(score))))
        top = np.argpartition(-score, m - 1)[:m]
        chosen.append(idx[np.unique(np.concatenate([iu[top], ju[top]]))])
        scored += len(score)
        picked += m
    return (np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)), scored, picked


def cse(answers: np.ndarray, reference: np.ndarray, *, clusters: int = 20, select: float = 0.05, directions: int = 4,
        rounds: int = 1, seed: int = 0) -> CseResult:
    """WARDEN's CSE on bought ``answers`` (N, D) with the thief's own ``reference`` features (N, D') of
    the same images: the cleaned answers and what was removed (see the module docstring)."""
    answers = np.asarray(answers)
    reference = np.asarray(reference)
    if answers.ndim != 2 or reference.ndim != 2 or len(answers) != len(reference):
        raise ValueError(f"answers (N, D) and reference (N, D') must have the same rows, got {answers.shape} and "
                         f"{reference.shape}")
    n, d = answers.shape
    if not 1 <= clusters <= n // 2:
        raise ValueError(f"clusters must be in [1, {n // 2}] (half the {n} answers), got {clusters}; change --cse-clusters")
    if not 0 < select <= 1:
        raise ValueError(f"select is a share of pairs in (0, 1], got {select}; change --cse-select")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}; change --cse-rounds")
    if not 1 <= directions * rounds < d:
        raise ValueError(f"directions x rounds must be in [1, {d - 1}] (below the answer dimension {d}), got "
                         f"{directions} x {rounds}; change --cse-directions")
    if not (np.isfinite(answers).all() and np.isfinite(reference).all()):
        raise ValueError("answers and reference must be finite (no NaN or inf)")
    st = standardise(answers)
    ref = standardise(reference).unit
    rng = np.random.default_rng(seed)
    z = st.unit
    basis = np.zeros((0, d))
    selected: list[np.ndarray] = []
    steps: list[dict] = []
    for rnd in range(rounds):
        pred = predict_from_reference(z, ref, seed=seed + rnd)
        dev = z - pred  # what the thief's own features do not explain
        fit = 1 - float((dev**2).sum() / max(((z - z.mean(0)) ** 2).sum(), EPS))  # R^2, out of fold
        labels, _ = kmeans(z, clusters, seed=seed + rnd)
        unit_pred = pred / np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), EPS)
        sel, scored, picked = _select(z, unit_pred, labels, clusters, select, rng)
        if len(sel) < directions:
            raise ValueError(f"CSE selected only {len(sel)} answers, fewer than {directions} directions; raise --cse-select")
        x = dev[sel] - (dev[sel] @ basis.T) @ basis  # directions already removed stay removed
        _, sv, vt = np.linalg.svd(x, full_matrices=False)
        basis = np.linalg.qr(np.vstack([basis, vt[:directions]]).T)[0].T  # orthonormal (Gram-Schmidt)
        z = z - (z @ basis.T) @ basis
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), EPS)
        selected.append(sel)
        energy = float((sv**2).sum())
        steps.append({"round": rnd + 1, "cluster_sizes": np.bincount(labels, minlength=clusters).tolist(),
                      "pairs_scored": scored, "pairs_selected": picked, "selected": int(len(sel)),
                      "reference_fit": round(fit, 4),
                      "singular_values": [round(float(v), 4) for v in sv[: directions + 4]],
                      "explained": round(float((sv[:directions] ** 2).sum()) / max(energy, EPS), 4)})
    every = np.unique(np.concatenate(selected))
    details = {"rounds": steps, "removed": int(len(basis)), "selected": int(len(every))}
    return CseResult(st.to_raw(z).reshape(answers.shape), basis.astype(np.float32), every, details)


def perturb_images(images: np.ndarray, copies: int, *, sigma: float = 4.0, shift: int = 1, seed: int = 0) -> np.ndarray:
    """``copies`` perturbed versions of each uint8 (N, H, W, 3) image, image-major (image i's copies at
    i*copies .. i*copies + copies - 1): a random shift of at most ``shift`` pixels along each axis
    (edges replicated) plus Gaussian pixel noise of ``sigma`` (pixel units, clipped at 3 sigma), rounded
    and clipped to [0, 255]. The same seed gives the same copies."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}; change --spa-copies")
    if sigma < 0 or not np.isfinite(sigma):
        raise ValueError(f"sigma is a pixel noise level >= 0, got {sigma}; change --spa-sigma")
    if not 0 <= shift < min(images.shape[1:3]):
        raise ValueError(f"shift must be in [0, {min(images.shape[1:3]) - 1}] pixels, got {shift}; change --spa-shift")
    n, h, w, _ = images.shape
    out = np.empty((n * copies, h, w, 3), np.uint8)
    rng = np.random.default_rng(seed)
    chunk = 1024  # images per step (bounds the float memory); fixed, so the result does not depend on it
    for s in range(0, n, chunk):
        x = np.repeat(images[s : s + chunk], copies, axis=0)
        m = len(x)
        dy, dx = rng.integers(-shift, shift + 1, (2, m))
        if shift:
            pad = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
            for oy in range(-shift, shift + 1):
                for ox in range(-shift, shift + 1):
                    rows = np.flatnonzero((dy == oy) & (dx == ox))
                    x[rows] = pad[rows, shift + oy : shift + oy + h, shift + ox : shift + ox + w]
        noise = np.clip(rng.standard_normal(x.shape, dtype=np.float32), -3, 3) * np.float32(sigma)
        out[s * copies : s * copies + m] = np.clip(np.rint(x + noise), 0, 255).astype(np.uint8)
    return out


def nearest_neighbours(unit: np.ndarray, k: int) -> np.ndarray:
    """Indices (N, k) of each unit row's k most cosine-similar other rows (itself excluded), nearest first."""
    n = len(unit)
    if not 1 <= k < n:
        raise ValueError(f"neighbours must be in [1, {n - 1}] (fewer than the {n} answers), got {k}; change --spa-neighbours")
    unit = unit.astype(np.float32)
    chunk = max(1, 2**24 // n)  # rows of similarities at once (64 MB)
    out = np.empty((n, k), np.int64)
    for s in range(0, n, chunk):
        sim = unit[s : s + chunk] @ unit.T
        sim[np.arange(len(sim)), np.arange(s, s + len(sim))] = -np.inf
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1, kind="stable")
        out[s : s + chunk] = np.take_along_axis(part, order, 1)
    return out


def spa_scores(answers: np.ndarray, perturbed: np.ndarray, neighbours: int = 10) -> np.ndarray:
    """Per answer: its mean movement under its perturbations divided by the median movement of its
    ``neighbours`` nearest answers (cosine), both in the thief's standardised, normalised space."""
    answers = np.asarray(answers)
    perturbed = np.asarray(perturbed)
    if answers.ndim != 2 or perturbed.ndim != 3 or perturbed.shape[0] != answers.shape[0] \
            or perturbed.shape[2] != answers.shape[1] or perturbed.shape[1] < 1:
        raise ValueError(f"answers (N, D) and perturbed (N, P, D) with P >= 1 must match, got {answers.shape} and "
                         f"{perturbed.shape}")
    if not (np.isfinite(answers).all() and np.isfinite(perturbed).all()):
        raise ValueError("answers and perturbed answers must be finite (no NaN or inf)")
    n, p, d = perturbed.shape
    st = standardise(answers)
    moved = standardise(perturbed.reshape(n * p, d), st.center, st.scale).unit.reshape(n, p, d)
    move = np.linalg.norm(moved - st.unit[:, None], axis=2).mean(1)
    nb = nearest_neighbours(st.unit, neighbours)
    return move / np.maximum(np.median(move[nb], axis=1), EPS)


def spa_keep(scores: np.ndarray, drop: float = 0.1) -> np.ndarray:
    """Sorted indices of the answers kept once the ``drop`` share with the highest scores is removed."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one per answer (N,), got shape {scores.shape}")
    if not 0 <= drop < 1:
        raise ValueError(f"drop is a share in [0, 1), got {drop}; change --spa-drop")
    n_drop = int(round(drop * len(scores)))
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[n_drop:])
