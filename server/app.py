"""The victim API (FastAPI): embeddings, models, health, metrics, admin accounts.

Request path of ``POST /v1/embeddings``: body limit (while reading) -> JSON schema -> API key ->
tier policy (allowed output, images per request) -> defence gates (rate limit, later PoW) ->
decode/validate/preprocess (thread pool) -> micro-batched inference (worker thread) -> defence
transforms -> ONE atomic store commit (re-checks revocation and rate limit, counts the request)
-> answer. Anything the store cannot confirm is refused with 503 (fail closed).

``create_app`` composes the pieces: ``server.state`` (app state), ``server.middleware``,
``server.handlers`` (exception handlers), ``server.deps`` (dependencies) and ``server.routes``.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server import logs, openapi
from server.config import ServerConfig
from server.defence_stats import DefenceStats, defence_stats
from server.handlers import install_handlers
from server.middleware import BodyTooLarge, RequestMiddleware
from server.routes import ROUTERS
from server.routes.responses import ERRORS
from server.state import ServerState
from server.store import AccountStore, open_store
from shared.checkpoint import Checkpoint
from shared.device import resolve_device

log = logging.getLogger("heist.api")


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Load the model and start the batcher before serving; stop the batcher and close the store after."""
    state: ServerState = app.state.heist
    await asyncio.to_thread(state.load)
    state.tune_runtime()  # on the loop's thread, where the defences run
    try:
        yield
    finally:
        if state.batcher:
            await asyncio.to_thread(state.batcher.stop)
        await state.store.close()


def create_app(config: ServerConfig, model: Checkpoint | None = None, store: AccountStore | None = None) -> FastAPI:
    """Validate everything that can be validated before serving (tiers, defences, device)."""
    store = store or open_store(config.redis_url, config.store_prefix, config.store_timeout_s)
    if config.server_secret is None:
        log.warning("HEIST_SERVER_SECRET not set: using a random per-process secret (set it when running several replicas)")
    state = ServerState(config, model, store)
    resolve_device(config.device)
    app = FastAPI(title="Encoder Heist victim API", version="1", lifespan=lifespan,
                  description="Embeddings of images by a self-supervised encoder (the victim). "
                              "Errors: `{\"error\": {\"type\", \"message\", \"param\"}}`.")
    app.state.heist = state
    app.add_middleware(RequestMiddleware, state=state)
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    openapi.install(app, config, state.model_id)
    return app


def app_from_env() -> FastAPI:
    """ASGI factory for ``uvicorn --factory server.app:app_from_env``: the config from env/HEIST_CONFIG,
    or, in a ``heist-server serve --workers N`` process, the parent's config (and the process ends
    with its parent, even one killed with SIGKILL)."""
    from server.config import config_from_handoff, load_config
    from shared.proc import die_with_parent

    config = config_from_handoff()
    if config is not None:
        die_with_parent()
    else:
        config = load_config()
    logs.setup_logging(config.log_level)
    return create_app(config)


__all__ = ["create_app", "app_from_env", "lifespan", "ServerState", "RequestMiddleware", "BodyTooLarge", "ERRORS",
           "DefenceStats", "defence_stats"]
