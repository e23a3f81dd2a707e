"""The CloudEvents 1.0 envelope (structured JSON mode) every labshare event uses.

An event made while a trace is current (an HTTP request, or a consumer handling
an event) carries it as the ``traceparent`` extension attribute of the
CloudEvents distributed-tracing extension (W3C Trace Context format).
"""

from __future__ import annotations

import uuid
from typing import Any

from shared import tracing
from shared.timeutil import iso, now

CONTENT_TYPE = "application/cloudevents+json"


def make_event(service: str, type_: str, data: dict[str, Any], subject: str | None = None) -> dict[str, Any]:
    """A CloudEvent with a fresh id; ``data`` is the entity's full snapshot after the change.

    It carries the current trace as ``traceparent`` (see ``shared.tracing``); work that no request
    or event started (a scheduler's) starts a trace of its own, so every event can be followed.
    """
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
    trace = tracing.current() or tracing.new_root()
    event["traceparent"] = trace.traceparent
    return event
