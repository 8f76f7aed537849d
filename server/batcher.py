"""Micro-batching inference in one worker thread, off the event loop.

Requests put their preprocessed images (uint8 NHWC) on a queue; the worker takes the first job,
then keeps collecting until ``max_batch`` images or until that first job has waited ``max_wait_ms``
since it was queued (under load it already waited through the previous forward pass, so the
worker does not idle), runs ONE forward
pass (encoder, plus head when any job wants projections) and hands every job its slice through an
asyncio future. A job larger than ``max_batch`` runs alone, in chunks.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from shared.checkpoint import Checkpoint

log = logging.getLogger("heist.batcher")


def frozen(module: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """TorchScript-trace ``module`` on ``example`` and freeze it (BatchNorm folded into convolutions):
    one C++ call per forward instead of one Python call per layer, so the inference thread rarely
    needs the GIL while the event loop serves HTTP. Outputs match eager mode to ~1e-6.

    TorchScript is deprecated (not removed) in the pinned torch 2.13; its warning is silenced here.
    When it goes, ``torch.export`` + AOTInductor is the replacement (``jit: false`` serves eager).
    """
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        return torch.jit.freeze(torch.jit.trace(module.eval(), example))


class Overloaded(RuntimeError):
    """The queue holds more images than allowed: answer 503 instead of queueing forever."""


@dataclass(eq=False)
class _Job:
    images: np.ndarray
    projections: bool
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, model: Checkpoint, device: torch.device, max_batch: int = 64, max_wait_ms: float = 5.0,
                 max_queue_images: int = 4096, on_batch: Callable[[int, float], None] | None = None,
                 jit: bool = False) -> None:
        self.model = model
        self.device = device
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue_images = max_queue_images
        self.on_batch = on_batch
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._queued = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cuda = device.type == "cuda"
        if self._cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.encoder, self.head = self.model.encoder, self.model.head
        self.jit = jit and not self._cuda  # on CUDA, autocast + channels_last already do the work
        if self.jit:
            size = model.config.input_size
            self.encoder = frozen(self.model.encoder, torch.zeros(2, 3, size, size))
            if self.head is not None:
                self.head = frozen(self.model.head, torch.zeros(2, model.config.representation_dim))

    @property
    def queued_images(self) -> int:
        return self._queued

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heist-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def submit(self, images: np.ndarray, projections: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        n = len(images)
        if not self.alive:
            raise Overloaded("inference worker not running")
        with self._lock:
            if self._queued + n > self.max_queue_images:
                raise Overloaded(f"{self._queued} images queued")
            self._queued += n
        job = _Job(images, projections)
        self._q.put(job)
        return await asyncio.wrap_future(job.future)

    def run_sync(self, images: np.ndarray, projections: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Forward without the queue (tests, benchmarks)."""
        return self._forward(images, projections)

    # ---- worker ------------------------------------------------------------------------------
    def _collect(self, first: _Job) -> tuple[list[_Job], _Job | None, bool]:
        jobs, total, deadline = [first], len(first.images), first.queued_at + self.max_wait
        while total < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, None, True
            if total + len(job.images) > self.max_batch:
                return jobs, job, False  # does not fit: first of the next batch
            jobs.append(job)
            total += len(job.images)
        return jobs, None, False

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # never die silently: waiting requests would hang
            log.exception("batcher worker crashed")
            raise

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        carry: _Job | None = None
        stop = False
        while not stop:
            first = carry if carry is not None else self._q.get()
            carry = None
            if first is None:
                break
            jobs, carry, stop = self._collect(first)
            flags = [j.future.set_running_or_notify_cancel() for j in jobs]
            live = [j for j, ok in zip(jobs, flags, strict=False) if ok]
            dropped = sum(len(j.images) for j, ok in zip(jobs, flags, strict=False) if not ok)
            if dropped:  # cancelled while queued (client went away)
                with self._lock:
                    self._queued -= dropped
            if live:
                self._serve(live)
        if carry is not None and carry.future.set_running_or_notify_cancel():
            carry.future.set_exception(RuntimeError("server shutting down"))

    def _serve(self, jobs: list[_Job]) -> None:
        t0 = time.perf_counter()
        n = sum(len(j.images) for j in jobs)
        try:
            images = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
            reps, projs = self._forward(images, any(j.projections for j in jobs))
        except Exception as e:  # noqa: BLE001 - hand the failure to every waiting request
            log.exception("batch of %d images failed", n)
            for j in jobs:
                j.future.set_exception(e)
        else:
            start = 0
            for j in jobs:
                k = len(j.images)
                j.future.set_result((reps[start:start + k], projs[start:start + k] if (projs is not None and j.projections) else None))
                start += k
        finally:
            with self._lock:
                self._queued -= n
        if self.on_batch:
            self.on_batch(n, time.perf_counter() - t0)

    @torch.inference_mode()
    def _forward(self, images: np.ndarray, projections: bool) -> tuple[np.ndarray, np.ndarray | None]:
        reps, projs = [], []
        want_proj = projections and self.head is not None
        for s in range(0, len(images), self.max_batch):
            x = torch.from_numpy(images[s:s + self.max_batch]).to(self.device, non_blocking=True)
            x = x.permute(0, 3, 1, 2).float().div_(255)
            if self._cuda:
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y = self.encoder(x)
                    z = self.head(y) if want_proj else None
            else:
                y = self.encoder(x)
                z = self.head(y) if want_proj else None
            reps.append(y.float().cpu().numpy())
            if z is not None:
                projs.append(z.float().cpu().numpy())
        return np.concatenate(reps), (np.concatenate(projs) if projs else None)
