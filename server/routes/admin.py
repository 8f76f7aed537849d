"""Admin routes (/v1/admin/accounts...): create, list, show, defence state, query log and revoke, behind the admin token."""

from __future__ import annotations

import logging

import numpy as np
from fastapi import APIRouter, Depends

from server.accounts import Account, make_account
from server.defence_stats import DefenceStats, defence_stats
from server.deps import StateDep, require_admin
from server.errors import ApiError
from server.routes.responses import ADMIN_ERRORS
from server.state import ServerState
from server.store import AccountExists
from shared.images import encode_image
from shared.schemas import AccountCreate, AccountCreated, AccountInfo, AccountList, QueryLog

log = logging.getLogger("heist.api")

router = APIRouter(prefix="/v1/admin/accounts", tags=["admin"], dependencies=[Depends(require_admin)])


async def _get(state: ServerState, account_id: str) -> Account:
    acct = await state.store.get(account_id)
    if acct is None:
        raise ApiError(404, "not_found", f"no account {account_id!r}", param="account_id")
    return acct


@router.post("", response_model=AccountCreated, status_code=201, responses=ADMIN_ERRORS)
async def create_account(body: AccountCreate, state: StateDep):
    config = state.config
    if body.tier not in config.tiers:
        raise ApiError(422, "invalid_request_error", f"unknown tier {body.tier!r}; known: {sorted(config.tiers)}", param="tier")
    acct, key = make_account(body.name, body.tier)
    try:
        await state.store.add(acct)
    except AccountExists as e:
        raise ApiError(409, "conflict", str(e), param="name") from None
    log.info("account created", extra={"new_account": acct.id, "tier": acct.tier})
    return AccountCreated(account=acct.info(), api_key=key)


@router.get("", response_model=AccountList, responses=ADMIN_ERRORS)
async def list_accounts(state: StateDep):
    accts = await state.store.list()
    return AccountList(data=[a.info(await state.store.usage(a.id)) for a in accts])


@router.get("/{account_id}", response_model=AccountInfo, responses=ADMIN_ERRORS)
async def show_account(account_id: str, state: StateDep):
    acct = await _get(state, account_id)
    return acct.info(await state.store.usage(acct.id))


@router.get("/{account_id}/defences", response_model=DefenceStats, responses=ADMIN_ERRORS)
async def account_defences(account_id: str, state: StateDep):
    acct = await _get(state, account_id)
    return await defence_stats(state.store, acct)


@router.get("/{account_id}/queries", response_model=QueryLog, responses=ADMIN_ERRORS)
async def account_queries(account_id: str, state: StateDep):
    """The account's query log (its tier's ``query_log``: the last images it was served), as PNGs."""
    acct = await _get(state, account_id)
    size = state.loaded_model.config.input_size
    raw = await state.store.query_log(acct.id)
    images = [encode_image(np.frombuffer(r, dtype=np.uint8).reshape(size, size, 3)) for r in raw if len(r) == size * size * 3]
    return QueryLog(account_id=acct.id, size=size, images=images)


@router.post("/{account_id}/revoke", response_model=AccountInfo, responses=ADMIN_ERRORS)
async def revoke_account(account_id: str, state: StateDep):
    acct = await _get(state, account_id)
    await state.store.revoke(acct.id)
    log.info("account revoked", extra={"revoked_account": acct.id})
    acct.revoked = True
    return acct.info(await state.store.usage(acct.id))
