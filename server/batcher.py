"""Micro-batching inference in one worker thread, off the event loop.

Requests put their preprocessed images (uint8 NHWC) on a queue; the worker takes the first job,
then keeps collecting until ``max_batch`` images or until that first job has waited ``max_wait_ms``
since it was queued (under load it already waited through the previous forward pass, so the
worker does not idle), runs ONE forward
pass (encoder, plus head when any job wants projections) and hands every job its slice: ONE
``call_soon_threadsafe`` per batch resolves all of the batch's asyncio futures on the event loop, so
the worker wakes the loop (and waits to take the GIL back) once per batch, not once per request.
A job larger than ``max_batch`` runs alone, in chunks.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from server.gpu import DeviceForward, nhwc_to_float, to_model_input
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


class ServingForward(torch.nn.Module):
    """uint8 NHWC images -> (representations, projections or an empty tensor) in ONE module call.

    Frozen by :func:`serving_module`, the uint8 -> float conversion, the encoder and the head run in
    one C++ call: the inference thread takes the GIL back once per batch instead of once per tensor
    op. Each retake waits up to the switch interval while the event loop holds the GIL
    (bench/gil_contention.py measures both forms next to a GIL-busy thread).
    ``permute`` keeps the NHWC buffer as a channels-last view, the layout oneDNN convolves fastest.
    """

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module | None) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.encoder(nhwc_to_float(images))
        return y, (self.head(y) if self.head is not None else y.new_empty(0))


def serving_module(model: Checkpoint, projections: bool) -> torch.nn.Module:
    """The frozen :class:`ServingForward` of ``model`` (with its head when ``projections``)."""
    size = model.config.input_size
    head = model.head if projections else None
    return frozen(ServingForward(model.encoder, head), torch.zeros(2, size, size, 3, dtype=torch.uint8))


def held_input(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` as a tensor for the frozen module, and an anchor to keep alive through the call.

    A tensor made in Python has a PyObject, and torch takes the GIL whenever the C++ references to
    such a tensor go from 2 to 1 (``c10::intrusive_ptr``: the PyObject must then be released). Inside
    the frozen module that happens when the graph drops its input, in the middle of the forward pass,
    and the inference thread then waits for the GIL while the event loop or a decoding thread holds
    it. The anchor, a view made outside inference mode, holds one more C++ reference to the input,
    so the count never falls to 1 during the call: the thread takes the GIL back only when it returns.
    Same values: the view shares the input's memory and is only held.
    """
    with torch.inference_mode(False):
        x = torch.from_numpy(images)
        return x, x.view(x.shape)


class Overloaded(RuntimeError):
    """The queue holds more images than allowed: answer 503 instead of queueing forever."""


@dataclass(eq=False)
class _Job:
    images: np.ndarray
    projections: bool
    future: asyncio.Future | None = None  # resolved on its own event loop (None: nobody waits)
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def cancelled(self) -> bool:
        """The waiting request went away (its task, hence this future, was cancelled)."""
        return self.future is not None and self.future.cancelled()


def _resolve(outcomes: list[tuple[asyncio.Future, bool, object]]) -> None:
    """On the event loop: set every future of one batch (skipping those cancelled meanwhile)."""
    for fut, ok, value in outcomes:
        if not fut.done():
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)  # type: ignore[arg-type]


class Batcher:
    def __init__(self, model: Checkpoint, device: torch.device, max_batch: int = 64, max_wait_ms: float = 5.0,
                 max_queue_images: int = 4096, on_batch: Callable[[int, float], None] | None = None,
                 jit: bool = False, cuda_graphs: bool = True, gpu_dtype: str = "bfloat16",
                 gpu_bf16_tolerance: float = 0.02) -> None:
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
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub of Module.to lacks memory_format
        self.encoder, self.head = self.model.encoder, self.model.head
        self.jit = jit and not self._cuda  # on CUDA: server.gpu (graph replay per batch, uint8 upload)
        self._gpu: DeviceForward | None = None
        if self._cuda:  # cuda_graphs / gpu_dtype matter only here: the CPU path below is unchanged
            self._gpu = DeviceForward(self.encoder, self.head, device, model.config.input_size, max_batch,
                                      dtype=gpu_dtype, graphs=cuda_graphs, bf16_tolerance=gpu_bf16_tolerance)
        self._served: dict[bool, torch.nn.Module] = {}
        if self.jit:  # one frozen module per output set: representations, and with the head's projections
            self._served[False] = serving_module(self.model, projections=False)
            if self.head is not None:
                self._served[True] = serving_module(self.model, projections=True)

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
        future: asyncio.Future[tuple[np.ndarray, np.ndarray | None]] = asyncio.get_running_loop().create_future()
        self._q.put(_Job(images, projections, future))
        return await future

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
            live = [j for j in jobs if not j.cancelled]
            dropped = sum(len(j.images) for j in jobs if j.cancelled)
            if dropped:  # cancelled while queued (client went away)
                with self._lock:
                    self._queued -= dropped
            if live:
                self._serve(live)
        if carry is not None:
            self._deliver([(carry, False, RuntimeError("server shutting down"))])

    @staticmethod
    def _deliver(outcomes: list[tuple[_Job, bool, object]]) -> None:
        """Hand results to the waiting requests: one loop wake-up per event loop per batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, bool, object]]] = {}
        for job, ok, value in outcomes:
            if job.future is not None:
                by_loop.setdefault(job.future.get_loop(), []).append((job.future, ok, value))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                log.debug("dropped %d results for a closed event loop", len(items))

    def _serve(self, jobs: list[_Job]) -> None:
        t0 = time.perf_counter()
        n = sum(len(j.images) for j in jobs)
        outcomes: list[tuple[_Job, bool, object]]
        try:
            images = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
            reps, projs = self._forward(images, any(j.projections for j in jobs))
        except Exception as e:  # noqa: BLE001 - hand the failure to every waiting request
            log.exception("batch of %d images failed", n)
            outcomes = [(j, False, e) for j in jobs]
        else:
            outcomes, start = [], 0
            for j in jobs:
                k = len(j.images)
                outcomes.append((j, True, (reps[start:start + k], projs[start:start + k] if (projs is not None and j.projections) else None)))
                start += k
        finally:
            with self._lock:
                self._queued -= n
        self._deliver(outcomes)
        if self.on_batch:
            self.on_batch(n, time.perf_counter() - t0)

    @torch.inference_mode()
    def _forward(self, images: np.ndarray, projections: bool) -> tuple[np.ndarray, np.ndarray | None]:
        reps, projs = [], []
        head = self.head if projections else None
        want_proj = head is not None
        for s in range(0, len(images), self.max_batch):
            if self._gpu is not None:  # CUDA: one graph replay (or eager pass) per chunk, numpy in and out
                r, p = self._gpu(images[s:s + self.max_batch], want_proj)
                reps.append(r)
                if p is not None:
                    projs.append(p)
                continue
            if self.jit:
                x, anchor = held_input(images[s:s + self.max_batch])
                y, z = self._served[want_proj](x)
                del anchor
                z = z if want_proj else None
            else:
                x = torch.from_numpy(images[s:s + self.max_batch])
                y = self.encoder(to_model_input(x.to(self.device, non_blocking=True)))
                z = head(y) if head is not None else None
            reps.append(y.float().cpu().numpy())
            if z is not None:
                projs.append(z.float().cpu().numpy())
        if len(reps) == 1:
            return reps[0], (projs[0] if projs else None)
        return np.concatenate(reps), (np.concatenate(projs) if projs else None)
