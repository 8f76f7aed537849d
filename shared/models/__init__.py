"""Encoders, projection heads and the rotation-watermark predictor."""

from shared.models.heads import ProjectionHead, RotationPredictor
from shared.models.resnet import ARCHITECTURES, build_encoder, representation_dim

__all__ = [
    "ARCHITECTURES",
    "ProjectionHead",
    "RotationPredictor",
    "build_encoder",
    "representation_dim",
]
