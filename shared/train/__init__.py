"""Victim / independent encoder training (SimCLR + rotation watermark)."""

from shared.train.config import PRESETS, TrainConfig, get_preset

__all__ = ["PRESETS", "TrainConfig", "get_preset"]
