"""Server configuration: pydantic-settings, from an optional file (JSON or TOML) and the environment.

Precedence: defaults < file (``--config``/``HEIST_CONFIG``) < environment < CLI flags.
Every field ``name`` is read from the environment variable ``HEIST_<NAME>`` (:func:`load_config`,
the server's entry point, reads ``REDIS_URL`` for ``redis_url`` too); structured fields (``tiers``, ``obfuscation``,
``allowed_formats``) take JSON there. ``heist-server config --env`` lists every variable.
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
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

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
    query_log: int = Field(default=0, ge=0, le=100_000, description=(
        "served images kept per account, the last N as the model saw them (raw pixels in the store; "
        "GET /v1/admin/accounts/{id}/queries), for an ownership investigation (heist-defend verify "
        "--query-log); 0 = none"))


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


ENV_PREFIX = "HEIST_"
# set while load_config validates its own layers: the environment is then one of them, not read again
_LAYERED: ContextVar[bool] = ContextVar("_LAYERED", default=False)


class ServerConfig(BaseSettings):
    """Every setting of a served victim; constructing it reads ``HEIST_*`` from the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True,
                                      populate_by_name=True)
    checkpoint: Path | None = Field(default=None, description="victim checkpoint folder (safetensors + config)")
    model_id: str | None = Field(default=None, description="public model id; default: checkpoint folder name")
    host: str = Field(default="127.0.0.1", description="address to bind")
    port: int = Field(default=8000, ge=0, le=65535, description="port to bind (0: any free port)")
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    torch_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads; None: torch's default")
    workers: int = Field(default=1, ge=1, le=256, description="server processes sharing the port (uvicorn workers), "
                         "each decoding, defending and running the model; more than 1 needs redis_url")
    jit: bool = Field(default=True, description="on CPU, serve a TorchScript-traced, frozen copy of the encoder and head "
                                                "(same weights, outputs equal to ~1e-6); false = eager PyTorch")
    cuda_graphs: bool = Field(default=True, description=(
        "on a CUDA device, capture one CUDA graph per bucketed batch size (powers of two up to max_batch; a batch "
        "is padded to its bucket) and replay it: one call per batch instead of one kernel launch per layer from "
        "Python, each retaking the GIL. false = eager forward (same buffers and padding). Ignored on CPU"))
    gpu_dtype: Literal["float32", "bfloat16"] = Field(default="bfloat16", description=(
        "on a CUDA device, the forward pass's precision: bfloat16 = bf16 autocast (checked at startup against "
        "float32 on random inputs, see gpu_bf16_tolerance), float32 = full precision. Ignored on CPU"))
    gpu_bf16_tolerance: float = Field(default=0.02, gt=0, le=1, description=(
        "with gpu_dtype bfloat16: the largest per-row relative L2 error of bf16 answers against float32 "
        "accepted by the startup check on 8 random images; above it the server refuses to start"))
    device_decode: Literal["auto", "on", "off"] = Field(default="auto", description=(
        "JPEG decoding on the served device (server.gpu_decode: nvJPEG through torchvision, resize and crop with "
        "torch): auto = on a CUDA device, for the JPEGs from the smallest size at which a startup calibration "
        "measured it faster than Pillow (never, if it did not); on = every RGB or grey JPEG, on any device (on the "
        "CPU, torchvision's decoder); off = Pillow only. Pixels differ from Pillow's by about 0.4 levels"))
    # batching
    max_batch: int = Field(default=64, ge=1, le=4096, description="most images in one forward pass (micro-batch)")
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000, description="how long a micro-batch waits to fill")
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
    malloc_retain: bool = Field(default=True, description=(
        "glibc only: keep freed memory in the process (shared.malloc.retain_freed_memory) instead of mapping "
        "every forward pass's activations afresh; without it a width-16 forward of 64 images faults in about "
        "4,500 pages and spends 15-20% of its time in the kernel (python -m bench.page_faults). Costs resident "
        "memory: the process keeps its peak heap."))
    switch_interval_ms: float | None = Field(default=0.2, gt=0, le=100, description=(
        "Python's GIL switch interval for the server process (sys.setswitchinterval; Python's default is 5 ms). "
        "The inference thread needs the GIL back after every forward pass; while the event loop runs Python it "
        "waits up to this long. None leaves the interpreter's setting alone."))
    # limits
    max_images_per_request: int = Field(default=64, ge=1, description="more images in one request: 400")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="larger request bodies: 413")
    discard_body_bytes: int = Field(default=128 * 1024 * 1024, ge=0, description=(
        "lingering close: the server reads and drops a refused (413) body up to this many bytes in all before "
        "it answers and closes, so clients that send the whole body before reading (urllib, requests) get the "
        "413 rather than a reset connection; a larger declared body is answered at once"))
    discard_body_s: float = Field(default=10.0, ge=0, le=600, description=(
        "lingering close: the longest the server reads a refused body before it answers 413 and closes"))
    max_image_bytes: int = Field(default=4 * 1024 * 1024, ge=64, description="larger encoded images: 413")
    max_image_pixels: int = Field(default=4096 * 4096, ge=1, description="larger decoded images: 400 (decompression bombs)")
    allowed_formats: tuple[str, ...] = Field(default=FORMATS, description="image formats accepted (JSON list in env)")
    # store
    redis_url: str | None = Field(default=None, description=(
        "redis:// (rediss://, unix://) URL of one Redis, or redis+cluster:// (rediss+cluster://) URL of any node of "
        "a Redis Cluster (one atomic script per account's slot, global sybil writes a second step: docs/scaling.md); "
        "None = embedded in-process store (one process only)"))
    store_prefix: str = Field(default="heist", pattern=r"^[A-Za-z0-9_.:-]+$", description="prefix of every Redis key")
    store_timeout_s: float = Field(default=1.0, gt=0, le=30, description="Redis socket timeout; beyond it, 503")
    idempotency_ttl_s: float = Field(default=600, gt=0, le=7 * 86400, description=(
        "how long the answer of a request sent with an Idempotency-Key is kept for its retries (they get it "
        "again, uncharged); the store holds rows x dim x 4 bytes per such request for this long"))
    idempotency_lease_s: float = Field(default=10, gt=0, le=3600, description=(
        "how long a running request holds its Idempotency-Key; a retry meanwhile gets 409 "
        "idempotency_in_progress. A request still running after it counts nothing if a retry took the "
        "key over (its client gets 409), so a short lease only delays retries after a crash"))
    store_retry_after_s: int = Field(default=2, ge=1, description="Retry-After of a 503 when the store is unreachable")
    # accounts / policy
    tiers: dict[str, TierConfig] = Field(default_factory=default_tiers,
                                         description="account tiers: outputs, rate limit, defences (JSON in env)")
    obfuscation: Obfuscation | None = Field(default=None, description="serve through one fixed output transform "
                                            "(a suspect obfuscating a stolen copy; JSON in env)")
    # logging
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    # secrets (env only)
    admin_token: SecretStr | None = Field(default=None, exclude=True, description="admin endpoints' bearer token "
                                          "(16+ characters; absent: admin endpoints disabled); env only")
    server_secret: SecretStr | None = Field(default=None, exclude=True, description="keys PoW tokens and the "
                                            "defences' randomness (same on every replica); env only")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,) if _LAYERED.get() else (init_settings, env_settings)

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
        if not v.startswith(("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")):
            raise ValueError("must be a redis://, rediss://, unix://, redis+cluster:// or rediss+cluster:// URL")
        return v

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        if not self.tiers:
            raise ValueError("at least one tier is needed")
        if self.workers > 1 and self.redis_url is None:
            raise ValueError("workers > 1 needs redis_url (REDIS_URL): the embedded store lives inside one process")
        if self.max_image_bytes > self.max_body_bytes:
            raise ValueError("max_image_bytes cannot exceed max_body_bytes")
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 16:
            raise ValueError("HEIST_ADMIN_TOKEN must be at least 16 characters")
        return self

    def secret_bytes(self) -> bytes:
        if self.server_secret is None:
            self.server_secret = SecretStr(secrets.token_urlsafe(32))
        return self.server_secret.get_secret_value().encode()


SECRETS = ("admin_token", "server_secret")
# variables outside the prefix that load_config reads too (the prefixed one wins)
ALIASES = {"redis_url": "REDIS_URL"}


def env_names(field: str) -> tuple[str, ...]:
    """The environment variables that set ``field``, preferred first."""
    return tuple(v for v in (ALIASES.get(field), ENV_PREFIX + field.upper()) if v)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")


def env_table() -> list[dict[str, str]]:
    """One row per setting: variable, type, default, description (``heist-server config --env``)."""
    rows = []
    for name, info in ServerConfig.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, dict):
            default = "{" + ", ".join(default) + "}"
        rows.append({"variable": " or ".join(env_names(name)), "field": name,
                     "type": _type_name(info.annotation),
                     "default": "" if name in SECRETS else str(default), "description": info.description or ""})
    return rows


class EnvironmentLayer(EnvSettingsSource):
    """The environment layer of :func:`load_config`, read from a given mapping (default ``os.environ``)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        super().__init__(ServerConfig)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


WORKER_CONFIG_ENV = "HEIST_WORKER_CONFIG"


def worker_handoff(cfg: ServerConfig, folder: Path) -> dict[str, str]:
    """Environment for ``--workers`` processes: the parent's validated config (flags included) as a JSON
    file they load as is, and one server secret for all of them (generated here when none is set)."""
    path = folder / "server-config.json"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    path.chmod(0o600)
    return {WORKER_CONFIG_ENV: str(path), "HEIST_SERVER_SECRET": cfg.secret_bytes().decode()}


def config_from_handoff(environ: Mapping[str, str] | None = None) -> ServerConfig | None:
    """In a worker: the parent's config (secrets from the environment), or None outside ``--workers``."""
    environ = os.environ if environ is None else environ
    path = environ.get(WORKER_CONFIG_ENV)
    if not path:
        return None
    data = json.loads(Path(path).read_text())
    secrets_env = {v: environ[v] for f in SECRETS for v in env_names(f) if environ.get(v)}
    return load_config(env=secrets_env, **data)


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


def config_from(data: Mapping[str, Any]) -> ServerConfig:
    """Exactly ``data`` (and the defaults), validated; the environment is not read."""
    token = _LAYERED.set(True)
    try:
        return ServerConfig.model_validate(dict(data))
    finally:
        _LAYERED.reset(token)


def load_config(file: str | Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
    """Build and validate the config (file < environment < ``overrides``); raises :class:`ConfigError`
    with every problem listed, each naming its environment variable."""
    environ = os.environ if env is None else env
    file = file or environ.get("HEIST_CONFIG")
    data: dict[str, Any] = read_file(file) if file else {}
    data.update({f: environ[v] for f, v in ALIASES.items() if environ.get(v)})
    try:
        data.update(EnvironmentLayer(environ)())
    except Exception as e:  # a structured field whose env value is not JSON
        raise ConfigError(f"invalid server configuration: {e}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return config_from(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(config)"
            top = str(err["loc"][0]) if err["loc"] else ""
            var = f" (env {env_names(top)[0]})" if top in ServerConfig.model_fields else ""
            lines.append(f"  {loc}{var}: {err['msg']}")
        raise ConfigError("invalid server configuration:\n" + "\n".join(lines)) from None
