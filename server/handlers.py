"""Exception handlers of the victim API: every error leaves in the ``{"error": {...}}`` shape."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from server.batcher import Overloaded
from server.deps import get_state
from server.errors import STATUS_TYPES, ApiError, error_response
from server.store import StoreUnavailable

log = logging.getLogger("heist.api")


async def api_error(request: Request, exc: ApiError):
    return exc.response()


async def store_unavailable(request: Request, exc: StoreUnavailable):
    """503 with Retry-After: the store could not confirm, so the request is refused (fail closed)."""
    state = get_state(request)
    state.metrics.store_errors.inc()
    log.warning("store unavailable", extra={"error": str(exc)})
    return error_response(503, "store_unavailable", "account store unreachable; retry later",
                          retry_after=state.config.store_retry_after_s)


async def overloaded(request: Request, exc: Overloaded):
    return error_response(503, "overloaded", f"server overloaded ({exc}); retry later", retry_after=1)


async def http_error(request: Request, exc: StarletteHTTPException):
    headers = getattr(exc, "headers", None)
    allowed = _allowed_methods(request) if exc.status_code == 405 else None
    if allowed:  # Allow: every method of the path, not only those of the first route that matched it
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    return error_response(exc.status_code, STATUS_TYPES.get(exc.status_code, "http_error"), str(exc.detail),
                          headers=headers)


def _allowed_methods(request: Request) -> list[str] | None:
    """The methods the OpenAPI document gives the request's path (HEAD with GET); None for a path it omits."""
    for template, item in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.url.path):
            methods = {m.upper() for m in item if m.upper() in _METHODS}
            return sorted(methods | ({"HEAD"} if "GET" in methods else set()))
    return None


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"}


async def validation_error(request: Request, exc: RequestValidationError):
    """400 for a body that is not JSON; 422 naming the first bad field (``param``) and up to five messages."""
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return error_response(400, "invalid_json", "request body is not valid JSON")
    first = errs[0] if errs else {}
    loc = [x for x in first.get("loc", ()) if x != "body"]
    param = "".join(f"[{x}]" if isinstance(x, int) else (f".{x}" if i else str(x)) for i, x in enumerate(loc)) or None
    msgs = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}" for e in errs[:5])
    return error_response(422, "invalid_request_error", msgs, param=param)


async def internal_error(request: Request, exc: Exception):
    log.exception("internal error")
    return error_response(500, "internal_error", "internal server error")


# each handler takes its own exception class (hence Any): Starlette picks it by the exception's type
HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[Response]]] = {
    ApiError: api_error,
    StoreUnavailable: store_unavailable,
    Overloaded: overloaded,
    StarletteHTTPException: http_error,
    RequestValidationError: validation_error,
    Exception: internal_error,
}


def install_handlers(app: FastAPI) -> None:
    """Register every handler of ``HANDLERS`` on ``app``."""
    for exc_class, handler in HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
