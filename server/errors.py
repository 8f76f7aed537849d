"""Errors in the contract's shape: ``{"error": {"type", "message", "param"}}`` (+ extra keys)."""

from __future__ import annotations

import math
from typing import Any

from fastapi.responses import JSONResponse


class ApiError(Exception):
    def __init__(self, status: int, type: str, message: str, param: str | None = None,
                 retry_after: float | None = None, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.param = status, type, message, param
        self.retry_after, self.extra, self.headers = retry_after, extra or {}, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.type, self.message, self.param, self.retry_after, self.extra,
                              self.headers)


def error_response(status: int, type: str, message: str, param: str | None = None, retry_after: float | None = None,
                   extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    body = {"error": {"type": type, "message": message, "param": param}, **(extra or {})}
    return JSONResponse(body, status_code=status, headers=headers)


STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found", 405: "method_not_allowed", 406: "not_acceptable", 413: "request_too_large",
                415: "unsupported_media_type", 422: "invalid_request_error", 429: "rate_limit_exceeded",
                503: "service_unavailable"}
