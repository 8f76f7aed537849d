"""Checkpoints: ``model.safetensors`` (weights) + ``config.json`` (everything else).

Loading never unpickles: weights are read with safetensors, the config with JSON and validated
by pydantic. A folder holding a pickle-based file (``.pt``, ``.pth``, ``.pkl``, ``.bin``, ``.ckpt``)
instead of ``model.safetensors`` is refused with a clear error, as is a ``model.safetensors`` that
is not one (a pickle renamed, a truncated file).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from shared.models import ProjectionHead, RotationPredictor, build_encoder

if TYPE_CHECKING:
    from shared.data.synthetic import DataSpec

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message says why."""


class Normalization(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD


class HeadSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden_dim: int = Field(gt=0)
    out_dim: int = Field(gt=0)


class WatermarkSpec(BaseModel):
    """Rotation watermark: rotations by ``angles`` degrees; label 1 when angle >= 180."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    angles: tuple[int, ...] = (0, 90, 180, 270)
    hidden_dim: int = 256

    def labels(self, quarter_turns: torch.Tensor) -> torch.Tensor:
        return (quarter_turns * 90 >= 180).long()


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["encoder-heist/1"] = "encoder-heist/1"
    kind: Literal["victim", "independent", "stolen", "random"] = "victim"
    arch: str
    width: int = Field(gt=0)
    input_size: int = 32
    representation_dim: int = Field(gt=0)
    normalization: Normalization = Field(default_factory=Normalization)
    head: HeadSpec | None = None
    watermark: WatermarkSpec | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def data_spec(self) -> DataSpec:
        """The benchmark the encoder was trained on (its data spec; the default procedural spec when it stored none)."""
        from shared.data.synthetic import DataSpec

        return DataSpec.model_validate(self.data.get("spec") or {})


class Encoder(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> representations; normalisation is part of the model."""

    mean: torch.Tensor  # buffers (register_buffer below)
    std: torch.Tensor

    def __init__(self, arch: str, width: int, norm: Normalization) -> None:
        super().__init__()
        self.backbone = build_encoder(arch, width)
        self.register_buffer("mean", torch.tensor(norm.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std).view(1, 3, 1, 1), persistent=False)
        self.out_dim = self.backbone.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)


class Checkpoint(nn.Module):
    """The encoder and, when the checkpoint has them, projection head and watermark predictor."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.arch, config.width, config.normalization)
        d = self.encoder.out_dim
        if d != config.representation_dim:
            raise CheckpointError(f"{config.arch} at width {config.width} gives {d}-d, config says {config.representation_dim}")
        self.head = ProjectionHead(d, config.head.hidden_dim, config.head.out_dim) if config.head else None
        self.watermark = RotationPredictor(d, config.watermark.hidden_dim) if config.watermark else None


def save_checkpoint(ckpt: Checkpoint, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": ckpt.config.format})
    (folder / (CONFIG + ".tmp")).write_text(ckpt.config.model_dump_json(indent=2))
    tmp.replace(folder / WEIGHTS)
    (folder / (CONFIG + ".tmp")).replace(folder / CONFIG)
    return folder


def read_config(folder: str | Path) -> EncoderConfig:
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG}; a checkpoint is a folder with {WEIGHTS} and {CONFIG}")
    try:
        return EncoderConfig.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as e:
        raise CheckpointError(f"{path}: invalid checkpoint config: {e}") from e


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder (expected {WEIGHTS} and {CONFIG} inside)")
    weights = folder / WEIGHTS
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f"; refusing pickle-based files {pickles}: convert them to safetensors" if pickles else ""
        raise CheckpointError(f"{folder}: no {WEIGHTS}{hint}")
    config = read_config(folder)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a valid safetensors file (pickles are never loaded): {e}") from e
    ckpt = Checkpoint(config)
    missing, unexpected = ckpt.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return ckpt.to(device).eval()
