"""SimCLR training (shared/train): the loss falls, resume continues or refuses another config, the resume state's
cadence, presets validate; scripts/gpu_train.sh's CPU smoke run under torchrun (live)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data.synthetic import DataSpec, SplitSpec
from shared.train import TrainConfig, get_preset, simclr
from shared.train.simclr import train
from shared.train.state import STATE_JSON, load_state, save_state

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


def _record_saves(monkeypatch) -> list[int]:
    saved: list[int] = []
    real = simclr.save_state

    def spy(folder, model, opt, epoch, extra):
        saved.append(epoch)
        real(folder, model, opt, epoch, extra)

    monkeypatch.setattr(simclr, "save_state", spy)
    return saved


def test_state_cadence_and_exact_resume(data_root, tmp_path, monkeypatch):
    """With a long interval the state is written at the end only (or where stop_after ends the run);
    resuming from it ends with the uninterrupted run's weights; 0 writes after every epoch."""
    saved = _record_saves(monkeypatch)
    cfg = _cfg(epochs=3, train_size=128, state_every_s=1e9)  # 2 steps per epoch
    ref = train(cfg, tmp_path / "a", progress=False)
    assert saved == [3]
    saved.clear()
    train(cfg, tmp_path / "b", progress=False, stop_after=2)
    assert saved == [2]
    saved.clear()
    resumed = train(cfg.model_copy(update={"state_every_s": 0.0}), tmp_path / "b", progress=False)  # the interval is no part of the result
    assert saved == [3] and resumed.resumed_from == 2 and resumed.epochs_run == 1
    assert resumed.losses == ref.losses
    for (k, a), b in zip(ref.checkpoint.state_dict().items(), resumed.checkpoint.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    saved.clear()
    train(_cfg(epochs=2, train_size=128, state_every_s=0), tmp_path / "c", progress=False)
    assert saved == [1, 2]


def test_torn_resume_state_is_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    save_state(tmp_path, model, opt, 4, {"losses": [1.0] * 4})
    assert load_state(tmp_path, model, opt)["epoch"] == 4
    meta = (tmp_path / STATE_JSON).read_text().replace('"epoch": 4', '"epoch": 3')  # the JSON of an earlier write
    (tmp_path / STATE_JSON).write_text(meta)
    with pytest.raises(ValueError, match="weights are of epoch 4, its JSON of epoch 3"):
        load_state(tmp_path, model, opt)


def test_resume_refuses_other_config(data_root, tmp_path):
    train(_cfg(epochs=1), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        train(_cfg(epochs=1, lr=1e-3), tmp_path / "c", progress=False)


def test_presets_validate():
    for name in ("tiny", "cpu", "gpu-r18", "gpu-r34", "gpu-r50"):
        assert get_preset(name).preset == name
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


REPO = Path(__file__).resolve().parents[2]


def _gpu_train_smoke(tmp_path: Path, data_root: Path, nproc: int, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "HEIST_RESULTS_DIR": str(tmp_path / "results"), "HEIST_DATA_DIR": str(data_root),
           "RUN_DIR": str(tmp_path / "run"), "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_train.sh"), "--cpu-smoke", "--nproc", str(nproc), *extra], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=240)
    path = tmp_path / "results" / "cpu" / "gpu_train_smoke.json"
    assert path.is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    return r, json.loads(path.read_text())


@pytest.mark.live
@pytest.mark.slow
def test_gpu_train_script_cpu_smoke_on_two_processes(data_root, tmp_path):
    """The GPU training check's steps on the CPU: heist-server train under torchrun with two Gloo processes,
    rank 0 alone reporting, and the result file with its wall time and checks; then (--steal) the stealing
    table against the victim just trained, through its API."""
    r, result = _gpu_train_smoke(tmp_path, data_root, 2, "--steal")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert result["pass"] and result["processes"] == 2 and result["exit_code"] == 0
    assert result["epochs"] == 2 and len(result["losses"]) == 2 and result["train_images_per_s"] > 0
    assert 0 < result["train_seconds"] < result["wall_seconds"] <= result["limit_seconds"]
    assert {c["check"] for c in result["checks"] if c["enforced"]} == {"all 2 epochs ran", "losses finite and falling"}
    assert "probe_shape" in result["probes"] and "torch.distributed.run --standalone --nproc-per-node 2" in result["command"]
    assert "processes=2" in r.stdout and r.stdout.count("checkpoint written") == 1  # rank 0 reports, alone
    assert (tmp_path / "run" / "config.json").is_file() and "PASS  all 2 epochs ran" in r.stdout
    table = json.loads((tmp_path / "results" / "attack" / "attack_table_smoke.json").read_text())
    assert [(row["loss"], row["queries"]) for row in table["rows"]] == [("mse", 64)] and table["config"]["width"] == 4
    assert "5. stealing table" in r.stdout and table["victim_api"]["probe_shape"] > 0


@pytest.mark.live
@pytest.mark.slow
def test_gpu_train_script_fails_when_training_fails(data_root, tmp_path):
    """A batch of 64 does not split over 3 processes: the train command fails, the result says so, exit 1."""
    r, result = _gpu_train_smoke(tmp_path, data_root, 3)
    assert r.returncode == 1 and not result["pass"] and result["exit_code"] != 0
    assert result["checks"] == [{"check": f"train command finished (exit {result['exit_code']})", "pass": False, "enforced": True}]
    assert "does not split over 3 processes" in r.stderr
