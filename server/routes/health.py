"""Liveness (/healthz), readiness (/readyz: model and store) and Prometheus metrics (/metrics)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.deps import StateDep
from shared.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz():
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: StateDep):
    model_ok = state.batcher is not None and state.batcher.alive
    store_ok = await state.store.ping()
    r = Readiness(status="ready" if model_ok and store_ok else "unready", model=model_ok, store=store_ok)
    if r.status != "ready":
        return Response(r.model_dump_json(), status_code=503, media_type="application/json",
                        headers={"Retry-After": str(state.config.store_retry_after_s)})
    return r


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(state: StateDep):
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
