"""The app state's runtime settings, applied on the event loop's thread by the lifespan."""

from __future__ import annotations

import asyncio
import sys

import pytest


def test_native_thread_limits_apply_on_the_event_loop_thread(tiny_checkpoint):
    """OpenMP thread counts are per thread. The similar-query defence searches FAISS on the event
    loop's thread, so ``faiss_threads`` must hold there, not only in the thread that loads the model
    (where it was set before: the loop's searches then spun on every core against inference).
    numpy's BLAS (the defences' matrix products) is limited to ``blas_threads`` too, and startup
    objects are frozen out of the garbage collector's scans (``gc_freeze``)."""
    import gc

    import faiss
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    # torch and FAISS share one OpenMP runtime: an OpenMP thread count above the one torch sized its
    # per-thread buffers for crashes later training in this process (a segfault in backward), so
    # both are restored below
    torch_before, omp_before = torch.get_num_threads(), faiss.omp_get_max_threads()

    from server.app import create_app
    from server.config import ServerConfig
    from server.store.memory import MemoryStore

    app = create_app(ServerConfig(checkpoint=tiny_checkpoint, faiss_threads=1, blas_threads=1, torch_threads=1),
                     store=MemoryStore())
    faiss.omp_set_num_threads(3)  # what this thread would otherwise search with
    restore = threadpool_limits(limits=3, user_api="blas")

    gc.unfreeze()

    async def inside() -> tuple[int, list[int], int, float]:
        async with app.router.lifespan_context(app):  # read on the loop's own thread
            return (faiss.omp_get_max_threads(), [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"],
                    gc.get_freeze_count(), sys.getswitchinterval())
    old_interval = sys.getswitchinterval()
    try:
        omp, blas, frozen, interval = asyncio.run(inside())
        assert omp == 1 and blas and set(blas) == {1}
        assert interval == pytest.approx(0.2e-3)  # the server's default switch interval
        assert frozen > 10_000  # torch, FastAPI and the model's objects
    finally:
        restore.restore_original_limits()  # first: it puts back every pool it saw, OpenMP's at 3 included
        faiss.omp_set_num_threads(omp_before)
        torch.set_num_threads(torch_before)
        gc.unfreeze()
        sys.setswitchinterval(old_interval)
