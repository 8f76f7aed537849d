"""The victim API (FastAPI): embeddings, models, health, metrics, admin accounts.

Request path of ``POST /v1/embeddings``: body limit (while reading) -> JSON schema -> API key ->
tier policy (allowed output, images per request) -> defence gates (rate limit, later PoW) ->
decode/validate/preprocess (thread pool) -> micro-batched inference (worker thread) -> defence
transforms -> ONE atomic store commit (re-checks revocation and rate limit, counts the request)
-> answer. Anything the store cannot confirm is refused with 503 (fail closed).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import re
import sys
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import pydantic_core
from fastapi import Depends, FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import logs
from server.accounts import Account, hash_key, key_matches, make_account
from server.batcher import Batcher, Overloaded
from server.config import ServerConfig
from server.defences import DefenceContext, DefencePipeline, DefenceRefusal, DefenceRequest, build_pipeline
from server.defences.base import rate_limited
from server.errors import STATUS_TYPES, ApiError, error_response
from server.metrics import Metrics
from server.obfuscation import Obfuscator
from server.store import AccountExists, AccountStore, RequestRecord, StoreUnavailable, open_store
from shared.checkpoint import Checkpoint, load_checkpoint
from shared.device import resolve_device
from shared.images import ImageError, ImageLimits, preprocess
from shared.schemas import (
    AccountCreate,
    AccountCreated,
    AccountInfo,
    AccountList,
    ChallengeResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    Health,
    ModelInfo,
    ModelList,
    NormalizationInfo,
    Readiness,
    encode_embedding,
)

log = logging.getLogger("heist.api")


class DefenceStats(BaseModel):
    """Per-account defence state for admins (GET /v1/admin/accounts/{id}/defences, accounts show)."""

    account: str
    name: str
    tier: str
    requests: int
    images: int
    coverage: float = Field(description="B4B coverage (share of SimHash buckets hit), after the last request")
    coverage_bits: int
    sigma: float = Field(description="B4B noise sigma of the last request")
    history: int = Field(description="projections kept in the account's history stream")
    similar_hits: int
    sybil_hits: int
    sybil_peers: dict[str, int] = Field(description="other accounts that sent the same images, with counts")
    pow_bits: int = Field(description="difficulty asked at the last request (0 = within the legitimate profile)")
    pow_deviation: float
    pow_challenges: int
    pow_bits_asked: int
    pow_solved: int
    pow_bits_paid: int
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ROUTES = {"/v1/embeddings", "/v1/models", "/healthz", "/readyz", "/metrics", "/v1/admin/accounts", "/docs", "/openapi.json"}


def _route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    if path.startswith("/v1/admin/accounts/"):
        return "/v1/admin/accounts/{id}"
    return "other"


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` once the body passes the limit (FastAPI re-raises HTTPExceptions)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes", headers={"Connection": "close"})


class RequestMiddleware:
    """Request id + JSON access log + metrics + body limit enforced while reading (pure ASGI)."""

    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        st = self.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id", "")
        rid = rid if _RID.match(rid) else uuid.uuid4().hex
        tok_r, tok_a = logs.request_id.set(rid), logs.account_id.set(None)
        t0 = time.perf_counter()
        status = {"code": 500}
        limit = st.config.max_body_bytes
        seen = 0

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        async def receive_wrapper():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            cl = headers.get("content-length")
            if cl is not None and (not cl.isdigit() or int(cl) > limit):
                resp = error_response(413, "request_too_large", f"request body exceeds {limit} bytes")
                await resp(scope, receive, send_wrapper)
            else:
                try:
                    await self.app(scope, receive_wrapper, send_wrapper)
                except BodyTooLarge:
                    resp = error_response(413, "request_too_large", f"request body exceeds {limit} bytes",
                                          headers={"Connection": "close"})
                    await resp(scope, receive, send_wrapper)
        finally:
            dt = time.perf_counter() - t0
            route = _route_label(scope.get("path", ""))
            st.metrics.requests.labels(route, scope.get("method", ""), str(status["code"])).inc()
            st.metrics.latency.labels(route).observe(dt)
            if route not in ("/metrics", "/healthz", "/readyz"):
                log.info("request", extra={"method": scope.get("method"), "path": scope.get("path"),
                                           "status": status["code"], "ms": round(dt * 1000, 2)})
            logs.request_id.reset(tok_r)
            logs.account_id.reset(tok_a)


class ServerState:
    def __init__(self, config: ServerConfig, model: Checkpoint | None, store: AccountStore) -> None:
        self.config = config
        self.store = store
        self.metrics = Metrics(config.max_batch)
        self.model = model
        self.batcher: Batcher | None = None
        self._decode_limiter: anyio.CapacityLimiter | None = None
        self.obfuscator: Obfuscator | None = None
        self.limits = ImageLimits(formats=config.allowed_formats, max_pixels=config.max_image_pixels,
                                  max_bytes=config.max_image_bytes)
        ctx = DefenceContext(store=store, secret=config.secret_bytes(), metrics=self.metrics)
        self.pipelines: dict[str, DefencePipeline] = {t: build_pipeline(t, tc, ctx) for t, tc in config.tiers.items()}
        self.model_id = config.model_id or (config.checkpoint.name if config.checkpoint else "encoder")

    @property
    def decode_limiter(self) -> anyio.CapacityLimiter:
        """Bounds concurrent image decoding (made on first use, inside the event loop)."""
        if self._decode_limiter is None:
            self._decode_limiter = anyio.CapacityLimiter(self.config.decode_threads)
        return self._decode_limiter

    def tune_runtime(self) -> None:
        """Process settings for serving, applied from the event loop's thread once the model is loaded:

        - ``switch_interval_ms`` (process-wide): the inference thread gets the GIL back sooner;
        - ``faiss_threads``: FAISS's OpenMP count is per thread, so it is set on this thread, where the
          defences search (set in the thread that loads the model, it left the loop's searches on
          every core); ``blas_threads``: numpy's OpenBLAS, process-wide. Idle OpenMP/OpenBLAS workers
          spin for a while after each call, on the core the inference thread needs;
        - ``gc_freeze``: startup objects (torch, FastAPI, the model) leave the collector's scans.
        """
        if self.config.switch_interval_ms is not None:
            sys.setswitchinterval(self.config.switch_interval_ms / 1000)
        if self.config.faiss_threads is not None:
            import faiss

            faiss.omp_set_num_threads(self.config.faiss_threads)
        if self.config.blas_threads is not None:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=self.config.blas_threads, user_api="blas")
        if self.config.gc_freeze:
            gc.collect()
            gc.freeze()

    def load(self) -> None:
        device = resolve_device(self.config.device)
        if self.model is None:
            if self.config.checkpoint is None:
                raise RuntimeError("no checkpoint configured (--checkpoint DIR or HEIST_CHECKPOINT)")
            self.model = load_checkpoint(self.config.checkpoint, device)
        else:
            self.model = self.model.to(device).eval()
        if self.config.torch_threads:
            import torch

            torch.set_num_threads(self.config.torch_threads)
        self.batcher = Batcher(self.model, device, self.config.max_batch, self.config.max_wait_ms,
                               self.config.max_queue_images, on_batch=self.metrics.on_batch, jit=self.config.jit)
        self.batcher.start()
        if self.config.obfuscation is not None:
            c = self.model.config
            self.obfuscator = Obfuscator(self.config.obfuscation, c.representation_dim, c.head.out_dim if c.head else None)
        self.metrics.queue.set_function(lambda: self.batcher.queued_images if self.batcher else 0)
        log.info("model loaded", extra={"model": self.model_id, "arch": self.model.config.arch,
                                         "device": str(device), "store": self.store.backend,
                                         "obfuscation": self.obfuscator.describe() if self.obfuscator else None,
                                         "policies": {t: p.describe() for t, p in self.pipelines.items()}})

    def model_info(self) -> ModelInfo:
        c = self.model.config
        rep_dim, proj_dim = c.representation_dim, c.head.out_dim if c.head else None
        if self.obfuscator is not None:
            rep_dim = self.obfuscator.representation.out_dim
            proj_dim = self.obfuscator.projection.out_dim if self.obfuscator.projection else None
        return ModelInfo(id=self.model_id, architecture=c.arch, input_size=c.input_size,
                         representation_dim=rep_dim, projection_dim=proj_dim,
                         normalization=NormalizationInfo(mean=c.normalization.mean, std=c.normalization.std),
                         outputs=["representation", "projection"] if self.model.head is not None else ["representation"],
                         max_images_per_request=self.config.max_images_per_request)


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc} for code, desc in {
        400: "bad request", 401: "missing or invalid API key", 403: "revoked key or output not allowed",
        413: "body or image too large", 415: "image format not allowed", 422: "malformed input (param names it)",
        428: "proof of work required (body carries the challenge)",
        429: "rate limited (Retry-After)", 503: "store unreachable or overloaded (Retry-After)"}.items()}
ERRORS[428]["model"] = ChallengeResponse

bearer = HTTPBearer(auto_error=False, description="API key: Authorization: Bearer heist_...")
admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken", description="Authorization: Bearer $HEIST_ADMIN_TOKEN")


def create_app(config: ServerConfig, model: Checkpoint | None = None, store: AccountStore | None = None) -> FastAPI:
    """Validate everything that can be validated before serving (tiers, defences, device)."""
    store = store or open_store(config.redis_url, config.store_prefix, config.store_timeout_s)
    if config.server_secret is None:
        log.warning("HEIST_SERVER_SECRET not set: using a random per-process secret (set it when running several replicas)")
    state = ServerState(config, model, store)
    resolve_device(config.device)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(state.load)
        state.tune_runtime()  # on the loop's thread, where the defences run
        try:
            yield
        finally:
            if state.batcher:
                await asyncio.to_thread(state.batcher.stop)
            await state.store.close()

    app = FastAPI(title="Encoder Heist victim API", version="1", lifespan=lifespan,
                  description="Embeddings of images by a self-supervised encoder (the victim). "
                              "Errors: `{\"error\": {\"type\", \"message\", \"param\"}}`.")
    app.state.heist = state
    app.add_middleware(RequestMiddleware, state=state)

    # ---- error handlers --------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable):
        state.metrics.store_errors.inc()
        log.warning("store unavailable", extra={"error": str(exc)})
        return error_response(503, "store_unavailable", "account store unreachable; retry later",
                              retry_after=config.store_retry_after_s)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        return error_response(503, "overloaded", f"server overloaded ({exc}); retry later", retry_after=1)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, STATUS_TYPES.get(exc.status_code, "http_error"), str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return error_response(400, "invalid_json", "request body is not valid JSON")
        first = errs[0] if errs else {}
        loc = [x for x in first.get("loc", ()) if x != "body"]
        param = "".join(f"[{x}]" if isinstance(x, int) else (f".{x}" if i else str(x)) for i, x in enumerate(loc)) or None
        msgs = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}" for e in errs[:5])
        return error_response(422, "invalid_request_error", msgs, param=param)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error")
        return error_response(500, "internal_error", "internal server error")

    # ---- auth ------------------------------------------------------------------------------
    async def authenticate(creds: HTTPAuthorizationCredentials | None = Security(bearer)) -> Account:
        if creds is None or not creds.credentials:
            raise ApiError(401, "authentication_error", "missing API key: send Authorization: Bearer <key>")
        key = creds.credentials
        acct = await state.store.by_key_hash(hash_key(key))
        if acct is None or not key_matches(key, acct.key_hash):
            raise ApiError(401, "authentication_error", "invalid API key")
        logs.account_id.set(acct.id)
        if acct.revoked:
            raise ApiError(403, "permission_error", "API key revoked")
        return acct

    async def require_admin(creds: HTTPAuthorizationCredentials | None = Security(admin_bearer)) -> None:
        if config.admin_token is None:
            raise ApiError(403, "permission_error", "admin endpoints are disabled (HEIST_ADMIN_TOKEN not set)")
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), config.admin_token.get_secret_value().encode()):
            raise ApiError(401, "authentication_error", "missing or invalid admin token")

    # ---- routes ----------------------------------------------------------------------------
    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERRORS, tags=["embeddings"])
    async def embeddings(payload: EmbeddingRequest, request: Request, account: Account = Depends(authenticate)):
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
        if payload.output == "projection" and state.model.head is None:
            raise ApiError(400, "invalid_request_error", "this model has no projection head", param="output")
        dreq = DefenceRequest(payload=payload, body=await request.body(),
                              headers={k.lower(): v for k, v in request.headers.items()}, record=RequestRecord(images=n))
        decision = await pipeline.gate(account, dreq)
        state.metrics.defence.labels(account.tier, decision.type if decision else "pass").inc()
        if decision is not None:
            raise ApiError(decision.status, decision.type, decision.message, decision.param, decision.retry_after, decision.extra)
        try:
            images = await anyio.to_thread.run_sync(preprocess, payload.input, state.model.config.input_size, state.limits,
                                                    limiter=state.decode_limiter)
        except ImageError as e:
            raise ApiError(e.status, e.type, str(e), e.param) from None
        want_proj = payload.output == "projection" or pipeline.needs_projections
        reps, projs = await state.batcher.submit(images, projections=want_proj)
        try:
            reps = await pipeline.transform(account, dreq, images, reps, projs)
        except DefenceRefusal as refusal:  # count the refused request (no images served), then refuse
            await state.store.commit(account.id, RequestRecord(images=0, counters=dreq.record.counters), pipeline.rate_limit)
            raise ApiError(**_rejection_kwargs(refusal.rejection)) from None
        out = projs if payload.output == "projection" else reps
        if state.obfuscator is not None:
            out = state.obfuscator.apply(payload.output, out, dreq.digests(images))
        result = await state.store.commit(account.id, dreq.record, pipeline.rate_limit)
        if result.status == "rate_limited":
            raise ApiError(**_rejection_kwargs(rate_limited(pipeline.rate_limit, result.retry_after)))
        if result.status == "revoked":
            raise ApiError(403, "permission_error", "API key revoked")
        if result.status == "missing":
            raise ApiError(401, "authentication_error", "invalid API key")
        state.metrics.images.labels(payload.output, account.tier).inc(n)
        body = {"object": "list", "model": state.model_id,
                "data": [{"object": "embedding", "index": i, "embedding": encode_embedding(v, payload.encoding_format)}
                         for i, v in enumerate(np.asarray(out))],
                "usage": {"images": n}}
        return Response(pydantic_core.to_json(body), media_type="application/json")

    @app.get("/v1/models", response_model=ModelList, tags=["models"])
    async def models():
        return ModelList(data=[state.model_info()])

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz():
        return Health()

    @app.get("/readyz", response_model=Readiness, tags=["health"], responses={503: {"model": Readiness}})
    async def readyz():
        model_ok = state.batcher is not None and state.batcher.alive
        store_ok = await state.store.ping()
        r = Readiness(status="ready" if model_ok and store_ok else "unready", model=model_ok, store=store_ok)
        if r.status != "ready":
            return Response(r.model_dump_json(), status_code=503, media_type="application/json",
                            headers={"Retry-After": str(config.store_retry_after_s)})
        return r

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    admin = [Depends(require_admin)]
    admin_errors = {k: ERRORS[k] for k in (401, 403, 422, 503)} | {404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}

    @app.post("/v1/admin/accounts", response_model=AccountCreated, status_code=201, dependencies=admin,
              responses=admin_errors, tags=["admin"])
    async def create_account(body: AccountCreate):
        if body.tier not in config.tiers:
            raise ApiError(422, "invalid_request_error", f"unknown tier {body.tier!r}; known: {sorted(config.tiers)}", param="tier")
        acct, key = make_account(body.name, body.tier)
        try:
            await state.store.add(acct)
        except AccountExists as e:
            raise ApiError(409, "conflict", str(e), param="name") from None
        log.info("account created", extra={"new_account": acct.id, "tier": acct.tier})
        return AccountCreated(account=acct.info(), api_key=key)

    @app.get("/v1/admin/accounts", response_model=AccountList, dependencies=admin, responses=admin_errors, tags=["admin"])
    async def list_accounts():
        accts = await state.store.list()
        return AccountList(data=[a.info(await state.store.usage(a.id)) for a in accts])

    async def _get(account_id: str) -> Account:
        acct = await state.store.get(account_id)
        if acct is None:
            raise ApiError(404, "not_found", f"no account {account_id!r}", param="account_id")
        return acct

    @app.get("/v1/admin/accounts/{account_id}", response_model=AccountInfo, dependencies=admin,
             responses=admin_errors, tags=["admin"])
    async def show_account(account_id: str):
        acct = await _get(account_id)
        return acct.info(await state.store.usage(acct.id))

    @app.get("/v1/admin/accounts/{account_id}/defences", response_model=DefenceStats, dependencies=admin,
             responses=admin_errors, tags=["admin"])
    async def account_defences(account_id: str):
        acct = await _get(account_id)
        return await defence_stats(state.store, acct)

    @app.post("/v1/admin/accounts/{account_id}/revoke", response_model=AccountInfo, dependencies=admin,
              responses=admin_errors, tags=["admin"])
    async def revoke_account(account_id: str):
        acct = await _get(account_id)
        await state.store.revoke(acct.id)
        log.info("account revoked", extra={"revoked_account": acct.id})
        acct.revoked = True
        return acct.info(await state.store.usage(acct.id))

    return app


async def defence_stats(store: AccountStore, acct: Account) -> DefenceStats:
    usage = await store.usage(acct.id)
    stats = await store.defence_stats(acct.id)
    pairs = [(p, n) for p, n in await store.sybil_pairs(1000) if acct.id in p.split("|")]
    c = usage.counters
    return DefenceStats(
        account=acct.id, name=acct.name, tier=acct.tier, requests=usage.requests, images=usage.images,
        coverage=stats.get("b4b_coverage", 0.0), coverage_bits=int(stats.get("coverage_bits", 0)), sigma=stats.get("b4b_sigma", 0.0),
        history=int(stats.get("history_len", 0)), similar_hits=c.get("similar_hits", 0), sybil_hits=c.get("sybil_hits", 0),
        sybil_peers={next(x for x in p.split("|") if x != acct.id): n for p, n in pairs},
        pow_bits=int(stats.get("pow_bits", 0)), pow_deviation=stats.get("pow_deviation", 0.0),
        pow_challenges=c.get("pow_challenges", 0), pow_bits_asked=c.get("pow_bits_asked", 0),
        pow_solved=c.get("pow_solved", 0), pow_bits_paid=c.get("pow_bits_paid", 0))


def _rejection_kwargs(r) -> dict[str, Any]:
    return {"status": r.status, "type": r.type, "message": r.message, "param": r.param,
            "retry_after": r.retry_after, "extra": r.extra}


def app_from_env() -> FastAPI:
    """ASGI factory for ``uvicorn --factory server.app:app_from_env`` (config from env/HEIST_CONFIG)."""
    from server.config import load_config

    logs.setup_logging()
    return create_app(load_config())


__all__ = ["create_app", "app_from_env"]
