"""POST /v1/embeddings: tier policy, defence gates, decoding, batched inference, transforms, one store commit."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import pydantic_core
from fastapi import APIRouter, Request, Response

from server.defences import DefenceRefusal, DefenceRequest
from server.defences.base import rate_limit_headers, rate_limited
from server.deps import AccountDep, StateDep
from server.errors import ApiError
from server.routes.responses import ERRORS
from server.store import RequestRecord
from shared.images import ImageError, preprocess
from shared.schemas import EmbeddingRequest, EmbeddingResponse, encode_embedding

router = APIRouter(tags=["embeddings"])


def _rejection_kwargs(r) -> dict[str, Any]:
    return {"status": r.status, "type": r.type, "message": r.message, "param": r.param,
            "retry_after": r.retry_after, "extra": r.extra}


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERRORS)
async def embeddings(payload: EmbeddingRequest, request: Request, state: StateDep, account: AccountDep):
    config = state.config
    n = len(payload.input)
    if n > config.max_images_per_request:
        raise ApiError(400, "invalid_request_error",
                       f"{n} images in one request; the limit is {config.max_images_per_request}", param="input")
    if payload.model is not None and payload.model != state.model_id:
        raise ApiError(404, "model_not_found", f"model {payload.model!r} not served here; see GET /v1/models", param="model")
    pipeline = state.pipelines.get(account.tier)
    if pipeline is None:
        raise ApiError(403, "permission_error", f"account tier {account.tier!r} is not configured on this server")
    if payload.output not in pipeline.config.outputs:
        raise ApiError(403, "permission_error",
                       f"output {payload.output!r} not allowed for tier {account.tier!r} (allowed: {', '.join(pipeline.config.outputs)})",
                       param="output")
    if payload.output == "projection" and state.loaded_model.head is None:
        raise ApiError(400, "invalid_request_error", "this model has no projection head", param="output")
    dreq = DefenceRequest(payload=payload, body=await request.body(),
                          headers={k.lower(): v for k, v in request.headers.items()}, record=RequestRecord(images=n))
    decision = await pipeline.gate(account, dreq)
    state.metrics.defence.labels(account.tier, decision.type if decision else "pass").inc()
    if decision is not None:
        headers = None
        if decision.type == "rate_limit_exceeded":
            headers = rate_limit_headers(pipeline.rate_limit, *await state.store.window(account.id, pipeline.rate_limit))
        raise ApiError(decision.status, decision.type, decision.message, decision.param, decision.retry_after, decision.extra,
                       headers)
    try:
        images = await anyio.to_thread.run_sync(preprocess, payload.input, state.loaded_model.config.input_size, state.limits,
                                                limiter=state.decode_limiter)
    except ImageError as e:
        raise ApiError(e.status, e.type, str(e), e.param) from None
    want_proj = payload.output == "projection" or pipeline.needs_projections
    reps, projs = await state.loaded_batcher.submit(images, projections=want_proj)
    try:
        reps = await pipeline.transform(account, dreq, images, reps, projs)
    except DefenceRefusal as refusal:  # count the refused request (no images served), then refuse
        await state.store.commit(account.id, RequestRecord(images=0, counters=dreq.record.counters), pipeline.rate_limit)
        raise ApiError(**_rejection_kwargs(refusal.rejection)) from None
    out = projs if payload.output == "projection" else reps
    assert out is not None  # projection asked for: the model has a head and the batcher computed them
    if state.obfuscator is not None:
        out = state.obfuscator.apply(payload.output, out, dreq.digests(images))
    result = await state.store.commit(account.id, dreq.record, pipeline.rate_limit)
    limit_headers = rate_limit_headers(pipeline.rate_limit, result.requests, result.images, result.reset_s)
    if result.status == "rate_limited":
        raise ApiError(**_rejection_kwargs(rate_limited(pipeline.rate_limit, result.retry_after)), headers=limit_headers)
    if result.status == "revoked":
        raise ApiError(403, "permission_error", "API key revoked")
    if result.status == "missing":
        raise ApiError(401, "authentication_error", "invalid API key")
    state.metrics.images.labels(payload.output, account.tier).inc(n)
    body = {"object": "list", "model": state.model_id,
            "data": [{"object": "embedding", "index": i, "embedding": encode_embedding(v, payload.encoding_format)}
                     for i, v in enumerate(np.asarray(out))],
            "usage": {"images": n, "prompt_tokens": n, "total_tokens": n}}
    return Response(pydantic_core.to_json(body), media_type="application/json", headers=limit_headers)
