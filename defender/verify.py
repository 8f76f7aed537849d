"""``verify``: query a suspect on the defender's data and run every ownership check.

The victim is the defender's own checkpoint (local); the suspect is only queried. Queries:

- public images (``align_n``): the victim's and the suspect's answers fit the alignment map and
  feed the similarity scores and the output watermark;
- rotated private images (part B, ``wm_n`` images x the watermark's angles): the watermark;
- with a query log: ``qlog_n`` of the account's logged images and as many held-out images;
- private part A (``di_fit``), private part B (``di_private``), public data (``di_public`` images of
  the ``di_public_split`` split): dataset inference. Its side (``di_alternative``) is by default
  learned on the victim itself (its part A vs public-split images, no suspect queries): the
  paper's "members are more likely" or the opposite, which contrastive memorisation can give.
  With ``references`` (the defender's own encoders that never saw the private data), the test
  runs on reference-calibrated scores (:func:`defender.stats.calibrate`); no extra queries.

Identical images are paid for once (the 0-degree copies of part B are part B). The report says
how many images each check needed and how many the suspect was actually sent.

Each check is a module of :mod:`defender.checks` (its logic, what it needs); they share one
:class:`defender.checks.context.Context`, and the settings are :class:`defender.config.VerifyConfig`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from defender.checks import CHECKS, Check, Context, Verdict
from defender.checks.dataset_inference import _REFERENCE_CACHE  # noqa: F401 - the local encoders' tests, cleared from here too
from defender.config import METHODS, VerifyConfig
from defender.suspects import Suspect
from shared.checkpoint import Checkpoint
from shared.output_watermark import WatermarkCalibration
from shared.probe import extract_features

DECISIVE = tuple(c.name for c in CHECKS if c.decisive)


@dataclass
class VerifyReport:
    victim: str
    suspect: dict
    config: dict
    rows: list[Verdict]
    overall: str
    overall_rule: str
    queries: dict
    seconds: float
    arrays: dict = field(default_factory=dict, repr=False)  # for plots (log-likelihoods), not serialised

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("arrays")
        return d

    def row(self, method: str) -> Verdict | None:
        return next((r for r in self.rows if r.method == method), None)


def _encode(encoder, images: np.ndarray) -> np.ndarray:
    """A local encoder's answers; every check encodes through this module's ``extract_features``."""
    return extract_features(encoder, images)


def _overall(rows: list[Verdict], checks: list[Check], cfg: VerifyConfig) -> tuple[str, str]:
    """The verdict over the decisive rows (Bonferroni) and the rule it followed."""
    by_name = {c.name: c for c in checks}
    decisive = [r for r in rows if by_name[r.method].decisive and r.p_value is not None]
    k = max(1, len(decisive))
    stolen = any(r.p_value < cfg.alpha / k and by_name[r.method].material(r, cfg) for r in decisive)
    rule = (f"stolen when any of {[r.method for r in decisive]} has p < alpha/{k} = {cfg.alpha / k:.2g} "
            f"(Bonferroni over the decisive checks; a watermark also needs accuracy >= its chance level + {cfg.wm_margin:.2f}); "
            f"similarity is reported, not decided on")
    return ("stolen" if stolen else "independent"), rule


def verify(victim: Checkpoint, suspect: Suspect, cfg: VerifyConfig | None = None, victim_name: str = "victim",
           progress: bool = False, references: dict[str, Checkpoint] | None = None,
           wm_references: dict[str, Checkpoint] | None = None,
           owm: tuple[WatermarkCalibration, bytes] | None = None, query_log: np.ndarray | None = None) -> VerifyReport:
    """Run the checks of ``cfg.methods`` on ``suspect``.

    ``references``: the defender's own encoders that never saw the private data (e.g. trained on
    public data). When given, dataset inference runs on reference-calibrated scores
    (:func:`defender.stats.calibrate`); the paper's raw test stays in each row's detail.
    ``wm_references``: the defender's own encoders without the watermark. When given, the watermarks'
    chance level is the highest accuracy the victim's predictor reaches on a reference's aligned
    answers instead of 50% (:func:`defender.checks.watermark.chance_level`).
    ``owm``: the output watermark's calibration and the server secret (``output_watermark`` check).
    ``query_log``: one account's logged queries, uint8 (N, H, W, 3) (``query_log`` check).
    """
    cfg = cfg or VerifyConfig()
    unknown = set(cfg.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    t0 = time.perf_counter()
    checks = [c for c in CHECKS if c.name in cfg.methods]
    ctx = Context(victim, suspect, cfg, needs=set().union(*(c.needs for c in checks)), references=references or {},
                  encode=_encode, progress=progress, wm_references=wm_references, owm=owm, query_log=query_log)
    rows = [row for check in checks for row in check.run(ctx)]
    overall, rule = _overall(rows, checks, cfg)
    queries = {"needed": ctx.need, "needed_total": int(sum(ctx.need.values())), "sent": suspect.queries,
               "requests": suspect.requests}
    return VerifyReport(victim=victim_name, suspect=suspect.describe(), config=cfg.model_dump(), rows=rows, overall=overall,
                        overall_rule=rule, queries=queries, seconds=round(time.perf_counter() - t0, 2), arrays=ctx.arrays)
