"""Request ids and W3C trace context (shared/tracing.py)."""

from __future__ import annotations

import re

from shared import tracing
from shared.events import make_event


def test_request_ids_are_kept_when_sane_and_made_otherwise():
    assert tracing.request_id_from("abc-123_x.y:z") == "abc-123_x.y:z"
    for odd in (None, "", "has space", 'quote"', "x" * 129, "naïve"):
        assert re.fullmatch(r"[0-9a-f]{32}", tracing.request_id_from(odd)), odd


def test_trace_id_is_the_request_id_when_it_can_be():
    rid = "0123456789abcdef0123456789abcdef"
    assert tracing.for_request(rid, None).trace_id == rid
    hashed = tracing.for_request("req-1", None)
    assert re.fullmatch(r"[0-9a-f]{32}", hashed.trace_id) and hashed.trace_id == tracing.trace_id_for("req-1")
    assert tracing.trace_id_for("0" * 32) != "0" * 32


def test_a_valid_traceparent_is_continued_and_an_invalid_one_ignored():
    trace = tracing.for_request("req-1", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and trace.span_id != "00f067aa0ba902b7"
    assert re.fullmatch(r"00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01", trace.traceparent)
    assert tracing.for_request("r", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").sampled is False
    for bad in ("", "garbage", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"):
        assert tracing.parse_traceparent(bad) is None, bad


def test_events_carry_the_current_trace_and_handling_continues_it():
    trace = tracing.for_request("0123456789abcdef0123456789abcdef", None)
    with tracing.active(trace):
        event = make_event("booking", "booking.created", {"id": "b-1"})
    assert event["traceparent"] == trace.traceparent
    assert tracing.current() is None
    handling = tracing.for_event(event)
    assert handling.trace_id == trace.trace_id and handling.span_id != trace.span_id
    assert tracing.for_event({"id": "x"}).trace_id != trace.trace_id
