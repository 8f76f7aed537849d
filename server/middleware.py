"""Request middleware of the victim API: request id, JSON access log, metrics and the body limit."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException as StarletteHTTPException

from server import logs
from server.errors import error_response
from server.state import ServerState

log = logging.getLogger("heist.api")

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
