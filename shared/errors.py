"""Domain errors and their one mapping to RFC 9457 problem+json responses."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://labshare.dev/problems/"


class DomainError(Exception):
    """A refusal the user should see; subclasses fix the HTTP status."""

    status = 400
    title = "Bad request"
    slug = "bad-request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(DomainError):
    """The id names nothing the caller may see."""

    status, title, slug = 404, "Not found", "not-found"


class Unauthorized(DomainError):
    """No valid credentials."""

    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(DomainError):
    """Authenticated, but not allowed to do this."""

    status, title, slug = 403, "Forbidden", "forbidden"


class Conflict(DomainError):
    """The change clashes with existing state (``conflicts`` lists busy times)."""

    status, title, slug = 409, "Conflict", "conflict"


class InvalidState(DomainError):
    """The entity is not in a state that allows this change."""

    status, title, slug = 409, "Invalid state", "invalid-state"


class PolicyViolation(DomainError):
    """One or more rules refuse the change (``violations`` names each rule)."""

    status, title, slug = 422, "Policy violation", "policy-violation"

    def __init__(self, violations: list[dict[str, str]], detail: str | None = None) -> None:
        rules = ", ".join(v["rule"] for v in violations)
        super().__init__(detail or f"The request breaks these rules: {rules}.", violations=violations)
        self.violations = violations


class ValidationFailed(DomainError):
    """The body is JSON but not the right shape (``errors`` lists each field)."""

    status, title, slug = 422, "Invalid request", "validation"

    def __init__(self, errors: list[dict[str, str]], detail: str | None = None) -> None:
        super().__init__(detail or "The request body or parameters are not valid.", errors=errors)
        self.errors = errors


def problem(status: int, title: str, detail: str, slug: str | None = None, **extra: Any) -> Response:
    """Build an ``application/problem+json`` response."""
    body = {
        "type": PROBLEM_TYPE_BASE + (slug or str(status)),
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")


def install_error_handlers(app: Flask) -> None:
    """Map every exception a request can raise to problem+json, never HTML or a trace."""

    @app.errorhandler(DomainError)
    def _domain(err: DomainError) -> Response:
        return problem(err.status, err.title, err.detail, err.slug, **err.extra)

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Response:
        status = err.code or 500
        detail = err.description or err.name
        if status == 413:
            detail = "The request body is larger than 1 MiB."
        resp = problem(status, err.name, detail, str(status))
        if status == 405 and err.get_response().headers.get("Allow"):
            resp.headers["Allow"] = err.get_response().headers["Allow"]
        return resp

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, "Internal server error", "Something went wrong on our side.", "internal")
