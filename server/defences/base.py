"""Defence hook points.

A defence is a small object with a ``name``, validated ``Params`` and two hooks:

- ``gate(account, request) -> None | Rejection``: before inference (rate limit, PoW challenge);
  a :class:`Rejection` becomes the error answer (428 + challenge, 429 + Retry-After, ...).
- ``transform(account, request, images, representations, projections) -> representations``:
  after inference (noise, similar-query perturbation, B4B). ``projections`` are the head outputs
  g_v(y) when the checkpoint has a head and a defence in the chain sets ``needs_projections``.

Anything a defence wants stored for the request goes into ``request.record`` (counters, gauges,
history entries, coverage bits, sybil pairs), which the server commits with the usage counters
in ONE atomic store operation after the transforms: a request is counted whole or not at all.
"""

from __future__ import annotations

import math
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


class DefenceRefusal(Exception):
    """Raised by a transform that refuses the whole request after inference (e.g. similar query)."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.message)
        self.rejection = rejection


@dataclass
class DefenceContext:
    """What a defence may use: the store, the server secret (keyed randomness/tokens), the metrics,
    and per-process caches shared by every tier's pipeline (FAISS history views)."""

    store: AccountStore
    secret: bytes
    metrics: Any = None  # server.metrics.Metrics (None in offline tools)
    cache: dict[str, Any] = field(default_factory=dict)

    def count(self, defence: str, action: str, n: int = 1) -> None:
        if self.metrics is not None and n:
            self.metrics.defence_actions.labels(defence, action).inc(n)

    def observe(self, name: str, value: float) -> None:
        if self.metrics is not None:
            self.metrics.observe(name, value)


@dataclass
class DefenceRequest:
    payload: EmbeddingRequest
    body: bytes
    headers: dict[str, str]
    record: RequestRecord
    _digests: list[str] | None = None

    @property
    def n_images(self) -> int:
        return len(self.payload.input)

    def digests(self, images: np.ndarray) -> list[str]:
        """SHA-256 of each preprocessed image (computed once per request)."""
        if self._digests is None or len(self._digests) != len(images):
            from server.defences.keyed import image_digests

            self._digests = image_digests(images)
        return self._digests


class DefenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
        return {"name": self.name, "params": self.params.model_dump(mode="json")}

    def check(self, tier: str, others: list[Defence]) -> None:
        """Cross-defence validation once the tier's chain is built; raise ValueError to refuse."""


class NoOp(Defence):
    """The no-op policy: answers exactly what the encoder gives."""

    name = "noop"


class RateLimitGate(Defence):
    """Fixed-window limit on requests and images per account (429 + Retry-After).

    The gate is a read-only pre-check so an exhausted account costs no inference; the store's
    atomic commit re-checks, so concurrent requests on several replicas never over-admit.
    """

    name = "rate_limit"
    params: Params  # the validated Params below (Defence.__init__ stores it)

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


def rate_limit_headers(limit: RateLimit, requests: int, images: int, reset_s: float) -> dict[str, str]:
    """The ``x-ratelimit-{limit,remaining,reset}-{requests,images}`` headers of an account's window
    (``requests``/``images`` counted in it, ``reset_s`` until it ends); a quantity without limit has none."""
    out: dict[str, str] = {}
    reset = f"{max(1, math.ceil(reset_s))}s"
    for name, cap, used in (("requests", limit.requests, requests), ("images", limit.images, images)):
        if cap is not None:
            out[f"x-ratelimit-limit-{name}"] = str(cap)
            out[f"x-ratelimit-remaining-{name}"] = str(max(0, cap - used))
            out[f"x-ratelimit-reset-{name}"] = reset
    return out


REGISTRY: dict[str, type[Defence]] = {NoOp.name: NoOp, RateLimitGate.name: RateLimitGate}


def register(cls: type[Defence]) -> type[Defence]:
    REGISTRY[cls.name] = cls
    return cls


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
            defences.append(cls(ctx, params))
        except ValidationError as e:
            raise ConfigError(f"tiers.{tier}.defences[{i}] ({spec.name}): invalid params: {e}") from None
        except (ValueError, OSError) as e:
            raise ConfigError(f"tiers.{tier}.defences[{i}] ({spec.name}): {e}") from None
    for d in defences:
        try:
            d.check(tier, defences)
        except ValueError as e:
            raise ConfigError(f"tiers.{tier}.defences ({d.name}): {e}") from None
    if not defences:
        defences.append(NoOp(ctx, NoOp.Params()))
    return DefencePipeline(tier, config, defences)
