"""Notify use cases."""

from __future__ import annotations

from typing import Any

from shared.service import Runtime


def status(rt: Runtime) -> dict[str, Any]:
    """How far notify has got: events consumed since start."""
    return {"events_processed": rt.consumer.processed if rt.consumer else 0}
