"""Request middleware of the victim API: request id, JSON access log, metrics and the body limit
(with lingering close: a refused body is read and dropped, within bounds, before the 413)."""

from __future__ import annotations

import logging
import re
import time
import uuid

import anyio
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

    async def _discard(self, receive, seen: int) -> None:
        """Lingering close of a refused body: read and drop the rest of it (the body read in all stays
        within ``discard_body_bytes``, the reading within ``discard_body_s``), so that a client writing
        its whole body before reading the answer (urllib, requests) reads the 413 instead of a reset."""
        bound = self.state.config.discard_body_bytes
        with anyio.move_on_after(self.state.config.discard_body_s):
            while seen < bound:
                message = await receive()
                if message["type"] != "http.request":
                    return
                seen += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return

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
        body_done = refused = False

        async def send_wrapper(message):
            nonlocal body_done
            if message["type"] == "http.response.start":
                if refused and not body_done:  # the app answers the BodyTooLarge: drop the rest of the body first
                    body_done = True
                    await self._discard(receive, seen)
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        async def receive_wrapper():
            nonlocal seen, body_done, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > limit:
                    refused = True
                    raise BodyTooLarge(limit)
            else:
                body_done = True
            return message

        async def too_large() -> None:
            resp = error_response(413, "request_too_large", f"request body exceeds {limit} bytes",
                                  headers={"Connection": "close"})
            await resp(scope, receive, send_wrapper)

        try:
            cl = headers.get("content-length")
            if cl is not None and (not cl.isdigit() or int(cl) > limit):
                # Expect: 100-continue -> the 413 at once (no 100 is sent, so the client never sends the
                # body); otherwise read the declared body first, when it is within the discard bound
                if headers.get("expect", "").lower() != "100-continue" and cl.isdigit() \
                        and int(cl) <= st.config.discard_body_bytes:
                    await self._discard(receive, 0)
                await too_large()
            else:
                try:
                    await self.app(scope, receive_wrapper, send_wrapper)
                except BodyTooLarge:  # FastAPI's handler usually answers it; send_wrapper drains the body
                    await too_large()
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
