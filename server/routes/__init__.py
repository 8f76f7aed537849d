"""Routers of the victim API, in the order ``create_app`` includes them."""

from __future__ import annotations

from server.routes import admin, embeddings, health, models

ROUTERS = (embeddings.router, models.router, health.router, admin.router)
