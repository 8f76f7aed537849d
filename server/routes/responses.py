"""Documented error responses (OpenAPI ``responses=``) shared by the routers."""

from __future__ import annotations

from typing import Any

from shared.schemas import ChallengeResponse, ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc} for code, desc in {
        400: "bad request: the body is not JSON (invalid_json), too many images, no projection head",
        401: "missing or invalid API key", 403: "revoked key or output not allowed",
        404: "model not served here (model_not_found)",
        413: "body or image too large", 415: "image format not allowed", 422: "malformed input (param names it)",
        428: "proof of work required (body carries the challenge)",
        429: "rate limited (Retry-After)", 503: "store unreachable or overloaded (Retry-After)"}.items()}
ERRORS[428]["model"] = ChallengeResponse

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {**{k: ERRORS[k] for k in (400, 401, 403, 413, 422, 503)},
                                                  404: {"model": ErrorResponse, "description": "no such account (not_found)"},
                                                  409: {"model": ErrorResponse, "description": "name taken (conflict)"}}
