"""Notify's Flask application factory."""

from __future__ import annotations

from flask import Flask

from services.notify.api import bp, doc
from services.notify.consumers import handlers
from services.notify.handlers import status
from services.notify.store import Base
from shared.config import Settings
from shared.service import Runtime, create_service_app

NAME = "notify"


def build_runtime(settings: Settings | None = None) -> Runtime:
    """Notify's database, outbox relay and event consumer, wired from ``settings``."""
    return Runtime.build(NAME, settings or Settings.from_env(), Base.metadata, handlers)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """The notify API (``gunicorn 'services.notify.app:create_app()'``)."""
    rt = runtime or build_runtime(settings)
    return create_service_app(rt, [bp], doc, extra_health=lambda: status(rt))
