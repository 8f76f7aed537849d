"""Server configuration: validated pydantic data from an optional file (JSON or TOML) plus env.

Precedence: defaults < file (``--config``/``HEIST_CONFIG``) < environment < CLI flags.
Secrets come only from the environment (never from the file, never from the repo):
``HEIST_ADMIN_TOKEN`` (admin endpoints; absent = admin endpoints disabled) and
``HEIST_SERVER_SECRET`` (keys the PoW tokens and the defences' randomness; absent = a random
per-process secret, logged as a warning, which is wrong for several replicas).
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from shared.images import FORMATS


class ConfigError(ValueError):
    """The configuration is invalid; the message says which field and why."""


class RateLimit(BaseModel):
    """Fixed window per account; ``None`` means no limit on that quantity."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    window_s: int = Field(default=60, ge=1, le=86400)
    requests: int | None = Field(default=None, ge=1)
    images: int | None = Field(default=None, ge=1)


class DefenceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = ""
    outputs: tuple[Literal["representation", "projection"], ...] = ("representation",)
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    defences: tuple[DefenceSpec, ...] = ()


class Obfuscation(BaseModel):
    """Serve every answer through ONE fixed output transform (a suspect obfuscating a stolen copy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["permute", "pad_shuffle", "affine", "binary"]
    seed: int = Field(default=0, ge=0)
    pad: int = Field(default=16, ge=1, le=4096, description="pad_shuffle: extra dimensions (ignored by the others)")


def default_tiers() -> dict[str, TierConfig]:
    return {
        "free": TierConfig(description="trial: small quota, representations only",
                           rate_limit=RateLimit(window_s=60, requests=60, images=1000)),
        "standard": TierConfig(description="paying customer", rate_limit=RateLimit(window_s=60, requests=600, images=20000)),
        "research": TierConfig(description="trusted partner: projections too, generous quota",
                               outputs=("representation", "projection"),
                               rate_limit=RateLimit(window_s=60, requests=6000, images=200000)),
        "unlimited": TierConfig(description="internal/benchmarks: no limit, no defence",
                                outputs=("representation", "projection")),
    }


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: Path | None = None
    model_id: str | None = Field(default=None, description="public model id; default: checkpoint folder name")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    torch_threads: int | None = Field(default=None, ge=1)
    jit: bool = Field(default=True, description="on CPU, serve a TorchScript-traced, frozen copy of the encoder and head "
                                                "(same weights, outputs equal to ~1e-6); false = eager PyTorch")
    # batching
    max_batch: int = Field(default=64, ge=1, le=4096)
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    max_queue_images: int = Field(default=4096, ge=1, description="beyond this, 503 (overloaded)")
    decode_threads: int = Field(default=2, ge=1, le=256, description="threads decoding request images at once; "
                                "more only steal CPU from inference on a small machine")
    faiss_threads: int | None = Field(default=1, ge=1, le=256, description=(
        "OpenMP threads of a FAISS search (similar-query defence). One request searches a few vectors; "
        "more threads only spin against the inference thread. Applied on the event loop's thread, where FAISS runs. "
        "None: FAISS's default (all cores)."))
    blas_threads: int | None = Field(default=1, ge=1, le=256, description=(
        "threads of numpy's BLAS (defences' small matrix products: B4B hashing and transforms, noise); "
        "more only spin against the inference thread. None: the library's default (all cores)."))
    gc_freeze: bool = Field(default=True, description=(
        "after startup, move every object alive (torch, FastAPI, the model) to the collector's permanent "
        "generation (gc.freeze): full collections then scan only what requests create. Without it a full "
        "collection pauses the event loop while it scans them, which shows in the tail latency "
        "(bench/api_throughput.py --no-gc-freeze)."))
    switch_interval_ms: float | None = Field(default=0.2, gt=0, le=100, description=(
        "Python's GIL switch interval for the server process (sys.setswitchinterval; Python's default is 5 ms). "
        "The inference thread needs the GIL back after every forward pass; while the event loop runs Python it "
        "waits up to this long. None leaves the interpreter's setting alone."))
    # limits
    max_images_per_request: int = Field(default=64, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(default=4 * 1024 * 1024, ge=64)
    max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    allowed_formats: tuple[str, ...] = FORMATS
    # store
    redis_url: str | None = Field(default=None, description="redis:// URL; None = embedded in-process store")
    store_prefix: str = Field(default="heist", pattern=r"^[A-Za-z0-9_.:-]+$")
    store_timeout_s: float = Field(default=1.0, gt=0, le=30)
    store_retry_after_s: int = Field(default=2, ge=1)
    # accounts / policy
    tiers: dict[str, TierConfig] = Field(default_factory=default_tiers)
    obfuscation: Obfuscation | None = None
    # logging
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # secrets (env only)
    admin_token: SecretStr | None = Field(default=None, exclude=True)
    server_secret: SecretStr | None = Field(default=None, exclude=True)

    @field_validator("allowed_formats")
    @classmethod
    def _formats(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        v = tuple(f.upper() for f in v)
        bad = [f for f in v if f not in FORMATS]
        if bad:
            raise ValueError(f"unsupported formats {bad}; choose from {list(FORMATS)}")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        if not self.tiers:
            raise ValueError("at least one tier is needed")
        if self.max_image_bytes > self.max_body_bytes:
            raise ValueError("max_image_bytes cannot exceed max_body_bytes")
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 16:
            raise ValueError("HEIST_ADMIN_TOKEN must be at least 16 characters")
        return self

    def secret_bytes(self) -> bytes:
        if self.server_secret is None:
            self.server_secret = SecretStr(secrets.token_urlsafe(32))
        return self.server_secret.get_secret_value().encode()


# environment variables -> fields (scalars only; tiers come from the file)
ENV = {
    "REDIS_URL": "redis_url",
    "HEIST_ADMIN_TOKEN": "admin_token",
    "HEIST_SERVER_SECRET": "server_secret",
    "HEIST_CHECKPOINT": "checkpoint",
    "HEIST_MODEL_ID": "model_id",
    "HEIST_HOST": "host",
    "HEIST_PORT": "port",
    "HEIST_DEVICE": "device",
    "HEIST_TORCH_THREADS": "torch_threads",
    "HEIST_JIT": "jit",
    "HEIST_MAX_BATCH": "max_batch",
    "HEIST_MAX_WAIT_MS": "max_wait_ms",
    "HEIST_DECODE_THREADS": "decode_threads",
    "HEIST_SWITCH_INTERVAL_MS": "switch_interval_ms",
    "HEIST_FAISS_THREADS": "faiss_threads",
    "HEIST_BLAS_THREADS": "blas_threads",
    "HEIST_GC_FREEZE": "gc_freeze",
    "HEIST_MAX_IMAGES_PER_REQUEST": "max_images_per_request",
    "HEIST_MAX_BODY_BYTES": "max_body_bytes",
    "HEIST_MAX_IMAGE_PIXELS": "max_image_pixels",
    "HEIST_STORE_PREFIX": "store_prefix",
    "HEIST_LOG_LEVEL": "log_level",
}


def read_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot parse: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a table/object")
    for secret in ("admin_token", "server_secret"):
        if secret in data:
            raise ConfigError(f"config file {path}: {secret!r} must come from the environment, not a file")
    return data


def load_config(file: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> ServerConfig:
    """Build and validate the config; raises :class:`ConfigError` with every problem listed."""
    env = dict(os.environ if env is None else env)
    file = file or env.get("HEIST_CONFIG")
    data: dict[str, Any] = read_file(file) if file else {}
    for var, field in ENV.items():
        if env.get(var) not in (None, ""):
            data[field] = env[var]
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(config)"
            var = next((k for k, f in ENV.items() if f == loc), None)
            lines.append(f"  {loc}{f' (env {var})' if var else ''}: {err['msg']}")
        raise ConfigError("invalid server configuration:\n" + "\n".join(lines)) from None
