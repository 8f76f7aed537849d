"""The OpenAPI document tells what the server enforces: per-config bounds (images per request, tiers,
the served model), the image strings' shape, and the headers every answer carries.

FastAPI derives the document from the pydantic models; what depends on the configuration or is
checked after parsing (image decoding) is added here, once, the first time ``/openapi.json`` is read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI

from server.config import ServerConfig
from shared.images import encode_image

# strict base64 (what the decoder accepts), optionally behind a data: URI prefix
IMAGE_PATTERN = r"^(?:[Dd][Aa][Tt][Aa]:[^,]*,)?[A-Za-z0-9+/]+={0,2}$"

REQUEST_ID = {"description": "the request's id: the caller's X-Request-Id when it is 1-64 of [A-Za-z0-9._-], "
                             "else a generated one; logged with every line of the request",
              "required": True, "schema": {"type": "string"}}
RETRY_AFTER = {"description": "seconds to wait before retrying", "required": True, "schema": {"type": "string"}}
RATE_LIMIT = {
    f"x-ratelimit-{kind}-{q}": {"description": desc.format(q=q), "schema": {"type": "string"}}
    for q in ("requests", "images")
    for kind, desc in (("limit", "{q} allowed per window by the account's tier (absent: no limit on {q})"),
                       ("remaining", "{q} left in the current window"),
                       ("reset", "time until the window ends, as a duration in seconds (e.g. 42s)"))}


def document(schema: dict[str, Any], config: ServerConfig, model_id: str) -> dict[str, Any]:
    """Add the server's own constraints and headers to FastAPI's document (in place)."""
    comps = schema.get("components", {}).get("schemas", {})
    if "EmbeddingRequest" in comps:  # one request the server accepts: a small grey image
        example = encode_image(np.full((16, 16, 3), 128, np.uint8), config.allowed_formats[0])
        comps["EmbeddingRequest"]["examples"] = [{"input": [example]}]
    req = comps.get("EmbeddingRequest", {}).get("properties", {})
    if "input" in req:
        req["input"]["maxItems"] = config.max_images_per_request
        req["input"]["items"] = {"type": "string", "minLength": 1, "pattern": IMAGE_PATTERN,
                                 "contentEncoding": "base64",
                                 "description": "an image in an allowed format (" + ", ".join(config.allowed_formats)
                                                + "): base64, or a data:image/<type>;base64, URI"}
    if "model" in req:
        req["model"] = {"anyOf": [{"type": "string", "enum": [model_id]}, {"type": "null"}],
                        "description": "optional; the served model's id (GET /v1/models) when given; another id: 404"}
    tier = comps.get("AccountCreate", {}).get("properties", {}).get("tier")
    if tier is not None:
        tier["enum"] = sorted(config.tiers)
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            for status, resp in op.get("responses", {}).items():
                headers = resp.setdefault("headers", {})
                headers["x-request-id"] = REQUEST_ID
                if status in ("429", "503"):
                    headers["Retry-After"] = RETRY_AFTER
                if path == "/v1/embeddings" and status in ("200", "429"):
                    headers.update(RATE_LIMIT)
    return schema


def install(app: FastAPI, config: ServerConfig, model_id: str) -> None:
    """Serve :func:`document`'s version of the app's OpenAPI document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(build(), config, model_id)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
