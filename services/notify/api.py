"""Notify HTTP API."""

from __future__ import annotations

from flask import Blueprint

from shared.openapi import ApiDoc

doc = ApiDoc("labshare notify", "E-mail, calendar invitations, reminders and webhooks.")
bp = Blueprint("notify", __name__)
