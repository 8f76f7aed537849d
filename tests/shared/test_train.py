"""SimCLR training (shared/train): the loss falls, resume continues or refuses another config, presets validate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.data.synthetic import DataSpec, SplitSpec
from shared.train import TrainConfig, get_preset
from shared.train.simclr import train

SPEC = DataSpec(splits={"train": SplitSpec(domain="photo", size=500), "test": SplitSpec(domain="photo", size=250)})


def _cfg(**kw) -> TrainConfig:
    base = dict(width=4, data=SPEC, epochs=3, batch_size=64, lr=3e-3, warmup_epochs=0.5, seed=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_tiny_training_loss_falls(data_root, tmp_path):
    out = train(_cfg(epochs=4), tmp_path / "run", progress=False)
    assert len(out.losses) == 4
    assert out.losses[-1] < out.losses[0] - 0.05, out.losses
    assert np.isfinite(out.losses).all()


def test_resume_continues_from_last_epoch(data_root, tmp_path):
    cfg = _cfg(epochs=2)
    ref = train(cfg, tmp_path / "a", progress=False)
    first = train(cfg, tmp_path / "b", progress=False, stop_after=1)  # as if killed after epoch 1
    assert first.epochs_run == 1
    resumed = train(cfg, tmp_path / "b", progress=False)
    assert resumed.resumed_from == 1 and resumed.epochs_run == 1
    np.testing.assert_allclose(resumed.losses, ref.losses, rtol=1e-4)
    for (k, a), b in zip(ref.checkpoint.state_dict().items(), resumed.checkpoint.state_dict().values(), strict=False):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def test_resume_refuses_other_config(data_root, tmp_path):
    train(_cfg(epochs=1), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        train(_cfg(epochs=1, lr=1e-3), tmp_path / "c", progress=False)


def test_presets_validate():
    for name in ("tiny", "cpu", "gpu-r18", "gpu-r34", "gpu-r50"):
        assert get_preset(name).preset == name
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
