"""Multi-process training (shared/train/distributed.py) under real ``torchrun --nproc-per-node 2``.

The live tests start one torchrun job (this module as the worker, Gloo on the CPU) that runs the
production code on two ranks: ``train()`` for one SimCLR step, one stealing step through
``StealModel`` under DDP, and ``train_stolen()`` for two steps. This process then recomputes each
step in one process on the same 2 x B images and compares loss, gradients and weights.

On the CPU, ``torch.nn.SyncBatchNorm`` refuses to run (torch 2.13 raises for CPU tensors, Gloo or
not), so BatchNorm normalises each rank's slice; the one-process reference therefore runs the
encoder on each rank's B images separately and everything after it (projections, NT-Xent, InfoNCE,
AdamW) on all 2B at once. With two or more GPUs the same job runs on CUDA with SyncBatchNorm and the
reference runs the encoder once on all 2B images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from shared.augment import to_float
from shared.data.synthetic import DataSpec, SplitSpec
from shared.train import TrainConfig, distributed
from shared.train.distributed import World, rank_slice

REPO = Path(__file__).resolve().parents[2]
G = 32  # the global batch of the tests (16 images per rank)


def _simclr_cfg(device: str) -> TrainConfig:
    data = DataSpec(splits={"train": SplitSpec(domain="photo", size=64)})
    return TrainConfig(width=4, proj_dim=16, data=data, train_size=G, epochs=1, batch_size=G, lr=1e-3, warmup_epochs=0,
                       channels_last=False, device=device, state_every_s=0)


def _steal_cfg(device: str, epochs: int = 1):
    from attacker.steal import StealConfig

    return StealConfig(loss="infonce", width=4, batch_size=G, epochs=epochs, lr=1e-3, device=device)


def _steal_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.standard_normal((n, 24)).astype(np.float32)


def _exact_math() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in module.named_parameters()}


# ---- the torchrun worker --------------------------------------------------------------------------------


def _worker(out: Path, device_name: str) -> None:
    from attacker.steal import build_steal, train_stolen
    from shared.train.simclr import train

    _exact_math()
    world, device = distributed.init(torch.device(device_name))
    r = world.rank
    facts: dict = {"world": world.size, "device": str(device)}
    if device.type == "cpu":
        try:
            torch.nn.SyncBatchNorm(3).train()(torch.randn(4, 3))
            facts["syncbn_cpu"] = "ran"
        except ValueError as e:
            facts["syncbn_cpu"] = str(e)

    # 1. one SimCLR step of train(): rank 0 writes the resume state (weights and AdamW moments)
    o = train(_simclr_cfg(device_name), out / "simclr", progress=False)
    facts["simclr_losses"] = o.losses
    facts["simclr_processes"] = o.processes
    _save(out / f"simclr_rank{r}.safetensors", _params(o.checkpoint))

    # 2. one stealing step (InfoNCE) under DDP: the averaged gradients
    images, answers = _steal_data(G)
    scfg = _steal_cfg(device_name)
    parts = build_steal(scfg, answers, device)
    model = distributed.wrap(parts.model, device)
    model.train()
    sl = rank_slice(0, G, world)
    loss = model(to_float(torch.from_numpy(images[sl])).to(device), torch.from_numpy(answers[sl]).to(device), None)
    loss.backward()
    facts["steal_loss"] = loss.item()
    _save(out / f"steal_grads_rank{r}.safetensors",
          {k: p.grad for k, p in parts.model.named_parameters() if p.grad is not None})

    # 3. train_stolen() end to end: two epochs of one step
    images, answers = _steal_data(G)
    ck, hist = train_stolen(images, answers, _steal_cfg(device_name, epochs=2), progress=False)
    facts["steal_history"] = hist["losses"]
    _save(out / f"stolen_rank{r}.safetensors", _params(ck))
    if world.main:
        (out / "facts.json").write_text(json.dumps(facts))
    distributed.shutdown()


# ---- the one-process references ------------------------------------------------------------------------


def _simclr_reference(device: torch.device, per_rank_bn: bool) -> tuple[float, torch.nn.Module, torch.optim.Optimizer]:
    from shared.data.synthetic import load_split
    from shared.train.simclr import (
        build_checkpoint,
        contrastive_loss,
        encode,
        epoch_generator,
        lr_at,
        make_batch,
        make_optimizer,
        watermark_batch_size,
    )

    cfg = _simclr_cfg(device.type)
    images = torch.from_numpy(load_split(cfg.data, "train", progress=False).images[: cfg.train_size])
    perm = torch.from_numpy(np.random.default_rng([cfg.seed, 0]).permutation(len(images)))
    ckpt = build_checkpoint(cfg).to(device)
    opt = make_optimizer([p for p in ckpt.parameters() if p.requires_grad], cfg, device)
    b = G // 2
    batches, ks = [], []
    for r in range(2):
        w = World(r, 2)
        batch, k = make_batch(to_float(images[perm[rank_slice(0, G, w)]]).to(device), cfg, epoch_generator(cfg, 0, w),
                              watermark_batch_size(cfg, b))
        batches.append(batch)
        ks.append(k)
    assert ks[0] is not None and ks[1] is not None
    n_wm = len(ks[0])
    # a rank's rows: its two views (2b), then its rotated crops
    if per_rank_bn:  # encoder and head as each rank runs them
        outs = [encode(ckpt, x, n_wm) for x in batches]
        zs, ls = [o[0] for o in outs], [o[1] for o in outs]
    else:  # SyncBatchNorm: statistics over both ranks' rows
        assert ckpt.head is not None and ckpt.watermark is not None
        ys = ckpt.encoder(torch.cat(batches)).split([len(x) for x in batches])
        zs = list(ckpt.head(torch.cat([y[: 2 * b] for y in ys])).split(2 * b))
        ls = list(ckpt.watermark(torch.cat([y[2 * b :] for y in ys])).split(n_wm))
    z = torch.cat([zs[0][:b], zs[1][:b], zs[0][b:], zs[1][b:]])
    loss = contrastive_loss(ckpt, z, torch.cat([t for t in ls if t is not None]), torch.cat(ks), cfg)
    for group in opt.param_groups:
        group["lr"] = lr_at(0, 1, 0, cfg.lr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item(), ckpt, opt


def _steal_features(model, x: torch.Tensor, per_rank_bn: bool) -> torch.Tensor:
    """The stolen outputs of a global batch: per rank's half (BatchNorm per rank, as on the CPU) or at once."""
    if not per_rank_bn:
        return model.features(x)
    return torch.cat([model.features(x[rank_slice(0, len(x), World(r, 2))]) for r in range(2)])


def _steal_reference_grads(device: torch.device, per_rank_bn: bool) -> tuple[float, dict[str, torch.Tensor]]:
    from attacker.steal import build_steal

    images, answers = _steal_data(G)
    parts = build_steal(_steal_cfg(device.type), answers, device)
    parts.model.train()
    s = _steal_features(parts.model, to_float(torch.from_numpy(images)).to(device), per_rank_bn)
    loss = parts.model.crit(s, torch.from_numpy(answers).to(device), None)
    loss.backward()
    return loss.item(), {k: p.grad for k, p in parts.model.named_parameters() if p.grad is not None}


def _stolen_reference(device: torch.device, per_rank_bn: bool) -> tuple[list[float], torch.nn.Module, dict[str, torch.Tensor]]:
    """train_stolen's run in one process: the same order of queries, schedule and Adam; returns the loss
    history, the checkpoint and Adam's first moments by parameter name."""
    from attacker.steal import build_steal
    from shared.train.simclr import lr_at

    images, answers = _steal_data(G)
    cfg = _steal_cfg(device.type, epochs=2)
    parts = build_steal(cfg, answers, device)
    parts.model.train()
    x_all, v_all = torch.from_numpy(images), torch.from_numpy(answers)
    g = torch.Generator().manual_seed(cfg.seed)
    steps, total = len(images) // G, len(images) // G * cfg.epochs
    history, step = [], 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(images), generator=g)
        losses = []
        for b in range(steps):
            idx = perm[b * G : (b + 1) * G]
            s = _steal_features(parts.model, to_float(x_all[idx]).to(device), per_rank_bn)
            loss = parts.model.crit(s, v_all[idx].to(device), None)
            for grp in parts.opt.param_groups:
                grp["lr"] = lr_at(step, total, max(1, total // 20), cfg.lr)
            parts.opt.zero_grad()
            loss.backward()
            parts.opt.step()
            losses.append(loss.item())
            step += 1
        history.append(sum(losses) / steps)
    by_id = {id(p): k for k, p in parts.model.named_parameters()}
    names = [by_id[id(p)] for p in parts.opt.param_groups[0]["params"]]
    moments = {names[pid]: st["exp_avg"] for pid, st in parts.opt.state_dict()["state"].items()}
    return history, parts.ckpt, {k.removeprefix("ckpt."): v for k, v in moments.items() if k.startswith("ckpt.")}


def _weights_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], moments: dict[str, torch.Tensor],
                   lr: float) -> None:
    """Weights after Adam steps agree wherever the gradient is no rounding noise: Adam moves a weight by
    about lr per step whatever its gradient's size, so one of noise may go either way (2 x lr apart).
    Compared: every element whose first moment is at least 1/100 of the largest, to lr / 2."""
    assert got.keys() == want.keys() == moments.keys()
    top = max(m.abs().max().item() for m in moments.values())
    checked = total = 0
    for k in got:
        mask = moments[k].cpu().abs() >= 1e-2 * top
        diff = (got[k].cpu() - want[k].cpu()).abs()[mask]
        assert not diff.numel() or diff.max().item() <= 0.5 * lr, f"weights {k}: differ by {diff.max().item():.2e}"
        checked, total = checked + int(mask.sum()), total + mask.numel()
    assert checked > total // 5, f"only {checked} of {total} weights had a clear gradient"


# ---- the tests -----------------------------------------------------------------------------------------

DEVICES = [pytest.param("cpu"),
           pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (NCCL)"))]


@pytest.fixture(scope="module", params=DEVICES)
def ddp_run(request, data_root, tmp_path_factory) -> tuple[str, Path, dict]:
    """One ``torchrun --standalone --nproc-per-node 2`` job of :func:`_worker`; its files and facts."""
    device = request.param
    out = tmp_path_factory.mktemp(f"ddp-{device}")
    env = {**os.environ, "HEIST_DATA_DIR": str(data_root), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "tests.shared.test_ddp", "worker", str(out), device]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return device, out, json.loads((out / "facts.json").read_text())


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str, tol: float = 1e-4) -> float:
    """Every tensor of ``a`` within ``tol`` x the tensor's largest magnitude in ``b`` (float32 sums in another
    order differ in the last bits), that magnitude at least 1/100 of the largest of all (a bias before
    BatchNorm has a gradient of rounding noise); returns the largest relative difference."""
    assert a.keys() == b.keys(), what
    floor = 1e-2 * max(v.abs().max().item() for v in b.values())
    worst = 0.0
    for k in a:
        x, y = a[k].cpu().double(), b[k].cpu().double()
        rel = (x - y).abs().max().item() / max(y.abs().max().item(), floor, 1e-30)
        assert rel <= tol, f"{what} {k}: differs by {rel:.2e} of its largest value"
        worst = max(worst, rel)
    return worst


def _moments(opt: torch.optim.Optimizer, names: list[str], key: str) -> dict[str, torch.Tensor]:
    state = opt.state_dict()["state"]
    return {f"{names[pid]}.{key}": st[key] for pid, st in state.items()}


@pytest.mark.live
@pytest.mark.slow
def test_simclr_step_of_two_ranks_equals_one_process(ddp_run):
    """train() under torchrun, 2 ranks x 16 images, one step: the loss, AdamW's first moment (0.1 x the
    averaged gradient), its second moment and the weights equal one process's step on the 32 images."""
    device, out, facts = ddp_run
    _exact_math()
    per_rank_bn = device == "cpu"
    assert facts["world"] == 2 and facts["simclr_processes"] == 2
    loss, ckpt, opt = _simclr_reference(torch.device(device), per_rank_bn)
    assert facts["simclr_losses"] == pytest.approx([loss], rel=1e-5)
    state = load_file(str(out / "simclr" / "train_state.safetensors"))  # written by rank 0 only
    names = [k for k, p in ckpt.named_parameters() if p.requires_grad]
    for key in ("exp_avg", "exp_avg_sq"):
        got = {f"{names[int(k.split('.')[1])]}.{key}": v for k, v in state.items() if k.startswith("opt.") and k.endswith(f".{key}")}
        _close(got, _moments(opt, names, key), f"AdamW {key}")
    grad = _moments(opt, names, "exp_avg")
    _weights_close({k: state[f"model.{k}"] for k in names}, _params(ckpt), {k: grad[f"{k}.exp_avg"] for k in names},
                   _simclr_cfg(device).lr)
    rank1 = load_file(str(out / "simclr_rank1.safetensors"))
    _close(load_file(str(out / "simclr_rank0.safetensors")), rank1, "rank 0 vs rank 1", tol=0)
    if per_rank_bn:  # BatchNorm over all 32 images at once is another computation: the reference must slice
        _, _, other = _simclr_reference(torch.device(device), per_rank_bn=False)
        with pytest.raises(AssertionError, match="differs by"):
            _close(_moments(other, names, "exp_avg"), grad, "BatchNorm over both slices", tol=0.1)


@pytest.mark.live
@pytest.mark.slow
def test_infonce_steal_step_of_two_ranks_equals_one_process(ddp_run):
    """StealModel under DDP (InfoNCE, outputs and answers gathered with gradient): the loss and the
    averaged gradients of every parameter equal one process's on the same 32 queries."""
    device, out, facts = ddp_run
    _exact_math()
    loss, grads = _steal_reference_grads(torch.device(device), per_rank_bn=device == "cpu")
    assert facts["steal_loss"] == pytest.approx(loss, rel=1e-5)
    got = load_file(str(out / "steal_grads_rank0.safetensors"))
    _close(got, grads, "gradient")
    _close(load_file(str(out / "steal_grads_rank1.safetensors")), got, "rank 0 vs rank 1", tol=0)


@pytest.mark.live
@pytest.mark.slow
def test_train_stolen_under_torchrun_equals_one_process(ddp_run):
    """train_stolen() itself on two ranks (rank slices of the shared query order, the schedule, Adam), two
    epochs of one step: one process's loss history and weights."""
    device, out, facts = ddp_run
    _exact_math()
    history, ckpt, moments = _stolen_reference(torch.device(device), per_rank_bn=device == "cpu")
    assert facts["steal_history"] == pytest.approx(history, rel=1e-5)
    assert history[1] < history[0] - 0.01  # the step changed the loss: the second entry checks the update
    got = load_file(str(out / "stolen_rank0.safetensors"))
    _weights_close(got, _params(ckpt), moments, _steal_cfg(device).lr)
    _close(load_file(str(out / "stolen_rank1.safetensors")), got, "rank 0 vs rank 1", tol=0)


@pytest.mark.live
@pytest.mark.slow
def test_syncbatchnorm_refuses_cpu_tensors(ddp_run):
    """Why the CPU reference slices BatchNorm per rank: SyncBatchNorm does not run on CPU tensors."""
    device, _, facts = ddp_run
    if device != "cpu":
        pytest.skip("a CPU fact")
    assert "expected input tensor to be on GPU" in facts["syncbn_cpu"], facts["syncbn_cpu"]


# ---- the helpers alone (no processes) -------------------------------------------------------------------


def test_rank_slices_tile_each_global_batch():
    for size in (1, 2, 4):
        got = [i for step in range(3) for r in range(size) for i in range(48)[rank_slice(step, 16, World(r, size))]]
        assert got == list(range(48))
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        distributed.local_batch(16, World(0, 3))


def test_world_from_torchrun_environment(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.env_world() == World() and World().main and not World().distributed
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1: one process, no group
    assert distributed.env_world() == World()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    w = distributed.env_world()
    assert w == World(3, 4, 1) and not w.main and w.distributed
    assert distributed.rank_device(torch.device("cuda"), w) == torch.device("cuda", 1)
    assert distributed.rank_device(torch.device("cuda:0"), w) == torch.device("cuda", 0)
    assert distributed.rank_device(torch.device("cpu"), w) == torch.device("cpu")


def test_single_process_helpers_are_identities():
    t = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather(t) is t and distributed.mean_over_ranks(t) is t
    assert distributed.init(torch.device("cpu")) == (World(), torch.device("cpu"))
    m = torch.nn.BatchNorm1d(2)
    assert distributed.wrap(m, torch.device("cpu")) is m and distributed.unwrap(m) is m
    assert distributed.rank_seed(0, 1, 1) != distributed.rank_seed(0, 1, 2) != distributed.rank_seed(0, 2, 1)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(Path(sys.argv[2]), sys.argv[3])
