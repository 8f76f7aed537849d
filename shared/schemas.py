"""Wire schemas of the victim API (v1), shared by the server, the attacker and the defender.

The HTTP contract lives in ARCHITECTURE.md; these pydantic models are its single source of truth.
Helpers at the bottom turn embeddings to and from the wire (``encoding_format`` float | base64,
where base64 carries little-endian float32 bytes).
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

EncodingFormat = Literal["float", "base64"]
OutputKind = Literal["representation", "projection"]
API_KEY_PREFIX = "heist_"


# ---- errors -------------------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    type: str = Field(description="machine-readable error type, e.g. invalid_image, rate_limit_exceeded")
    message: str = Field(description="human-readable explanation")
    param: str | None = Field(default=None, description="the offending request field, e.g. input[3]")


class ErrorResponse(BaseModel):
    """Every non-2xx answer has this shape."""

    error: ErrorDetail


class Challenge(BaseModel):
    """Proof-of-work challenge (issued with 428 by the PoW defence)."""

    algorithm: Literal["SHA-256"] = "SHA-256"
    token: str
    difficulty: int = Field(ge=0, le=256)
    expires_at: str


class ChallengeResponse(ErrorResponse):
    challenge: Challenge


# ---- embeddings ---------------------------------------------------------------------------------

class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: list[str] = Field(min_length=1, description="base64-encoded PNG/JPEG/WebP images or data: URIs")
    encoding_format: EncodingFormat = Field(default="float", description="float: JSON numbers; base64: little-endian float32")
    output: OutputKind = Field(default="representation", description="projection only where the account's tier allows it")
    model: str | None = Field(default=None, description="optional; must name the served model when given")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    images: int = Field(description="images embedded (and counted against the account)")
    prompt_tokens: int = Field(default=0, description="the same count under the OpenAI name (one image, one token)")
    total_tokens: int = Field(default=0, description="the same count under the OpenAI name (one image, one token)")


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Embedding]
    usage: Usage


# ---- models -------------------------------------------------------------------------------------

class NormalizationInfo(BaseModel):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class ModelInfo(BaseModel):
    id: str
    object: Literal["model"] = "model"
    architecture: str
    input_size: int
    representation_dim: int
    projection_dim: int | None = None
    normalization: NormalizationInfo
    outputs: list[OutputKind] = Field(description="outputs the model can give; the account's tier may allow fewer")
    max_images_per_request: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


# ---- health -------------------------------------------------------------------------------------

class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unready"]
    model: bool
    store: bool


# ---- accounts (admin) ---------------------------------------------------------------------------

class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    tier: str = Field(min_length=1, max_length=32)


class AccountUsage(BaseModel):
    requests: int = 0
    images: int = 0
    counters: dict[str, int] = Field(default_factory=dict, description="defence counters (PoW bits paid, flags, ...)")


class AccountInfo(BaseModel):
    id: str
    name: str
    tier: str
    created_at: str
    revoked: bool = False
    usage: AccountUsage = Field(default_factory=AccountUsage)


class AccountCreated(BaseModel):
    account: AccountInfo
    api_key: str = Field(description="shown once; the server keeps only its hash")


class AccountList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AccountInfo]


class QueryLog(BaseModel):
    """An account's logged queries (the tier's ``query_log``): the last images it was served, oldest
    first, as the model saw them (decoded, resized, cropped), each a base64 PNG ready to send again."""

    object: Literal["query_log"] = "query_log"
    account_id: str
    size: int = Field(description="the images' side in pixels")
    images: list[str]


# ---- wire helpers -------------------------------------------------------------------------------

def encode_embedding(vec: np.ndarray, fmt: EncodingFormat) -> list[float] | str:
    v = np.ascontiguousarray(vec, dtype="<f4")
    if fmt == "base64":
        return base64.b64encode(v.tobytes()).decode("ascii")
    return v.tolist()


def decode_embedding(value: list[float] | str) -> np.ndarray:
    """The inverse of :func:`encode_embedding`: a float32 vector."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def decode_embeddings(resp: EmbeddingResponse | dict) -> np.ndarray:
    """(N, D) float32 matrix from a response, rows in ``index`` order."""
    r = resp if isinstance(resp, EmbeddingResponse) else EmbeddingResponse.model_validate(resp)
    rows = sorted(r.data, key=lambda e: e.index)
    return np.stack([decode_embedding(e.embedding) for e in rows]) if rows else np.zeros((0, 0), np.float32)
