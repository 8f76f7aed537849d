"""Defence hook points.

A defence is a small object with a ``name``, validated ``Params`` and two hooks:

- ``gate(account, request) -> None | Rejection``: before inference (rate limit, PoW challenge);
  a :class:`Rejection` becomes the error answer (428 + challenge, 429 + Retry-After, ...).
- ``transform(account, request, images, representations, projections) -> representations``:
  after inference (noise, similar-query perturbation, B4B). ``projections`` are the head outputs
  g_v(y) when the checkpoint has a head and a defence in the chain sets ``needs_projections``.

Anything a defence wants stored for the request goes into ``request.record`` (counters now;
history streams and coverage bitmaps later), which the server commits with the usage counters
in ONE atomic store operation after the transforms: a request is counted whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from server.accounts import Account
from server.config import ConfigError, RateLimit, TierConfig
from server.store.base import AccountStore, RequestRecord
from shared.schemas import EmbeddingRequest


@dataclass
class Rejection:
    """A gate's refusal; the server answers ``{"error": ...}`` plus ``extra`` keys (e.g. challenge)."""

    status: int
    type: str
    message: str
    param: str | None = None
    retry_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DefenceContext:
    """What a defence may use: the store and the server secret (for keyed randomness/tokens)."""

    store: AccountStore
    secret: bytes


@dataclass
class DefenceRequest:
    payload: EmbeddingRequest
    body: bytes
    headers: dict[str, str]
    record: RequestRecord

    @property
    def n_images(self) -> int:
        return len(self.payload.input)


class Defence:
    name: ClassVar[str] = "defence"
    needs_projections: ClassVar[bool] = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, ctx: DefenceContext, params: BaseModel) -> None:
        self.ctx = ctx
        self.params = params

    async def gate(self, account: Account, request: DefenceRequest) -> Rejection | None:
        return None

    async def transform(self, account: Account, request: DefenceRequest, images: np.ndarray,
                        representations: np.ndarray, projections: np.ndarray | None) -> np.ndarray:
        return representations

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params.model_dump()}


class NoOp(Defence):
    """The no-op policy: answers exactly what the encoder gives."""

    name = "noop"


class RateLimitGate(Defence):
    """Fixed-window limit on requests and images per account (429 + Retry-After).

    The gate is a read-only pre-check so an exhausted account costs no inference; the store's
    atomic commit re-checks, so concurrent requests on several replicas never over-admit.
    """

    name = "rate_limit"

    class Params(RateLimit):
        pass

    async def gate(self, account: Account, request: DefenceRequest) -> Rejection | None:
        limit: RateLimit = self.params
        if limit.images is not None and request.n_images > limit.images:
            return Rejection(400, "invalid_request_error",
                             f"{request.n_images} images exceed this tier's quota of {limit.images} per {limit.window_s} s",
                             param="input")
        retry = await self.ctx.store.rate_check(account.id, limit, request.n_images)
        if retry is not None:
            return rate_limited(limit, retry)
        return None


def rate_limited(limit: RateLimit, retry_after: float) -> Rejection:
    quota = ", ".join(f"{v} {k}" for k, v in (("requests", limit.requests), ("images", limit.images)) if v is not None)
    return Rejection(429, "rate_limit_exceeded", f"rate limit of {quota} per {limit.window_s} s reached; retry later",
                     retry_after=retry_after)


REGISTRY: dict[str, type[Defence]] = {NoOp.name: NoOp, RateLimitGate.name: RateLimitGate}


class DefencePipeline:
    def __init__(self, tier: str, config: TierConfig, defences: list[Defence]) -> None:
        self.tier = tier
        self.config = config
        self.defences = defences
        self.rate_limit = config.rate_limit
        self.needs_projections = any(d.needs_projections for d in defences)

    async def gate(self, account: Account, request: DefenceRequest) -> Rejection | None:
        for d in self.defences:
            decision = await d.gate(account, request)
            if decision is not None:
                return decision
        return None

    async def transform(self, account: Account, request: DefenceRequest, images: np.ndarray,
                        representations: np.ndarray, projections: np.ndarray | None) -> np.ndarray:
        for d in self.defences:
            representations = await d.transform(account, request, images, representations, projections)
        return representations

    def describe(self) -> dict[str, Any]:
        return {"tier": self.tier, "outputs": list(self.config.outputs), "defences": [d.describe() for d in self.defences]}


def build_pipeline(tier: str, config: TierConfig, ctx: DefenceContext) -> DefencePipeline:
    defences: list[Defence] = []
    limit = config.rate_limit
    if limit.requests is not None or limit.images is not None:
        defences.append(RateLimitGate(ctx, RateLimitGate.Params(**limit.model_dump())))
    for i, spec in enumerate(config.defences):
        cls = REGISTRY.get(spec.name)
        if cls is None:
            raise ConfigError(f"tiers.{tier}.defences[{i}]: unknown defence {spec.name!r}; known: {sorted(REGISTRY)}")
        try:
            params = cls.Params(**spec.params)
        except ValidationError as e:
            raise ConfigError(f"tiers.{tier}.defences[{i}] ({spec.name}): invalid params: {e}") from None
        defences.append(cls(ctx, params))
    if not defences:
        defences.append(NoOp(ctx, NoOp.Params()))
    return DefencePipeline(tier, config, defences)
