"""Settings of ``verify`` (:class:`VerifyConfig`) and the names of its checks.

Only pydantic is imported here, so that ``heist-defend --help`` can list the options without
loading the models: the command line is built from these fields (their types, defaults and
descriptions).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.output_watermark import Fit

DI_CANDIDATES = (1, 3, 10)
METHODS = ("output_watermark", "watermark", "watermark_aligned", "dataset_inference", "dataset_inference_aligned", "query_log",
           "similarity")


class VerifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    alpha: float = Field(default=0.01, gt=0, lt=1, description=(
        "significance level of each decisive check; the overall verdict splits it among them (Bonferroni)"))
    wm_n: int = Field(default=500, ge=10, description="private images for the watermark (each rotated to every angle)")
    wm_margin: float = Field(default=0.05, ge=0, lt=0.5, description=(
        "a watermark says stolen only at accuracy >= 0.5 + margin (and p < alpha): the victim's predictor read on an "
        "unrelated, obfuscated space can stray from 50% by more than sampling noise"))
    wm_raw_min_cosine: float = Field(default=0.5, ge=-1, le=1, description=(
        "the raw watermark decides only when the suspect answers in the victim's coordinates: the mean cosine of "
        "row-standardised answers to the public queries must reach this. Elsewhere the victim's predictor reads a "
        "foreign space, whose accuracy can stray far from 50% either way: the row is reported as n/a, and "
        "watermark_aligned decides"))
    align_n: int = Field(default=1000, ge=10, description="public images for the alignment map and similarity")
    align_ridge: float = Field(default=1e-3, ge=0)
    di_fit: int = Field(default=1000, ge=10, description="private part A: GMM fit")
    di_private: int = Field(default=1000, ge=10, description="private part B: scored")
    di_public: int = Field(default=1000, ge=10, description="public images scored")
    di_public_split: str = Field(default="test", description="split used as public data for dataset inference")
    di_components: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto", description=f"GMM components; auto: the count in di_candidates ({', '.join(map(str, DI_CANDIDATES))}) "
                                    "whose membership signal is strongest on the victim itself (cross-fitted, no suspect data)")
    di_candidates: tuple[int, ...] = DI_CANDIDATES
    di_crossfit: bool = Field(default=True, description="also fit on B and score A (every private image scored once)")
    di_alternative: Literal["victim", "greater", "less", "two-sided"] = Field(
        default="victim", description="side of the DI t-test; victim: the side the victim's own members fall on "
                                      "(learned locally, its part A vs public images); greater: the paper's "
                                      "(members more likely)")
    di_margin: float = Field(default=0.1, ge=0, lt=1, description=(
        "smallest share of the victim's own membership effect (its Cohen's d on the same rows, measured locally) "
        "that counts as inherited: DI tests H0 'the suspect's effect is at most di_margin x the victim's' instead of "
        "'no effect' (0: the paper's test). Never less conservative than the zero-effect test"))
    owm_decoys: int = Field(default=1000, ge=100, description=(
        "decoy keys of the output watermark: drawn like the true key from the secret and scored on the same answers, "
        "their spread is the check's null"))
    owm_shrink: float = Field(default=0.1, ge=0, le=1, description=(
        "output watermark: shrinkage of the suspect's error covariance toward its mean variance in the generalised "
        "least-squares reading of the shift along each target (1: the plain projection, no weighting)"))
    owm_fit: Fit = Field(default="joint", description=(
        "output watermark: how the suspect's map is kept from learning the mark: joint (on every public image, with "
        "the key's mark weights as regressors of their own) or outside (on the images outside the key's regions only)"))
    qlog_n: int = Field(default=250, ge=20, description=(
        "query-log inference: the account's last logged images sent to the suspect, and as many held-out images "
        "(the last of di_public_split)"))
    qlog_margin: float = Field(default=0.05, ge=0, lt=1, description=(
        "query-log inference says stolen only when the suspect's median error ratio (logged / held-out) is below "
        "every reference's by this much (below 1 - margin without references), and p < alpha"))
    mi_dims: int = Field(default=16, ge=1, description="whitened dimensions for the MI estimator")
    seed: int = Field(default=0, description=(
        "seed of the private parts, the alignment map, the GMM fits and the random-init baseline of similarity"))
    methods: tuple[str, ...] = Field(default=METHODS, description="checks to run, a subset of: " + " ".join(METHODS))
