"""POST /v1/embeddings: tier policy, defence gates, decoding, batched inference, transforms, one store commit."""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any, Literal

import anyio
import anyio.to_thread
import numpy as np
import pydantic_core
from fastapi import APIRouter, Request, Response

from server.accounts import Account
from server.defences import DefenceRefusal, DefenceRequest
from server.defences.base import DefencePipeline, rate_limit_headers, rate_limited
from server.deps import AccountDep, StateDep
from server.errors import ApiError
from server.routes.responses import ERRORS
from server.state import ServerState
from server.store import IdempotentAnswer, RequestRecord, StoreUnavailable
from shared.images import ImageError, preprocess
from shared.schemas import EmbeddingRequest, EmbeddingResponse, encode_embedding

log = logging.getLogger("heist.api")

router = APIRouter(tags=["embeddings"])

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "idempotent-replayed"


def _pack(out: np.ndarray) -> bytes:
    rows = np.ascontiguousarray(out, dtype="<f4")
    return f"{rows.shape[0]},{rows.shape[1]}|".encode() + rows.tobytes()


def _unpack(payload: bytes) -> np.ndarray:
    shape, _, data = payload.partition(b"|")
    n, d = (int(x) for x in shape.split(b","))
    return np.frombuffer(data, dtype="<f4").reshape(n, d)


def _answer(model_id: str, out: np.ndarray, encoding_format: Literal["float", "base64"],
            headers: dict[str, str]) -> Response:
    n = len(out)
    body = {"object": "list", "model": model_id,
            "data": [{"object": "embedding", "index": i, "embedding": encode_embedding(v, encoding_format)}
                     for i, v in enumerate(np.asarray(out))],
            "usage": {"images": n, "prompt_tokens": n, "total_tokens": n}}
    return Response(pydantic_core.to_json(body), media_type="application/json", headers=headers)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not (0 < len(key) <= 255 and all(0x21 <= ord(c) <= 0x7E for c in key)):
        raise ApiError(400, "invalid_request_error", f"{IDEMPOTENCY_HEADER} must be 1-255 visible ASCII characters",
                       param=IDEMPOTENCY_HEADER)
    return key


def _rejection_kwargs(r) -> dict[str, Any]:
    return {"status": r.status, "type": r.type, "message": r.message, "param": r.param,
            "retry_after": r.retry_after, "extra": r.extra}


async def _log_queries(state: ServerState, account_id: str, images: np.ndarray, keep: int) -> None:
    """The served images into the account's query log. After the commit, so best effort: a store
    outage here loses log entries (logged), never the answer that was already counted."""
    try:
        await state.store.log_queries(account_id, [np.ascontiguousarray(im).tobytes() for im in images[-keep:]], keep)
    except StoreUnavailable:
        log.warning("query log not written: store unavailable", extra={"account": account_id, "images": len(images)})


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
    raw = await request.body()
    key = _idempotency_key(request)
    if key is None:
        return await _serve(payload, request, state, account, pipeline, raw, None)
    claim = (hashlib.sha256(key.encode()).hexdigest(), hashlib.sha256(raw).hexdigest(), secrets.token_hex(8))
    held = await state.store.idempotency_claim(account.id, *claim, int(config.idempotency_lease_s * 1000))
    if held.state == "done":  # a retry of a committed request: the same answer, not counted again
        state.metrics.defence.labels(account.tier, "idempotent_replay").inc()
        return _answer(state.model_id, _unpack(held.payload), payload.encoding_format, {REPLAYED_HEADER: "true"})
    if held.state == "pending":
        raise ApiError(409, "idempotency_in_progress", f"a request with this {IDEMPOTENCY_HEADER} is running; retry later",
                       param=IDEMPOTENCY_HEADER, retry_after=1)
    if held.state == "mismatch":
        raise ApiError(422, "idempotency_key_reused", f"this {IDEMPOTENCY_HEADER} was used for another request body",
                       param=IDEMPOTENCY_HEADER)
    try:
        return await _serve(payload, request, state, account, pipeline, raw, claim)
    except BaseException:
        with anyio.CancelScope(shield=True):  # a committed request keeps its answer; a failed one frees the key
            await state.store.idempotency_release(account.id, *claim)
        raise


async def _serve(payload: EmbeddingRequest, request: Request, state: ServerState, account: Account,
                 pipeline: DefencePipeline, raw: bytes, claim: tuple[str, str, str] | None) -> Response:
    """Gate, decode, infer, transform, commit (with the answer kept for retries when ``claim``)."""
    config = state.config
    n = len(payload.input)
    dreq = DefenceRequest(payload=payload, body=raw,
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
                                                state.device_decoder, limiter=state.decode_limiter)
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
    if claim is not None:
        key_id, digest, lease = claim
        dreq.record.idempotent = IdempotentAnswer(key_id, digest, _pack(out), int(config.idempotency_ttl_s * 1000), lease)
    result = await state.store.commit(account.id, dreq.record, pipeline.rate_limit)
    limit_headers = rate_limit_headers(pipeline.rate_limit, result.requests, result.images, result.reset_s)
    if result.status == "rate_limited":
        raise ApiError(**_rejection_kwargs(rate_limited(pipeline.rate_limit, result.retry_after)), headers=limit_headers)
    if result.status == "revoked":
        raise ApiError(403, "permission_error", "API key revoked")
    if result.status == "missing":
        raise ApiError(401, "authentication_error", "invalid API key")
    if result.status == "superseded":  # this request outlived its lease and a retry holds the key now
        raise ApiError(409, "idempotency_in_progress", f"a retry of this request holds its {IDEMPOTENCY_HEADER} now",
                       param=IDEMPOTENCY_HEADER, retry_after=1)
    state.metrics.images.labels(payload.output, account.tier).inc(n)
    keep = config.tiers[account.tier].query_log
    if keep:
        await _log_queries(state, account.id, images, keep)
    return _answer(state.model_id, out, payload.encoding_format, limit_headers)
