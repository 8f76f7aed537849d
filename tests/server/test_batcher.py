"""The micro-batcher: distinct requests batched, cancelled ones dropped, max_wait, the frozen model."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import torch


def test_batcher_batches_distinct_requests(tiny_checkpoint):
    from server.batcher import Batcher
    from shared.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    sizes = []
    b = Batcher(ck, torch.device("cpu"), max_batch=16, max_wait_ms=20, on_batch=lambda n, s: sizes.append(n))
    b.start()
    rng = np.random.default_rng(1)
    jobs = [rng.integers(0, 256, (int(rng.integers(1, 5)), 32, 32, 3), dtype=np.uint8) for _ in range(24)]
    jobs.append(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))  # larger than max_batch: chunked

    async def go():
        return await asyncio.gather(*[b.submit(j, projections=i % 2 == 0) for i, j in enumerate(jobs)])
    try:
        out = asyncio.run(go())
    finally:
        b.stop()
    for i, (j, (reps, projs)) in enumerate(zip(jobs, out, strict=False)):
        ref_r, ref_p = b.run_sync(j, projections=True)
        np.testing.assert_allclose(reps, ref_r, rtol=1e-4, atol=1e-5)
        assert (projs is not None) == (i % 2 == 0)
        if projs is not None:
            np.testing.assert_allclose(projs, ref_p, rtol=1e-4, atol=1e-5)
    assert max(sizes) > 4 and sum(sizes) == sum(len(j) for j in jobs) and b.queued_images == 0


def test_batcher_drops_requests_cancelled_while_queued(tiny_checkpoint):
    """A request whose client went away while queued is not computed, its images leave the queue
    count, and the requests batched around it still get their answers (one wake-up per batch)."""
    from server.batcher import Batcher
    from shared.checkpoint import load_checkpoint

    sizes, gate = [], threading.Event()
    b = Batcher(load_checkpoint(tiny_checkpoint), torch.device("cpu"), max_batch=16, max_wait_ms=0,
                on_batch=lambda n, s: (sizes.append(n), gate.wait(10)))  # the worker holds after each batch
    b.start()
    rng = np.random.default_rng(2)
    first = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    small = [rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8) for _ in range(3)]

    async def go():
        head = await b.submit(first)  # answered; the worker now waits at the gate
        tasks = [asyncio.ensure_future(b.submit(x)) for x in small]
        await asyncio.sleep(0.01)  # all three queued
        tasks[1].cancel()
        await asyncio.sleep(0.01)
        gate.set()
        return [head, *await asyncio.gather(*tasks, return_exceptions=True)]
    try:
        out = asyncio.run(go())
    finally:
        gate.set()
        b.stop()
    assert isinstance(out[2], asyncio.CancelledError)
    for x, (reps, _) in ((small[0], out[1]), (small[2], out[3])):
        np.testing.assert_allclose(reps, b.run_sync(x)[0], rtol=1e-4, atol=1e-5)
    assert sizes == [4, 6] and b.queued_images == 0  # the cancelled 3 images never ran


def test_batcher_wait_counts_from_when_the_first_job_was_queued(tiny_checkpoint):
    """max_wait bounds how long a request waits for company, counted from when it was queued: a job
    that already waited (behind the previous forward pass) is batched with what is there, at once."""
    from server.batcher import Batcher, _Job
    from shared.checkpoint import load_checkpoint

    b = Batcher(load_checkpoint(tiny_checkpoint), torch.device("cpu"), max_batch=64, max_wait_ms=300)
    img = np.zeros((2, 32, 32, 3), np.uint8)
    waited = _Job(img, False, queued_at=time.monotonic() - 1.0)
    b._q.put(_Job(img, False))  # already queued: joins the batch
    t0 = time.monotonic()
    jobs, carry, stop = b._collect(waited)
    assert time.monotonic() - t0 < 0.1 and len(jobs) == 2 and carry is None and not stop
    t0 = time.monotonic()
    jobs, _, _ = b._collect(_Job(img, False))  # fresh and alone: waits its max_wait for company
    assert 0.25 < time.monotonic() - t0 < 1.0 and len(jobs) == 1


def test_frozen_batcher_matches_eager_model(tiny_checkpoint):
    """The served (TorchScript-frozen) encoder and head give the eager checkpoint's answers."""
    from server.batcher import Batcher
    from shared.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    jit = Batcher(ck, torch.device("cpu"), max_batch=16, jit=True)
    eager = Batcher(ck, torch.device("cpu"), max_batch=16, jit=False)
    assert all(isinstance(m, torch.jit.ScriptModule) for m in jit._served.values()) and len(jit._served) == 2
    assert not eager._served
    imgs = np.random.default_rng(3).integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)  # not a multiple of the trace batch
    (r1, p1), (r2, p2) = jit.run_sync(imgs, projections=True), eager.run_sync(imgs, projections=True)
    np.testing.assert_allclose(r1, r2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-5)
    r3, p3 = jit.run_sync(imgs[:5], projections=False)  # the encoder-only module: no head output
    assert p3 is None
    np.testing.assert_allclose(r3, r2[:5], rtol=1e-4, atol=1e-5)
