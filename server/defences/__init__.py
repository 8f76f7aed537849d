"""Defence pipeline: per-tier chains of gates (before inference) and transforms (after).

Defences (each in its own module, registered by name for the tier config):

- ``rate_limit`` (from the tier's ``rate_limit``), ``noop``;
- ``gaussian_noise``, ``rounding``, ``topk``: output perturbations (:mod:`server.defences.perturb`);
- ``similar_query``: FAISS search of the account's (and all accounts') head-projection history
  (:mod:`server.defences.similarity`);
- ``b4b``: SimHash coverage, coverage-priced noise, per-account transformation (:mod:`server.defences.b4b`);
- ``pow``: calibrated proof of work (:mod:`server.defences.pow`);
- ``output_watermark``: keyed-region output watermark (:mod:`server.defences.output_watermark`).
"""

from server.defences import b4b, output_watermark, perturb, pow, similarity  # noqa: F401  (register the defences)
from server.defences.base import (
    REGISTRY,
    Defence,
    DefenceContext,
    DefencePipeline,
    DefenceRefusal,
    DefenceRequest,
    Rejection,
    build_pipeline,
    register,
)

for _cls in (perturb.GaussianNoise, perturb.Rounding, perturb.TopK, similarity.SimilarQuery, b4b.B4B, pow.PowGate,
             output_watermark.OutputWatermark):
    register(_cls)

__all__ = ["REGISTRY", "Defence", "DefenceContext", "DefencePipeline", "DefenceRefusal", "DefenceRequest", "Rejection",
           "build_pipeline", "register"]
