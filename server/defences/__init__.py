"""Defence pipeline: per-tier chains of gates (before inference) and transforms (after).

The defences themselves (noise, similar-query perturbation, B4B, calibrated PoW) are added to
:data:`REGISTRY` by the defences issue; this package fixes the hook points, the rate-limit gate
and a no-op policy.
"""

from server.defences.base import REGISTRY, Defence, DefenceContext, DefencePipeline, DefenceRequest, Rejection, build_pipeline

__all__ = ["REGISTRY", "Defence", "DefenceContext", "DefencePipeline", "DefenceRequest", "Rejection", "build_pipeline"]
