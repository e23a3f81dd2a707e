"""deploy/grafana/labshare.json: a valid Grafana dashboard charting only metrics labshare exports.

The exported names come from the code itself: the counters and histograms of
shared/metrics.py (as prometheus-client names their samples) and the gauges that
shared/health.py's collector yields at scrape time. tests/e2e/test_stack.py checks the
same names against what the running processes' /metrics serve.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "labshare.json"
METRIC = re.compile(r"\b(labshare_[a-z0-9_]+)\b")


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs() -> list[str]:
    dashboard = load_dashboard()
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def dashboard_metric_names() -> set[str]:
    """Every ``labshare_*`` series name the dashboard's queries use."""
    return {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}


def exported_metric_names() -> set[str]:
    """The series names labshare processes export, from shared/metrics.py and shared/health.py."""
    from prometheus_client import Counter, Histogram

    from shared import health, metrics

    names: set[str] = set()
    for obj in vars(metrics).values():
        if isinstance(obj, Counter):
            base = obj.describe()[0].name
            names |= {f"{base}_total", f"{base}_created"}
        elif isinstance(obj, Histogram):
            base = obj.describe()[0].name
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}

    def unreadable_outbox():
        raise RuntimeError("no database in this test")

    stub = SimpleNamespace(
        runtime=SimpleNamespace(name="booking"),
        outbox=unreadable_outbox,
        broker=SimpleNamespace(queue="labshare.booking", state=lambda: health.BrokerState(True, 0)),
    )
    names |= {family.name for family in health.ServiceHealth.collector(stub).collect()}  # type: ignore[arg-type]
    return names


def test_dashboard_is_valid_grafana_json():
    dashboard = load_dashboard()
    assert dashboard["title"] == "labshare" and dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert target["expr"].count("{") == target["expr"].count("}"), target["expr"]
    # No two panels overlap on the grid.
    cells = set()
    for panel in panels:
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


@pytest.mark.parametrize("title", ["p99 latency per route", "Bookings by outcome", "Outbox backlog",
                                   "Oldest unsent event", "Consumer lag: messages waiting",
                                   "Deliveries by outcome"])
def test_dashboard_has_the_panels_operators_need(title):
    assert title in {p["title"] for p in _panels(load_dashboard())}


def test_every_metric_the_dashboard_uses_is_exported():
    used = dashboard_metric_names()
    assert {"labshare_http_request_duration_seconds_bucket", "labshare_http_requests_total",
            "labshare_outbox_backlog", "labshare_outbox_oldest_unsent_age_seconds",
            "labshare_consumer_queue_ready", "labshare_events_published_total"} <= used
    missing = used - exported_metric_names()
    assert not missing, f"not exported by shared/metrics.py or shared/health.py: {sorted(missing)}"


def test_bookings_by_outcome_is_the_booking_route_by_status():
    """The services count POST /api/v1/bookings by the Flask route template and status."""
    exprs = [e for e in dashboard_exprs() if 'route="/api/v1/bookings"' in e]
    assert exprs and all('method="POST"' in e and 'service="booking"' in e for e in exprs)
    assert any("sum by (status)" in e for e in exprs)
