"""Checkpoints: safetensors + config round trip, pickles refused, config mismatches named."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from shared.checkpoint import (
    Checkpoint,
    CheckpointError,
    EncoderConfig,
    HeadSpec,
    WatermarkSpec,
    load_checkpoint,
    save_checkpoint,
)
from shared.models import representation_dim


def _config() -> EncoderConfig:
    d = representation_dim("resnet18", 8)
    return EncoderConfig(arch="resnet18", width=8, representation_dim=d, head=HeadSpec(hidden_dim=d, out_dim=16),
                         watermark=WatermarkSpec(), metrics={"probe_shape": 0.5})


def test_round_trip_same_outputs(tmp_path):
    torch.manual_seed(0)
    ck = Checkpoint(_config()).eval()
    x = torch.rand(4, 3, 32, 32)
    save_checkpoint(ck, tmp_path / "ck")
    back = load_checkpoint(tmp_path / "ck")
    assert back.config.metrics == {"probe_shape": 0.5}
    with torch.no_grad():
        assert torch.equal(ck.encoder(x), back.encoder(x))
        assert torch.equal(ck.head(ck.encoder(x)), back.head(back.encoder(x)))
        assert torch.equal(ck.watermark(ck.encoder(x)), back.watermark(back.encoder(x)))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_disguised_as_safetensors_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(Checkpoint(_config()), tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").write_bytes(pickle.dumps({"w": _Boom()}))
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(tmp_path / "ck")
    assert not (tmp_path / "PWNED").exists()


def test_pickle_checkpoint_file_is_refused(tmp_path):
    ck = tmp_path / "ck"
    save_checkpoint(Checkpoint(_config()), ck)
    (ck / "model.safetensors").unlink()
    torch.save({"state": 1}, ck / "model.pt")
    with pytest.raises(CheckpointError, match="refusing pickle"):
        load_checkpoint(ck)


def test_config_mismatch_and_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "nope")
    ck = tmp_path / "ck"
    save_checkpoint(Checkpoint(_config()), ck)
    text = (ck / "config.json").read_text().replace('"width": 8', '"width": 16')
    (ck / "config.json").write_text(text)
    with pytest.raises(CheckpointError):
        load_checkpoint(ck)
