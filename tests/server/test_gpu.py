"""The CUDA serving path's device-independent parts, on the CPU: conversion, buckets and padding,
the bf16 check, and the guards around what needs CUDA (graph capture itself runs on a GPU host only:
scripts/gpu_bench.sh)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from shared.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint).eval()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_to_model_input_equals_the_host_preprocessing():
    from server.batcher import ServingForward
    from server.gpu import to_model_input

    x = torch.from_numpy(_images(5))
    host = x.permute(0, 3, 1, 2).float().div_(255)  # the batcher's eager CPU path
    out = to_model_input(x)
    assert out.dtype == torch.float32 and out.shape == (5, 3, 32, 32)
    assert torch.allclose(out, host, atol=1e-6, rtol=0)
    assert out.is_contiguous(memory_format=torch.channels_last)  # the layout convolutions want on the GPU

    class Probe(torch.nn.Module):  # ServingForward's conversion, caught at the encoder's input
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            self.seen = v
            return v.flatten(1)
    probe = Probe()
    ServingForward(probe, None)(x)
    assert torch.allclose(out, probe.seen, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(x.float())


def test_buckets_and_bucket_for():
    from server.gpu import bucket_for, buckets

    assert buckets(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert buckets(1) == (1,)
    assert buckets(100) == (1, 2, 4, 8, 16, 32, 64, 100)
    sizes = buckets(100)
    assert [bucket_for(n, sizes) for n in (1, 2, 3, 5, 64, 65, 99, 100)] == [1, 2, 4, 8, 64, 100, 100, 100]
    for bad in (0, 101):
        with pytest.raises(ValueError):
            bucket_for(bad, sizes)
    with pytest.raises(ValueError):
        buckets(0)


def test_padded_bucketed_forward_matches_the_cpu_server(model):
    """Batches of every size through the padded buffers answer what the frozen CPU module answers,
    and a later, smaller batch is not polluted by the rows a larger one left in the bucket."""
    from server.batcher import Batcher
    from server.gpu import DeviceForward

    fwd = DeviceForward(model.encoder, model.head, torch.device("cpu"), 32, max_batch=16, graphs=False)
    cpu = Batcher(model, torch.device("cpu"), max_batch=16, jit=True)
    for n in (16, 3, 1, 5, 8, 9):
        images = _images(n, seed=n)
        reps, projs = fwd(images, projections=True)
        ref_r, ref_p = cpu.run_sync(images, projections=True)
        assert reps.shape == ref_r.shape and projs is not None and projs.shape == ref_p.shape
        np.testing.assert_allclose(reps, ref_r, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(projs, ref_p, rtol=1e-4, atol=1e-5)
        only, none = fwd(images, projections=False)
        assert none is None and np.array_equal(only, reps)
    a, _ = fwd(_images(4, seed=1))
    b, _ = fwd(_images(4, seed=2))
    assert not np.shares_memory(a, b) and not np.array_equal(a, b)  # answers are the caller's own copies


def test_bf16_check_passes_within_tolerance_and_refuses_beyond(model):
    from server.gpu import DeviceForward, GpuDtypeError, relative_error

    fwd = DeviceForward(model.encoder, model.head, torch.device("cpu"), 32, max_batch=8, dtype="bfloat16", graphs=False)
    assert fwd.bf16_error is not None and 0 < fwd.bf16_error <= 0.02
    with pytest.raises(GpuDtypeError, match="HEIST_GPU_DTYPE=float32"):
        DeviceForward(model.encoder, model.head, torch.device("cpu"), 32, max_batch=8, dtype="bfloat16",
                      graphs=False, bf16_tolerance=1e-9)
    ref = np.array([[3.0, 4.0], [1.0, 0.0]])
    assert relative_error(ref, ref) == 0 and relative_error(ref, ref + [[0, 0.5], [0, 0]]) == pytest.approx(0.1)


def test_cuda_only_parts_are_guarded(model):
    from server.gpu import DeviceForward

    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        DeviceForward(model.encoder, model.head, torch.device("cpu"), 32, max_batch=8, graphs=True)
    with pytest.raises(ValueError, match="gpu dtype"):
        DeviceForward(model.encoder, model.head, torch.device("cpu"), 32, max_batch=8, dtype="float16", graphs=False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            DeviceForward(model.encoder, model.head, torch.device("cuda"), 32, max_batch=8)


def test_cpu_batcher_ignores_the_gpu_settings(model):
    """cuda_graphs / gpu_dtype change nothing on the CPU: same path, same answers."""
    from server.batcher import Batcher

    images = _images(6)
    a = Batcher(model, torch.device("cpu"), max_batch=8, jit=True)
    b = Batcher(model, torch.device("cpu"), max_batch=8, jit=True, cuda_graphs=False, gpu_dtype="float32")
    assert a._gpu is None and b._gpu is None
    np.testing.assert_array_equal(a.run_sync(images)[0], b.run_sync(images)[0])


def test_config_gpu_fields():
    from server.config import ConfigError, load_config

    cfg = load_config(env={})
    assert cfg.cuda_graphs is True and cfg.gpu_dtype == "bfloat16" and cfg.gpu_bf16_tolerance == 0.02
    cfg = load_config(env={"HEIST_CUDA_GRAPHS": "0", "HEIST_GPU_DTYPE": "float32"})
    assert cfg.cuda_graphs is False and cfg.gpu_dtype == "float32"
    with pytest.raises(ConfigError, match="HEIST_GPU_DTYPE"):
        load_config(env={"HEIST_GPU_DTYPE": "float16"})
