"""Booking's Flask application factory."""

from __future__ import annotations

from flask import Flask

from services.booking.api import bp, doc
from services.booking.consumers import handlers
from services.booking.feeds import bp as feeds_bp
from services.booking.store import Base
from services.booking.workers import Housekeeping
from shared.config import Settings
from shared.service import Runtime, create_service_app

NAME = "booking"


def build_runtime(settings: Settings | None = None) -> Runtime:
    """Booking's database, outbox relay, inventory consumer and housekeeping loop (no-shows, waitlist
    expiry), wired from ``settings``."""
    rt = Runtime.build(NAME, settings or Settings.from_env(), Base.metadata, handlers)
    rt.loops.append(Housekeeping(rt).run)
    return rt


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """The booking API (``gunicorn 'services.booking.app:create_app()'``)."""
    return create_service_app(runtime or build_runtime(settings), [bp, feeds_bp], doc)
