"""GET /v1/models: the served model, with its output dimensions and preprocessing."""

from __future__ import annotations

from fastapi import APIRouter

from server.deps import StateDep
from shared.schemas import ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList)
async def models(state: StateDep):
    return ModelList(data=[state.model_info()])
