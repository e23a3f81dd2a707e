"""Inventory's Flask application factory."""

from __future__ import annotations

from flask import Flask

from services.inventory.api import bp, doc
from services.inventory.store import Base
from shared.config import Settings
from shared.service import Runtime, create_service_app

NAME = "inventory"


def build_runtime(settings: Settings | None = None) -> Runtime:
    """Inventory's database, outbox and relay, wired from ``settings``."""
    return Runtime.build(NAME, settings or Settings.from_env(), Base.metadata)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """The inventory API (``gunicorn 'services.inventory.app:create_app()'``)."""
    return create_service_app(runtime or build_runtime(settings), [bp], doc)
