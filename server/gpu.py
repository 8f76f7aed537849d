"""The CUDA serving path: one graph replay per batch, uint8 uploads, pinned buffers, optional bf16.

On CUDA the eager forward pass launches one kernel per layer from Python, and every launch retakes
the GIL the event loop holds: the API served a few percent of what the same GPU computes in
process. :class:`DeviceForward` instead

- uploads the images as uint8 NHWC (a quarter of the bytes of float32) from a pinned host buffer
  with ``non_blocking`` copies, and converts them on the device (:func:`to_model_input`);
- pads each batch to a bucket size (:func:`buckets`: powers of two up to ``max_batch``) and replays
  one ``torch.cuda.CUDAGraph`` captured for that bucket (conversion, encoder and head): one call per
  batch, whatever the depth of the network;
- copies the answers back into pinned host buffers and waits once for the stream;
- with ``dtype="bfloat16"`` runs under bf16 autocast, after a startup check that its answers stay
  within ``bf16_tolerance`` of float32 on a few random inputs (:func:`check_bf16`), else refuses.

The bucketed, padded path runs on any device with ``graphs=False`` (eager forward into the same
buffers): the tests exercise it on the CPU. CUDA graph capture itself needs a CUDA device.
The CPU server does not use this module (server.batcher's frozen TorchScript path).
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger("heist.gpu")

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CHECK_IMAGES = 8  # random images of the bf16 startup check


class GpuDtypeError(RuntimeError):
    """bf16 answers differ from float32 beyond the configured tolerance: the server refuses to start."""


def nhwc_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images -> float32 NCHW in [0, 1] (a channels-last view of the same layout; the encoder
    normalises by the checkpoint's mean/std as its first step). Tensor ops only, so it traces: the one
    conversion of every serving path (server.batcher's frozen module and eager path, and
    :func:`to_model_input` here on the GPU after a uint8 upload instead of on the host before a float32 one)."""
    return images.permute(0, 3, 1, 2).float().div(255)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """:func:`nhwc_to_float` of checked uint8 (N, H, W, 3) images, on the images' own device."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    return nhwc_to_float(images)


def buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes with a captured graph: 1, 2, 4, ... below ``max_batch``, then ``max_batch`` itself."""
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return (*out, max_batch)


def bucket_for(n: int, sizes: tuple[int, ...]) -> int:
    """The smallest bucket holding ``n`` images (a batch is padded up to it)."""
    if not 1 <= n <= sizes[-1]:
        raise ValueError(f"batch of {n} images outside 1..{sizes[-1]}")
    return sizes[bisect.bisect_left(sizes, n)]


def relative_error(ref: np.ndarray, out: np.ndarray) -> float:
    """Largest per-row ``||out - ref|| / ||ref||`` (the rows are embeddings)."""
    num = np.linalg.norm(out.astype(np.float64) - ref, axis=1)
    den = np.maximum(np.linalg.norm(ref.astype(np.float64), axis=1), 1e-12)
    return float((num / den).max())


@dataclass
class _Bucket:
    """One bucket's static buffers on the device (and its graph on CUDA)."""

    size: int
    images: torch.Tensor  # (size, H, W, 3) uint8, the graph's input
    reps: torch.Tensor | None = None  # graph outputs (float32)
    projs: torch.Tensor | None = None
    graph: torch.cuda.CUDAGraph | None = None


class DeviceForward:
    """uint8 NHWC numpy batches -> (representations, projections or None) on ``device``.

    ``graphs`` (CUDA only) captures one CUDA graph per bucket at construction; without it each
    bucket runs eagerly (the same padding, buffers and copies). ``dtype``: ``float32`` or
    ``bfloat16`` (autocast; checked against float32 at construction).
    """

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module | None, device: torch.device, input_size: int,
                 max_batch: int, dtype: str = "float32", graphs: bool = True, bf16_tolerance: float = 0.02) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"gpu dtype {dtype!r}: one of {', '.join(DTYPES)}")
        self.cuda = device.type == "cuda"
        if graphs and not self.cuda:
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        if self.cuda and not torch.cuda.is_available():
            raise RuntimeError(f"device {device} requested but torch sees no CUDA device")
        self.encoder, self.head, self.device = encoder.eval(), (head.eval() if head is not None else None), device
        self.dtype, self.graphs, self.max_batch, self.size = dtype, graphs, max_batch, input_size
        self.sizes = buckets(max_batch)
        self.bf16_error: float | None = None
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed bucket shapes: pick the fastest kernels once
        with torch.inference_mode():
            pin = self.cuda
            self._host_in = torch.empty((max_batch, input_size, input_size, 3), dtype=torch.uint8, pin_memory=pin)
            self._buckets = {b: _Bucket(b, torch.zeros((b, input_size, input_size, 3), dtype=torch.uint8, device=device))
                             for b in self.sizes}
            rep_dim, proj_dim = self._dims()
            self._host_reps = torch.empty((max_batch, rep_dim), dtype=torch.float32, pin_memory=pin)
            self._host_projs = (torch.empty((max_batch, proj_dim), dtype=torch.float32, pin_memory=pin)
                                if proj_dim else None)
            if graphs:
                self._capture()
        if dtype == "bfloat16":
            self.bf16_error = check_bf16(self, bf16_tolerance)

    # ---- the forward pass ----------------------------------------------------------------------
    def compute(self, images: torch.Tensor, dtype: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eager forward of uint8 images already on the device: conversion, encoder, head (float32 out)."""
        bf16 = (dtype or self.dtype) == "bfloat16"
        x = to_model_input(images)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            y = self.encoder(x)
            z = self.head(y) if self.head is not None else None
        return y.float(), (z.float() if z is not None else None)

    def _dims(self) -> tuple[int, int | None]:
        y, z = self.compute(self._buckets[1].images, "float32")
        return y.shape[1], (z.shape[1] if z is not None else None)

    def _capture(self) -> None:
        """One graph per bucket, largest first, all in one memory pool (they never run concurrently)."""
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for b in reversed(self.sizes):  # warm-up: cuDNN autotuning and lazy init stay out of the capture
                for _ in range(2):
                    self.compute(self._buckets[b].images)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        for b in reversed(self.sizes):
            st = self._buckets[b]
            st.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(st.graph, pool=pool):
                st.reps, st.projs = self.compute(st.images)
        torch.cuda.synchronize(self.device)
        log.info("captured CUDA graphs", extra={"buckets": list(self.sizes), "dtype": self.dtype})

    def __call__(self, images: np.ndarray, projections: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Forward of up to ``max_batch`` uint8 NHWC images; the arrays returned are the caller's own."""
        n = len(images)
        with torch.inference_mode():
            st = self._buckets[bucket_for(n, self.sizes)]
            host = self._host_in[:n]
            host.copy_(torch.from_numpy(np.ascontiguousarray(images)))
            st.images[:n].copy_(host, non_blocking=True)  # rows n.. keep older images: each row is independent
            if st.graph is not None:
                st.graph.replay()
                reps, projs = st.reps, st.projs
            else:
                reps, projs = self.compute(st.images)
            assert reps is not None
            want = projections and projs is not None and self._host_projs is not None
            self._host_reps[:n].copy_(reps[:n], non_blocking=True)
            if want:
                self._host_projs[:n].copy_(projs[:n], non_blocking=True)  # type: ignore[index]
            if self.cuda:
                torch.cuda.current_stream(self.device).synchronize()
            # copies: the pinned buffers are overwritten by the next batch while these answers are still in use
            r = self._host_reps[:n].numpy().copy()
            p = self._host_projs[:n].numpy().copy() if want else None  # type: ignore[index]
        return r, p


def check_bf16(fwd: DeviceForward, tolerance: float, n: int = CHECK_IMAGES, seed: int = 0) -> float:
    """bf16 answers of ``fwd`` (its graphs when captured) vs a float32 forward on ``n`` random images:
    the largest per-row relative error, or :class:`GpuDtypeError` when it exceeds ``tolerance``."""
    n = min(n, fwd.max_batch)
    images = np.random.default_rng(seed).integers(0, 256, (n, fwd.size, fwd.size, 3), dtype=np.uint8)
    with torch.inference_mode():
        ref_r, ref_p = fwd.compute(torch.from_numpy(images).to(fwd.device), "float32")
        ref = [ref_r.cpu().numpy()] + ([ref_p.cpu().numpy()] if ref_p is not None else [])
    out_r, out_p = fwd(images, projections=True)
    out = [out_r] + ([out_p] if out_p is not None else [])
    err = max(relative_error(a, b) for a, b in zip(ref, out, strict=True))
    if not err <= tolerance:
        raise GpuDtypeError(f"gpu_dtype bfloat16: answers differ from float32 by up to {err:.3g} (largest per-row "
                            f"relative L2 error on {n} random images), above gpu_bf16_tolerance {tolerance:g}; "
                            "serve in float32 (HEIST_GPU_DTYPE=float32) or raise HEIST_GPU_BF16_TOLERANCE")
    log.info("bf16 check passed", extra={"max_relative_error": err, "tolerance": tolerance})
    return err
