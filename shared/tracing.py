"""Request ids and W3C trace context, so one booking can be followed from its HTTP request to every consumer.

Each HTTP request gets a request id (the caller's ``X-Request-Id`` when it is a
sane token, else a fresh one) and a trace: the caller's ``traceparent`` header
when valid, else a trace id taken from the request id (a 32-hex request id, as
nginx makes them, *is* the trace id; any other is hashed into one). The trace is
kept in a context variable while the request runs, so that:

- every log line written meanwhile carries ``request_id`` and ``trace_id``;
- every event the request emits carries the CloudEvents ``traceparent``
  extension attribute (``shared.events.make_event`` reads it here);
- a consumer handling that event continues the same trace (a new span id), logs
  its ``traceparent``, and passes it on to the events it emits in turn.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

#: What a request id may look like (the same rule as the nginx gateway's).
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Trace:
    """The trace a unit of work belongs to, and its own span in it."""

    trace_id: str
    span_id: str
    request_id: str | None = None
    sampled: bool = True

    @property
    def traceparent(self) -> str:
        """This span as a W3C ``traceparent`` (version 00)."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


_current: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("labshare_trace", default=None)


def new_span_id() -> str:
    """A random, non-zero 64-bit span id in hex."""
    while True:
        span = secrets.token_hex(8)
        if span != "0" * 16:
            return span


def new_root() -> Trace:
    """A fresh trace, for work that no request or event started."""
    return Trace(trace_id=secrets.token_hex(16), span_id=new_span_id())


def parse_traceparent(value: str | None) -> tuple[str, bool] | None:
    """``(trace_id, sampled)`` of a valid W3C ``traceparent``, else None."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if not match:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, bool(int(flags, 16) & 1)


def request_id_from(header: str | None) -> str:
    """The caller's request id when it is a sane token, else a new one (32 hex digits)."""
    if header and REQUEST_ID.match(header):
        return header
    return secrets.token_hex(16)


def trace_id_for(request_id: str) -> str:
    """The trace id of a request that brought no ``traceparent``: the request id itself when it can be one."""
    if _HEX32.match(request_id) and request_id != "0" * 32:
        return request_id
    return hashlib.sha256(request_id.encode()).hexdigest()[:32]


def for_request(request_id_header: str | None, traceparent_header: str | None) -> Trace:
    """The trace of one incoming HTTP request."""
    request_id = request_id_from(request_id_header)
    parent = parse_traceparent(traceparent_header)
    if parent:
        return Trace(parent[0], new_span_id(), request_id, parent[1])
    return Trace(trace_id_for(request_id), new_span_id(), request_id)


def for_event(event: dict) -> Trace:
    """The span of handling ``event``: its trace continued, or a new trace when it carries none."""
    parent = parse_traceparent(event.get("traceparent"))
    if parent:
        return Trace(parent[0], new_span_id(), None, parent[1])
    return Trace(secrets.token_hex(16), new_span_id())


def current() -> Trace | None:
    """The trace of the work this thread is doing, if any."""
    return _current.get()


def activate(trace: Trace | None) -> contextvars.Token:
    """Make ``trace`` current; pass the token to :func:`deactivate` when the work is done."""
    return _current.set(trace)


def deactivate(token: contextvars.Token) -> None:
    """Restore the trace that was current before :func:`activate`."""
    _current.reset(token)


@contextlib.contextmanager
def active(trace: Trace | None) -> Iterator[Trace | None]:
    """``trace`` is current inside the block."""
    token = activate(trace)
    try:
        yield trace
    finally:
        deactivate(token)
