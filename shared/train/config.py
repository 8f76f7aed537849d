"""Training configuration as validated data, and the named presets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.augment import AugmentSpec
from shared.data.synthetic import DataSpec


class TrainConfig(BaseModel):
    """One training run. ``batch_size`` is the global batch: under torchrun each of N processes takes
    ``batch_size / N`` images of it."""

    model_config = ConfigDict(extra="forbid")
    preset: str = "custom"
    kind: Literal["victim", "independent"] = "victim"
    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    width: int = Field(default=16, ge=4)
    data: DataSpec = Field(default_factory=DataSpec)
    train_split: str = "train"
    train_size: int | None = Field(default=None, ge=2, description="train on this prefix of the split (the private set); None: all of it")
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=256, ge=2)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=0.2, gt=0)
    proj_dim: int = Field(default=64, gt=0)
    watermark: bool = True
    watermark_weight: float = Field(default=1.0, ge=0)
    watermark_fraction: float = Field(default=0.25, gt=0, le=1)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True
    threads: int | None = None
    state_every_s: float = Field(default=60.0, ge=0, description="seconds between resume states, written at an epoch's end "
                                 "(0: every epoch); the run's last epoch always writes one")
    probe_train_size: int | None = Field(default=None, description="cap on probe training images (None: whole split)")


# Fields that change when and how a run works, not what it computes: a resume state written under other
# values of these is continued.
NOT_IN_RESULT = frozenset({"state_every_s"})


def result_fields(config: dict) -> dict:
    """A config dump without :data:`NOT_IN_RESULT`: what a resume state must match."""
    return {k: v for k, v in config.items() if k not in NOT_IN_RESULT}


PRESETS: dict[str, TrainConfig] = {
    # Plumbing and tests: about a minute on a 2-core CPU, data included.
    "tiny": TrainConfig(preset="tiny", width=8, data=DataSpec().scaled(0.05), epochs=3, batch_size=128, lr=3e-3),
    # The default victim on a 2-core CPU: at most 15 minutes of training.
    "cpu": TrainConfig(preset="cpu", width=16, epochs=10, batch_size=256),
    # GPU presets: full width, the paper's schedule, AMP and channels_last.
    "gpu-r18": TrainConfig(preset="gpu-r18", arch="resnet18", width=64, epochs=200, batch_size=512, lr=1e-3,
                           warmup_epochs=10, proj_dim=128, amp=True, device="cuda"),
    "gpu-r34": TrainConfig(preset="gpu-r34", arch="resnet34", width=64, epochs=200, batch_size=512, lr=1e-3,
                           warmup_epochs=10, proj_dim=128, amp=True, device="cuda"),
    "gpu-r50": TrainConfig(preset="gpu-r50", arch="resnet50", width=64, epochs=200, batch_size=512, lr=1e-3,
                           warmup_epochs=10, proj_dim=128, amp=True, device="cuda"),
}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].model_copy(deep=True)
