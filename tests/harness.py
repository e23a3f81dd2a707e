"""A running labshare stack inside the test process, and a small HTTP client for it."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
import zoneinfo
from typing import Any

from werkzeug.test import Client, TestResponse

from services.__main__ import build_stack, migrate_all
from shared.auth import issue_dev_token
from shared.config import Settings

OSLO = zoneinfo.ZoneInfo("Europe/Oslo")


def local(days: int, hour: int, minute: int = 0, tz: dt.tzinfo = OSLO) -> dt.datetime:
    """A wall-clock time ``days`` days from today in ``tz`` (aware)."""
    day = dt.datetime.now(tz).date() + dt.timedelta(days=days)
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=tz)


def next_weekday(weekday: int, hour: int, minute: int = 0, min_days: int = 2) -> dt.datetime:
    """The next ``weekday`` (0 = Monday) at least ``min_days`` ahead, at a local Oslo time."""
    day = dt.datetime.now(OSLO).date() + dt.timedelta(days=min_days)
    while day.weekday() != weekday:
        day += dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=OSLO)


def rfc(value: dt.datetime) -> str:
    """RFC 3339 with the value's own offset."""
    return value.isoformat()


class Stack:
    """Three services, their relays and consumers, behind the gateway, all in this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        migrate_all(settings)
        self.runtimes, self.app = build_stack(settings)
        self.client = Client(self.app)
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=loop, args=(self.stop,), daemon=True)
            for rt in self.runtimes.values()
            for loop in rt.workers()
        ]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        """Stop the workers and close every database connection."""
        self.stop.set()
        for rt in self.runtimes.values():
            rt.events.wake.set()
        for t in self.threads:
            t.join(timeout=10)
        for rt in self.runtimes.values():
            rt.db.dispose()

    # -- identity -------------------------------------------------------------------------------

    def token(self, sub: str, roles: tuple[str, ...] = ("researcher",), org: str = "ntnu", **claims: Any) -> str:
        """A development token for ``sub``."""
        body = {"sub": sub, "name": claims.pop("name", sub.title()), "email": claims.pop("email", f"{sub}@example.org"),
                "org": org, "roles": list(roles), **claims}
        return issue_dev_token(self.settings, body)

    def auth(self, who: str | tuple) -> dict[str, str]:
        """Headers for a user given as ``sub`` or ``(sub, roles, org)``."""
        if isinstance(who, tuple):
            sub, roles, org = who
            return {"Authorization": f"Bearer {self.token(sub, roles, org)}"}
        return {"Authorization": f"Bearer {self.token(who)}"}

    # -- HTTP -----------------------------------------------------------------------------------

    def call(self, method: str, path: str, who: Any = None, json: Any = None, **kw: Any) -> TestResponse:
        """Make a request as ``who`` (None: anonymous)."""
        headers = dict(kw.pop("headers", {}) or {})
        if who is not None:
            headers.update(self.auth(who))
        return self.client.open(path, method=method, headers=headers, json=json, **kw)

    def get(self, path: str, who: Any = None, **kw: Any) -> TestResponse:
        return self.call("GET", path, who, **kw)

    def post(self, path: str, who: Any = None, json: Any = None, **kw: Any) -> TestResponse:
        return self.call("POST", path, who, json, **kw)

    def patch(self, path: str, who: Any = None, json: Any = None, **kw: Any) -> TestResponse:
        return self.call("PATCH", path, who, json, **kw)

    def delete(self, path: str, who: Any = None, **kw: Any) -> TestResponse:
        return self.call("DELETE", path, who, **kw)

    # -- waiting for events ---------------------------------------------------------------------

    def eventually(self, check, timeout: float = 15.0, what: str = "condition") -> Any:
        """Poll ``check()`` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def sync(self, source: str = "inventory", consumer: str = "booking") -> None:
        """Wait until ``consumer`` has processed every event ``source`` has written so far."""
        from sqlalchemy import select

        src, dst = self.runtimes[source], self.runtimes[consumer]
        outbox = src.events.outbox
        with src.db.read() as s:
            ids = set(s.scalars(select(outbox.c.event_id).order_by(outbox.c.id.desc()).limit(50)))
        if not ids:
            return

        def consumed():
            with dst.db.read() as s:
                seen = s.scalars(select(dst.inbox.c.event_id).where(dst.inbox.c.event_id.in_(ids)))
                return len(set(seen)) == len(ids)

        self.eventually(consumed, what=f"{consumer} to consume {source}'s events")

    def booking_knows(self, resource_id: str) -> None:
        """Wait until the booking service's read model has the resource (fed by inventory's events)."""
        self.eventually(
            lambda: self.get(f"/api/v1/availability?resource_id={resource_id}", "probe").status_code == 200,
            what=f"booking to learn of resource {resource_id}",
        )

    # -- factories ------------------------------------------------------------------------------

    MANAGER = ("lab-manager", ("researcher", "manager"), "ntnu")

    def make_lab(self, **overrides: Any) -> dict[str, Any]:
        """A lab managed by ``Stack.MANAGER``."""
        body = {
            "name": f"Lab {uuid.uuid4().hex[:6]}",
            "org": "ntnu",
            "building": "Elgeseter 10",
            "timezone": "Europe/Oslo",
            "managers": [{"sub": "lab-manager", "name": "Lab Manager", "email": "lab-manager@example.org"}],
            **overrides,
        }
        resp = self.post("/api/v1/labs", self.MANAGER, body)
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()

    def make_resource(self, lab_id: str | None = None, policy: dict | None = None, **overrides: Any) -> dict:
        """An active resource that the booking service already knows about."""
        lab_id = lab_id or self.make_lab()["id"]
        body = {
            "lab_id": lab_id,
            "name": f"Instrument {uuid.uuid4().hex[:6]}",
            "kind": "equipment",
            "category": "microscopy/confocal",
            "policy": {"slot_minutes": 15, "min_minutes": 15, "max_minutes": 480, **(policy or {})},
            "rates": {"internal": 450, "external": 1200, "currency": "NOK"},
            **overrides,
        }
        resp = self.post("/api/v1/resources", self.MANAGER, body)
        assert resp.status_code == 201, resp.get_json()
        resource = resp.get_json()
        self.booking_knows(resource["id"])
        return resource

    def book(self, who: Any, resource_id: str, start: dt.datetime, end: dt.datetime, **extra: Any) -> TestResponse:
        """POST a booking."""
        body = {"resource_id": resource_id, "start": rfc(start), "end": rfc(end), "title": "Imaging", **extra}
        return self.post("/api/v1/bookings", who, body)
