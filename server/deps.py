"""FastAPI dependencies of the victim API: the app state, API-key authentication, the admin token."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server import logs
from server.accounts import Account, hash_key, key_matches
from server.errors import ApiError
from server.state import ServerState

bearer = HTTPBearer(auto_error=False, description="API key: Authorization: Bearer heist_...")
admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken", description="Authorization: Bearer $HEIST_ADMIN_TOKEN")


def get_state(request: Request) -> ServerState:
    """The state ``create_app`` put on the app (``app.state.heist``)."""
    return request.app.state.heist


StateDep = Annotated[ServerState, Depends(get_state)]


async def authenticate(state: StateDep, creds: HTTPAuthorizationCredentials | None = Security(bearer)) -> Account:
    """The account of the bearer API key: 401 when missing or unknown, 403 when revoked."""
    if creds is None or not creds.credentials:
        raise ApiError(401, "authentication_error", "missing API key: send Authorization: Bearer <key>")
    key = creds.credentials
    acct = await state.store.by_key_hash(hash_key(key))
    if acct is None or not key_matches(key, acct.key_hash):
        raise ApiError(401, "authentication_error", "invalid API key")
    logs.account_id.set(acct.id)
    if acct.revoked:
        raise ApiError(403, "permission_error", "API key revoked")
    return acct


async def require_admin(state: StateDep, creds: HTTPAuthorizationCredentials | None = Security(admin_bearer)) -> None:
    """Admin routes: 403 while no admin token is configured, 401 unless the bearer token matches it."""
    config = state.config
    if config.admin_token is None:
        raise ApiError(403, "permission_error", "admin endpoints are disabled (HEIST_ADMIN_TOKEN not set)")
    if creds is None or not hmac.compare_digest(creds.credentials.encode(), config.admin_token.get_secret_value().encode()):
        raise ApiError(401, "authentication_error", "missing or invalid admin token")


AccountDep = Annotated[Account, Depends(authenticate)]
