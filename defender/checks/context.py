"""What the checks of one verification share: the victim, the suspect, the data and the answers.

Resources a check can name in its ``needs``:

- ``PUBLIC``: the suspect's and the victim's answers to the first ``align_n`` public images
  (all of which must exist);
- ``COORDINATES``: whether those answers are in the victim's coordinates (mean cosine of the
  row-standardised answers); it queries the same public images;
- ``ALIGNMENT``: the map from the suspect's answers to the victim's, fitted on the public ones;
- ``WATERMARK_IMAGES``: ``wm_n`` images of private part B;
- ``DI_IMAGES``: ``di_fit`` images of private part A and ``di_private`` of part B.

Everything is checked before the first query. The public queries come first, when a selected
check needs them; what a single kind of check uses (rotated images, the dataset-inference
answers) is built by the first check that asks for it (:meth:`Context.memo`), so the suspect is
queried in the order the checks run and never for a check that was not selected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from defender.config import VerifyConfig
from defender.stats import Alignment, fit_alignment, standardise_rows
from defender.suspects import Suspect
from shared.checkpoint import Checkpoint
from shared.data.synthetic import DataSpec, load_split, private_set_size, private_split_indices
from shared.output_watermark import WatermarkCalibration

PUBLIC = "public"
COORDINATES = "coordinates"
ALIGNMENT = "alignment"
WATERMARK_IMAGES = "watermark images"
DI_IMAGES = "dataset inference images"

Encode = Callable[[Any, np.ndarray], np.ndarray]


class Context:
    """The shared state of one ``verify`` call, validated and prepared for the checks in ``needs``.

    ``encode(encoder, images)`` runs one of the defender's local encoders (the victim, a
    reference, a random init); ``need`` collects how many images each check needed, ``arrays``
    the values kept for plots.
    """

    def __init__(self, victim: Checkpoint, suspect: Suspect, cfg: VerifyConfig, needs: Iterable[str], *,
                 references: dict[str, Checkpoint], encode: Encode, progress: bool = False,
                 wm_references: dict[str, Checkpoint] | None = None,
                 owm: tuple[WatermarkCalibration, bytes] | None = None, query_log: np.ndarray | None = None) -> None:
        self.victim, self.suspect, self.cfg, self.references = victim, suspect, cfg, references
        self.wm_references = wm_references or {}
        self.owm = owm  # the output watermark's calibration and the server secret its key comes from
        self.query_log = query_log  # one account's logged queries, uint8 (N, H, W, 3) (query_log check)
        if query_log is not None and query_log.shape[1:] != (victim.config.input_size, victim.config.input_size, 3):
            raise ValueError(f"the query log holds {query_log.shape[1:]} images, the victim takes "
                             f"{victim.config.input_size} x {victim.config.input_size} x 3")
        self.encode, self.progress = encode, progress
        self.needs = frozenset(needs)
        self.need: dict[str, int] = {}
        self.arrays: dict = {}
        self._memo: dict[str, Any] = {}
        self.spec = DataSpec.model_validate(victim.config.data["spec"])
        if cfg.di_public_split not in self.spec.splits or cfg.di_public_split in ("train",):
            raise ValueError(f"di_public_split must be a split the victim was not trained on, got {cfg.di_public_split!r}")
        self.part_a, self.part_b = self._private_parts()
        self.train = load_split(self.spec, "train", progress=progress).images
        self.public = load_split(self.spec, "public", progress=progress).images
        if cfg.align_n > len(self.public) and self.needs & {PUBLIC, ALIGNMENT}:
            raise ValueError(f"align_n={cfg.align_n} but the public split has {len(self.public)} images")
        self.public_queries: np.ndarray | None = None
        self.public_answers: np.ndarray | None = None
        self.victim_public_answers: np.ndarray | None = None
        self.raw_cosine: float | None = None
        self.alignment: Alignment | None = None
        if self.needs & {PUBLIC, COORDINATES, ALIGNMENT}:
            self._query_public()

    def _private_parts(self) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        sizes = ([cfg.di_fit, cfg.di_private] if DI_IMAGES in self.needs else []) + (
            [cfg.wm_n] if WATERMARK_IMAGES in self.needs else [])
        n_private = max(sizes, default=1)  # only the checks asked for need private images
        pool = self.victim.config.data.get("train_size")
        try:
            return private_split_indices(self.spec, size=n_private, seed=cfg.seed, pool=pool)
        except ValueError as e:  # before any query: say which settings to lower
            n_train = private_set_size(self.spec, pool)
            raise ValueError(f"the checks need two private parts of {n_private} images (di_fit={cfg.di_fit}, "
                             f"di_private={cfg.di_private}, wm_n={cfg.wm_n}) but the victim's private set has {n_train}: "
                             f"use at most {n_train // 2} each (heist-defend verify --di-fit/--di-private/--wm-n)") from e

    def _query_public(self) -> None:
        """Public queries: the alignment map, the raw watermark's premise and similarity."""
        cfg = self.cfg
        pub = self.public_queries = self.public[: cfg.align_n]
        s_pub = self.public_answers = self.suspect.embed(pub, "public queries")
        v_pub = self.victim_public_answers = self.victim_public()[: cfg.align_n]
        self.need["public (alignment, similarity)"] = len(pub)
        if s_pub.shape[1] == v_pub.shape[1]:  # are the answers in the victim's coordinates? (the raw watermark's premise)
            self.raw_cosine = float((standardise_rows(s_pub) * standardise_rows(v_pub)).sum(1).mean())
        if ALIGNMENT in self.needs:
            self.alignment = fit_alignment(s_pub, v_pub, ridge=cfg.align_ridge, seed=cfg.seed)

    def encode_victim(self, images: np.ndarray) -> np.ndarray:
        """The victim's answers (local, no queries)."""
        return self.encode(self.victim.encoder, images)

    def victim_public(self) -> np.ndarray:
        """The victim's answers on the first public images (enough for alignment and dataset inference), encoded once."""
        n = min(len(self.public), max(self.cfg.align_n, self.cfg.di_public))
        return self.memo("victim public", lambda: self.encode_victim(self.public[:n]))

    def memo(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()``, computed by the first check that asks for ``key`` and shared with the others."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]
