"""The CloudEvents 1.0 envelope (structured JSON mode) every labshare event uses."""

from __future__ import annotations

import uuid
from typing import Any

from shared.timeutil import iso, now

CONTENT_TYPE = "application/cloudevents+json"


def make_event(service: str, type_: str, data: dict[str, Any], subject: str | None = None) -> dict[str, Any]:
    """A CloudEvent with a fresh id; ``data`` is the entity's full snapshot after the change."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"/labshare/{service}",
        "type": type_,
        "time": iso(now()),
        "datacontenttype": "application/json",
        "data": data,
    }
    if subject:
        event["subject"] = subject
    return event
