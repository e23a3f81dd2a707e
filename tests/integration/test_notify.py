"""Notify end to end in-process: real SMTP and HTTP servers on 127.0.0.1, SQLite + in-process broker
and PostgreSQL + RabbitMQ.

Bookings are made over the API; what arrives at the mail server and the
webhook receiver is what a user and an integrator would get.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import time
import uuid

import icalendar
import pytest
from kombu import Producer
from sqlalchemy import delete, update

from services.booking.store import Booking
from services.booking.workers import Housekeeping
from services.notify import handlers
from services.notify.app import build_runtime
from services.notify.store import Delivery, DeliveryAttempt, Webhook
from services.notify.workers import DeliveryWorker
from shared.calendar import booking_uid
from shared.config import Settings
from shared.events import CONTENT_TYPE, make_event
from shared.messaging import connect, declare_topology, events_exchange
from shared.migrate import upgrade
from tests.harness import OSLO, next_weekday, rfc
from tests.servers import MailSink, WebhookSink, parse_mail, wait_until

ADA = "ada@example.org"
MANAGER_MAIL = "lab-manager@example.org"
ADMIN = ("root", ("admin",), "arena")
FAST = {"retry_seconds": (0.2, 0.2, 0.2), "notify_interval": 0.05}


@pytest.fixture
def smtp():
    sink = MailSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def receiver():
    sink = WebhookSink()
    yield sink
    sink.close()


@pytest.fixture
def ns(make_stack, smtp):
    """A stack whose notify speaks SMTP to the test's mail server and retries quickly."""
    return make_stack(smtp_url=smtp.url, **FAST)


def calendar_of(msg) -> tuple[str, icalendar.Calendar]:
    """The MIME ``method`` and the parsed iCalendar object of an iMIP mail."""
    part = next(p for p in msg.walk() if p.get_content_type() == "text/calendar")
    return part.get_param("method"), icalendar.Calendar.from_ical(part.get_content())


def vevent(cal: icalendar.Calendar) -> icalendar.Event:
    return next(c for c in cal.walk("VEVENT"))


def text_of(msg) -> str:
    return next(p for p in msg.walk() if p.get_content_type() == "text/plain").get_content()


def create_hook(s, receiver, path: str, who=ADMIN, **body):
    resp = s.post("/api/v1/webhooks", who, {"url": receiver.url(path), "events": ["booking.confirmed"],
                                             "secret": "s3cret-hook-key", **body})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def test_confirmed_changed_cancelled_booking_sends_request_request_cancel(ns, smtp):
    res = ns.make_resource()
    start, end = next_weekday(1, 9), next_weekday(1, 11)
    b = ns.book("ada", res["id"], start, end, project="NFR-12345").get_json()
    invite = smtp.wait_for(ADA, 1)[0]
    method, cal = calendar_of(invite)
    assert method == "REQUEST" and cal["METHOD"] == "REQUEST"
    event = vevent(cal)
    uid = str(event["UID"])
    assert uid == booking_uid(b["id"], ns.settings)
    assert int(event["SEQUENCE"]) == 0
    assert event["DTSTART"].params["TZID"] == "Europe/Oslo"
    assert event.decoded("DTSTART") == start and event.decoded("DTEND") == end
    assert [tz["TZID"] for tz in cal.walk("VTIMEZONE")] == ["Europe/Oslo"]
    assert str(event["ORGANIZER"]) == f"mailto:{MANAGER_MAIL}"
    assert event["ORGANIZER"].params["CN"].startswith("Lab ")
    attendee = event["ATTENDEE"]
    assert str(attendee) == f"mailto:{ADA}"
    assert attendee.params["PARTSTAT"] == "ACCEPTED" and attendee.params["RSVP"] == "FALSE"
    assert event["STATUS"] == "CONFIRMED" and res["name"] in str(event["LOCATION"])
    assert "NFR-12345" in text_of(invite)
    assert any(p.get_filename() == "invite.ics" for p in invite.walk())

    ns.patch(f"/api/v1/bookings/{b['id']}", "ada", {"start": rfc(next_weekday(1, 12)), "end": rfc(next_weekday(1, 13))})
    changed = smtp.wait_for(ADA, 2)[1]
    method, cal = calendar_of(changed)
    assert method == "REQUEST" and str(vevent(cal)["UID"]) == uid and int(vevent(cal)["SEQUENCE"]) == 1
    assert vevent(cal).decoded("DTSTART") == next_weekday(1, 12)
    assert changed["Subject"].startswith("Changed:")

    ns.post(f"/api/v1/bookings/{b['id']}/cancel", "ada", {"reason": "Samples not ready"})
    cancel = smtp.wait_for(ADA, 3)[2]
    method, cal = calendar_of(cancel)
    assert method == "CANCEL" and cal["METHOD"] == "CANCEL"
    assert str(vevent(cal)["UID"]) == uid and int(vevent(cal)["SEQUENCE"]) == 2
    assert vevent(cal)["STATUS"] == "CANCELLED"
    assert "Samples not ready" in text_of(cancel)


def test_pending_booking_asks_the_managers_and_the_decision_reaches_the_owner(ns, smtp):
    res = ns.make_resource(policy={"requires_approval": True})
    pending = ns.book("ada", res["id"], next_weekday(2, 9), next_weekday(2, 10), project="NFR-9").get_json()
    ask = smtp.wait_for(MANAGER_MAIL, 1)[0]
    assert ask["Subject"].startswith("Approval needed:")
    body = text_of(ask)
    for expected in (res["name"], "Ada", "NFR-9", f"/api/v1/bookings/{pending['id']}/approve",
                     f"/api/v1/bookings/{pending['id']}/decline"):
        assert expected in body
    assert smtp.to(ADA) == []  # nothing for the owner until the lab decides

    ns.post(f"/api/v1/bookings/{pending['id']}/approve", ns.MANAGER)
    approved = smtp.wait_for(ADA, 1)[0]
    assert approved["Subject"].startswith("Approved:")
    assert calendar_of(approved)[0] == "REQUEST"

    other = ns.book("ada", res["id"], next_weekday(2, 11), next_weekday(2, 12)).get_json()
    smtp.wait_for(MANAGER_MAIL, 2)
    ns.post(f"/api/v1/bookings/{other['id']}/decline", ns.MANAGER, {"reason": "Service day"})
    declined = smtp.wait_for(ADA, 2)[1]
    assert declined["Subject"].startswith("Declined:") and "Service day" in text_of(declined)
    method, cal = calendar_of(declined)
    assert method == "CANCEL" and str(vevent(cal)["UID"]) == booking_uid(other["id"], ns.settings)


def test_outage_cancellation_tells_the_owner_why(ns, smtp):
    res = ns.make_resource()
    ns.book("ada", res["id"], next_weekday(3, 9), next_weekday(3, 10))
    smtp.wait_for(ADA, 1)
    ns.post(f"/api/v1/resources/{res['id']}/outages", ns.MANAGER,
            {"start": rfc(next_weekday(3, 8)), "end": rfc(next_weekday(3, 12)), "reason": "Laser service"})
    cancel = smtp.wait_for(ADA, 2)[1]
    assert calendar_of(cancel)[0] == "CANCEL"
    assert "out of service" in text_of(cancel) and "Laser service" in text_of(cancel)


def test_a_no_show_tells_the_owner_and_cancels_the_invitation(ns, smtp, receiver):
    hook = create_hook(ns, receiver, "/no-shows", events=["booking.no_show"])
    res = ns.make_resource(policy={"checkin_required": True, "checkin_grace_minutes": 15})
    b = ns.book("ada", res["id"], next_weekday(2, 9), next_weekday(2, 11), title="Live-cell imaging").get_json()
    invite = smtp.wait_for(ADA, 1)[0]
    # Its check-in deadline passes with nobody checked in (the booking is left ahead, so the feeds still list it).
    with ns.runtimes["booking"].db.begin() as s:
        s.execute(update(Booking).where(Booking.id == b["id"]).values(
            checkin_due=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)))
    Housekeeping(ns.runtimes["booking"]).run_once()  # (the stack's own loop may get there first)
    released = smtp.wait_for(ADA, 2)[1]
    assert released["To"].addresses[0].addr_spec == ADA
    assert released["Subject"] == invite["Subject"].replace("Booked:", "No-show:")
    text = text_of(released)
    for words in ("Nobody checked in to the booking by its check-in deadline", "released as a no-show",
                  "free for others", res["name"], "Live-cell imaging", f"/api/v1/bookings/{b['id']}"):
        assert words in text, words
    # The invitation is withdrawn: same UID, the booking's new sequence; the feed shows it cancelled too.
    method, cal = calendar_of(released)
    assert method == "CANCEL" and cal["METHOD"] == "CANCEL"
    uid = booking_uid(b["id"], ns.settings)
    assert str(vevent(cal)["UID"]) == uid == str(vevent(calendar_of(invite)[1])["UID"])
    got = ns.get(f"/api/v1/bookings/{b['id']}", "ada").get_json()
    assert (got["status"], got["sequence"]) == ("no_show", int(vevent(cal)["SEQUENCE"])) == ("no_show", 1)
    assert vevent(cal)["STATUS"] == "CANCELLED"
    feed = icalendar.Calendar.from_ical(ns.client.get(f"/feeds/resources/{res['id']}.ics").data)
    listed = next(e for e in feed.walk("VEVENT") if str(e["UID"]) == uid)
    assert listed["STATUS"] == "CANCELLED" and int(listed["SEQUENCE"]) == 1
    # The webhook that asked for no-shows gets the event.
    calls = wait_until(lambda: receiver.at("/no-shows"), what="the no-show's webhook call")
    assert [json.loads(c.body)["type"] for c in calls] == ["booking.no_show"]
    assert ns.get(f"/api/v1/webhooks/{hook['id']}/deliveries", ADMIN).get_json()["items"][0]["event_type"] == (
        "booking.no_show")
    time.sleep(0.5)
    assert len(smtp.to(ADA)) == 2


def test_reminder_goes_out_once_before_the_start(ns, smtp):
    res = ns.make_resource()
    t = dt.datetime.now(OSLO).replace(second=0, microsecond=0)
    start = t + dt.timedelta(minutes=30 - t.minute % 15)
    b = ns.book("ada", res["id"], start, start + dt.timedelta(minutes=30))
    assert b.status_code == 201, b.get_json()
    mails = smtp.wait_for(ADA, 2)
    assert sorted(m["Subject"].split(":")[0] for m in mails) == ["Booked", "Reminder"]
    time.sleep(0.5)
    assert len(smtp.to(ADA)) == 2


def test_preferences_move_coming_reminders(ns, smtp):
    assert ns.get("/api/v1/notifications/preferences", "ada").get_json()["reminder_minutes"] == 60
    resp = ns.call("PUT", "/api/v1/notifications/preferences", "ada", {"reminder_minutes": 5})
    assert resp.status_code == 200 and resp.get_json()["reminder_minutes"] == 5
    assert ns.call("PUT", "/api/v1/notifications/preferences", "ada", {"reminder_minutes": 1}).status_code == 422
    res = ns.make_resource()
    t = dt.datetime.now(OSLO).replace(second=0, microsecond=0)
    start = t + dt.timedelta(minutes=30 - t.minute % 15)
    ns.book("ada", res["id"], start, start + dt.timedelta(minutes=30))
    smtp.wait_for(ADA, 1)
    time.sleep(0.5)
    assert [m["Subject"].split(":")[0] for m in smtp.to(ADA)] == ["Booked"]  # 5 minutes before: not yet
    ns.call("PUT", "/api/v1/notifications/preferences", "ada", {"reminder_minutes": 120})
    assert smtp.wait_for(ADA, 2)[1]["Subject"].startswith("Reminder:")


def test_notifications_mine_lists_what_was_sent_to_the_caller(ns, smtp):
    res = ns.make_resource()
    b = ns.book("ada", res["id"], next_weekday(1, 9), next_weekday(1, 10)).get_json()
    smtp.wait_for(ADA, 1)
    items = wait_until(lambda: [i for i in ns.get("/api/v1/notifications?mine=true", "ada").get_json()["items"]
                                if i["status"] == "sent"], what="the sent invitation to be listed")
    assert len(items) == 1
    item = items[0]
    assert item["channel"] == "email" and item["kind"] == "invitation" and item["booking_id"] == b["id"]
    assert item["event_type"] == "booking.confirmed" and item["subject"].startswith("Booked:")
    assert item["sent_at"].endswith("Z") and item["recipient"] == ADA
    assert ns.get("/api/v1/notifications?mine=true", "bob").get_json()["items"] == []
    assert ns.get("/api/v1/notifications", "bob").get_json()["items"] == []
    everything = ns.get("/api/v1/notifications", ADMIN).get_json()["items"]
    assert item["id"] in [i["id"] for i in everything]
    assert ns.get(f"/api/v1/notifications/{item['id']}", "bob").status_code == 404
    assert ns.get(f"/api/v1/notifications/{item['id']}", "ada").get_json()["log"][0]["ok"] is True


def test_a_sent_mail_is_forgotten_after_the_retention(ns, smtp):
    res = ns.make_resource()
    ns.book("ada", res["id"], next_weekday(1, 9), next_weekday(1, 10))
    smtp.wait_for(ADA, 1)
    [item] = wait_until(lambda: [i for i in ns.get("/api/v1/notifications?mine=true", "ada").get_json()["items"]
                                 if i["status"] == "sent"], what="the sent invitation")
    notify = ns.runtimes["notify"]
    assert handlers.purge_old_deliveries(notify) == 0
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=notify.settings.delivery_retention_days + 1)
    with notify.db.begin() as session:
        session.execute(update(Delivery).where(Delivery.id == item["id"]).values(created_at=old))
        session.execute(update(DeliveryAttempt).where(DeliveryAttempt.delivery_id == item["id"]).values(started_at=old))
    assert handlers.purge_old_deliveries(notify) == 1
    assert ns.get(f"/api/v1/notifications/{item['id']}", "ada").status_code == 404
    assert ns.get("/api/v1/notifications?mine=true", "ada").get_json()["items"] == []


def test_webhook_is_signed_and_a_500_is_retried_until_delivered_once(ns, receiver):
    receiver.script("/flaky", [500, 200])
    hook = create_hook(ns, receiver, "/flaky")
    assert "secret" not in hook and hook["enabled"] is True
    res = ns.make_resource()
    b = ns.book("ada", res["id"], next_weekday(1, 9), next_weekday(1, 10)).get_json()
    wait_until(lambda: [h for h in receiver.at("/flaky") if h.status == 200], what="a successful delivery")
    time.sleep(0.6)
    hits = receiver.at("/flaky")
    assert [h.status for h in hits] == [500, 200]
    first, second = hits
    assert first.body == second.body and first.headers["X-Labshare-Delivery"] == second.headers["X-Labshare-Delivery"]
    event = json.loads(second.body)
    assert event["type"] == "booking.confirmed" and event["data"]["id"] == b["id"] and event["specversion"] == "1.0"
    expected = "sha256=" + hmac.new(b"s3cret-hook-key", second.body, hashlib.sha256).hexdigest()
    assert second.headers["X-Labshare-Signature"] == expected
    assert second.headers["Content-Type"].startswith("application/cloudevents+json")
    assert second.headers["ce-id"] == event["id"]
    deliveries = wait_until(lambda: [d for d in ns.get(f"/api/v1/webhooks/{hook['id']}/deliveries", ADMIN)
                                     .get_json()["items"] if d["status"] == "sent"], what="the delivery log")
    assert len(deliveries) == 1
    log = deliveries[0]["log"]
    assert [a["status_code"] for a in log] == [500, 200] and deliveries[0]["attempts"] == 2
    assert all(a["duration_ms"] >= 0 for a in log) and log[0]["error"] == "HTTP 500"


def test_webhook_urls_and_rights_are_checked(ns, receiver):
    for url in ("ftp://example.org/hook", "http://user:pw@example.org/hook", "not a url", "http:///nohost",
                "javascript:alert(1)"):
        resp = ns.post("/api/v1/webhooks", ADMIN, {"url": url, "events": ["*"], "secret": "x"})
        assert resp.status_code == 422, url
        assert resp.get_json()["errors"][0]["field"] == "url"
    assert ns.post("/api/v1/webhooks", ADMIN, {"url": receiver.url("/x"), "events": [], "secret": "x"}
                   ).status_code == 422
    assert ns.post("/api/v1/webhooks", "ada", {"url": receiver.url("/x"), "events": ["*"], "secret": "x"}
                   ).status_code == 403
    lab = ns.make_lab()
    foreign = ns.post("/api/v1/labs", ADMIN, {"name": "Foreign lab", "org": "sintef", "timezone": "Europe/Oslo",
                                              "managers": [{"sub": "someone-else", "name": "Other",
                                                            "email": "other@example.org"}]}).get_json()
    ns.sync("inventory", "notify")
    mine = create_hook(ns, receiver, "/mine", ns.MANAGER, lab_id=lab["id"])
    assert mine["lab_id"] == lab["id"]
    other_manager = ("other-manager", ("manager",), "ntnu")
    assert ns.post("/api/v1/webhooks", other_manager, {"url": receiver.url("/x"), "events": ["*"], "secret": "x",
                                                       "lab_id": lab["id"]}).status_code == 403
    for lab_id, status in ((foreign["id"], 403), ("no-such-lab", 422)):
        assert ns.post("/api/v1/webhooks", ns.MANAGER, {"url": receiver.url("/x"), "events": ["*"], "secret": "x",
                                                        "lab_id": lab_id}).status_code == status
    assert [h["id"] for h in ns.get("/api/v1/webhooks", ns.MANAGER).get_json()["items"]] == [mine["id"]]
    assert ns.get(f"/api/v1/webhooks/{mine['id']}", other_manager).status_code == 404
    assert ns.delete(f"/api/v1/webhooks/{mine['id']}", ns.MANAGER).status_code == 204
    assert ns.get(f"/api/v1/webhooks/{mine['id']}", ns.MANAGER).status_code == 404


def test_outside_dev_mode_webhooks_reach_public_addresses_only(make_stack, receiver):
    """With private targets off (the default outside dev mode) no webhook may name a loopback, private or
    link-local address; and one that gets to such an address through a name (or was registered while they
    were allowed) is refused when it connects: its delivery is dead at once, with the reason, and the
    receiver on this machine hears nothing."""
    s = make_stack(webhook_private_targets=False, **FAST)
    for url, reason in ((receiver.url("/x"), "127.0.0.1 is a loopback address"),
                        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
                        ("http://10.20.30.40/hook", "10.20.30.40 is a private or reserved address"),
                        ("http://[::1]:8080/hook", "::1 is a loopback address"),
                        ("http://localhost:8080/hook", "localhost is this machine")):
        resp = s.post("/api/v1/webhooks", ADMIN, {"url": url, "events": ["*"], "secret": "x"})
        assert resp.status_code == 422 and resp.mimetype == "application/problem+json", url
        [error] = resp.get_json()["errors"]
        assert error["field"] == "url" and reason in error["message"], error
    public = s.post("/api/v1/webhooks", ADMIN, {"url": "https://hooks.example.org/labshare",
                                                "events": ["lab.deleted"], "secret": "x"})
    assert public.status_code == 201, public.get_json()
    hook_id, stamp = str(uuid.uuid4()), dt.datetime.now(dt.UTC)
    with s.runtimes["notify"].db.begin() as session:
        session.add(Webhook(id=hook_id, url=receiver.url("/x").replace("127.0.0.1", "localhost"),
                            events=["booking.confirmed"], secret="k", owner_sub=ADMIN[0], owner_is_admin=True,
                            enabled=True, consecutive_failures=0, created_at=stamp, updated_at=stamp))
    res = s.make_resource()
    s.book("ada", res["id"], next_weekday(1, 9), next_weekday(1, 10))
    [delivery] = wait_until(lambda: [d for d in s.get(f"/api/v1/webhooks/{hook_id}/deliveries", ADMIN)
                                     .get_json()["items"] if d["status"] == "dead"], what="the refused delivery")
    assert delivery["attempts"] == 1
    assert delivery["log"][0]["error"] == ("refused: localhost resolves to 127.0.0.1, a loopback address "
                                           "(webhooks go to public addresses only)")
    assert receiver.at("/x") == []


def test_lab_scoped_webhook_gets_only_its_labs_events(ns, receiver):
    res = ns.make_resource()
    other = ns.make_resource()
    ns.sync("inventory", "notify")
    hook = create_hook(ns, receiver, "/lab", ns.MANAGER, lab_id=res["lab_id"], events=["booking.*"])
    ns.book("ada", other["id"], next_weekday(1, 9), next_weekday(1, 10))
    mine = ns.book("ada", res["id"], next_weekday(1, 9), next_weekday(1, 10)).get_json()
    wait_until(lambda: len(receiver.at("/lab")) >= 2, what="two events")
    time.sleep(0.5)
    events = [json.loads(h.body) for h in receiver.at("/lab")]
    assert sorted(e["type"] for e in events) == ["booking.confirmed", "booking.created"]
    assert {e["data"]["id"] for e in events} == {mine["id"]}
    assert hook["lab_id"] == res["lab_id"]


def test_webhook_is_disabled_after_its_retries_run_out_and_can_be_replayed(make_stack, smtp, receiver):
    s = make_stack(smtp_url=smtp.url, retry_seconds=(0.1, 0.1), notify_interval=0.05)
    receiver.script("/down", [500])
    owner = ("hook-admin", ("admin",), "arena")
    hook = create_hook(s, receiver, "/down", owner)
    res = s.make_resource()
    s.book("ada", res["id"], next_weekday(1, 9), next_weekday(1, 10))
    notice = smtp.wait_for("hook-admin@example.org", 1)[0]
    assert notice["Subject"] == f"Webhook disabled: {receiver.url('/down')}"
    assert f"/api/v1/webhooks/{hook['id']}/enable" in text_of(notice)
    assert len(receiver.at("/down")) == 3
    state = s.get(f"/api/v1/webhooks/{hook['id']}", owner).get_json()
    assert state["enabled"] is False and "failed 3 times" in state["disabled_reason"]
    dead = s.get("/api/v1/notifications/dead", ADMIN).get_json()["items"]
    assert [d["webhook_id"] for d in dead] == [hook["id"]] and len(dead[0]["log"]) == 3
    assert s.get("/api/v1/notifications/dead", "ada").status_code == 403
    assert s.post(f"/api/v1/notifications/{dead[0]['id']}/replay", owner).status_code == 409  # still disabled

    receiver.script("/down", [200])
    assert s.post(f"/api/v1/webhooks/{hook['id']}/enable", owner).get_json()["enabled"] is True
    replayed = s.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{dead[0]['id']}/replay", owner)
    assert replayed.status_code == 200 and replayed.get_json()["status"] == "pending"
    wait_until(lambda: s.get(f"/api/v1/notifications/{dead[0]['id']}", owner).get_json()["status"] == "sent",
               what="the replayed delivery")
    assert [h.status for h in receiver.at("/down")] == [500, 500, 500, 200]


def test_smtp_down_for_a_while_then_every_mail_arrives_once(make_stack, smtp):
    s = make_stack(smtp_url=smtp.url, retry_seconds=(0.3,) * 40, notify_interval=0.05)
    res = s.make_resource()
    smtp.stop()
    ids = [s.book("ada", res["id"], next_weekday(1, h), next_weekday(1, h + 1)).get_json()["id"] for h in (8, 9, 10)]

    def failed_once():
        items = s.get("/api/v1/notifications?mine=true", "ada").get_json()["items"]
        return len(items) == 3 and all(i["attempts"] >= 1 and i["status"] in ("pending", "sending") for i in items)

    wait_until(failed_once, what="every invitation to fail while the mail server is down")
    time.sleep(0.7)
    smtp.start()
    mails = smtp.wait_for(ADA, 3)
    time.sleep(1.0)
    mails = smtp.to(ADA)
    assert len(mails) == 3 and len({m["Message-ID"] for m in mails}) == 3
    assert sorted(str(vevent(calendar_of(m)[1])["UID"]) for m in mails) == sorted(
        booking_uid(i, s.settings) for i in ids)
    items = s.get("/api/v1/notifications?mine=true", "ada").get_json()["items"]
    assert all(i["status"] == "sent" and i["attempts"] >= 2 for i in items)


def test_an_event_delivered_twice_sends_one_mail_and_one_webhook_call(ns, smtp, receiver):
    hook = create_hook(ns, receiver, "/dup")
    booking_id = str(uuid.uuid4())
    start = next_weekday(4, 9).astimezone(dt.UTC)
    data = {
        "id": booking_id, "resource_id": str(uuid.uuid4()), "lab_id": "lab-x", "title": "Imaging", "project": "",
        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": (start + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": "confirmed", "sequence": 0, "cancel_reason": None, "series_id": None,
        "user": {"sub": "dup", "name": "Dup Licate", "org": "ntnu", "email": "dup@example.org"},
        "resource_name": "Microscope", "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "lab": {"id": "lab-x", "name": "Lab X", "org": "ntnu", "timezone": "Europe/Oslo", "managers": []},
    }
    event = make_event("booking", "booking.confirmed", data, subject=booking_id)
    with connect(ns.settings) as conn:
        channel = conn.channel()
        declare_topology(ns.settings, channel)
        producer = Producer(channel)
        for _ in range(2):
            producer.publish(json.dumps(event), exchange=events_exchange(ns.settings), routing_key=event["type"],
                             content_type=CONTENT_TYPE, delivery_mode=2)
    smtp.wait_for("dup@example.org", 1)
    wait_until(lambda: receiver.at("/dup"), what="the webhook call")
    # Replayed after the inbox forgot it: the delivery keys still hold.
    notify = ns.runtimes["notify"]
    with notify.db.begin() as session:
        session.execute(delete(notify.inbox).where(notify.inbox.c.event_id == event["id"]))
    assert notify.consumer.handle(event) is True
    time.sleep(1.0)
    assert len(smtp.to("dup@example.org")) == 1
    assert len(receiver.at("/dup")) == 1
    assert len(ns.get(f"/api/v1/webhooks/{hook['id']}/deliveries", ADMIN).get_json()["items"]) == 1


# -- several notify workers on one database -------------------------------------------------------


class CountingMail:
    """A mail transport that only counts (the SMTP path is covered above)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.lock = threading.Lock()

    def send(self, messages):
        from services.notify.transports import Outcome

        with self.lock:
            self.sent += [m.message for m in messages]
        return [Outcome(True, 0.1) for _ in messages]


@pytest.fixture(params=["sqlite", "postgres"])
def notify_settings(request, tmp_path):
    """Settings for notify alone, on SQLite or on a fresh PostgreSQL database, migrated."""
    if request.param == "sqlite":
        settings = Settings(data_dir=str(tmp_path))
    else:
        settings = Settings(data_dir=str(tmp_path), database_url=request.getfixturevalue("pg_url"))
    upgrade("notify", settings)
    return settings


def test_two_notify_runtimes_send_each_reminder_once(notify_settings):
    mail = CountingMail()
    runtimes = [build_runtime(notify_settings, mail=mail) for _ in range(2)]
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=30)
    bookings = 60
    for n in range(bookings):
        data = {
            "id": f"b-{n}", "resource_id": "r", "lab_id": "l", "title": "", "project": "", "status": "confirmed",
            "start": (start + dt.timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": (start + dt.timedelta(seconds=n, minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ"), "sequence": 0,
            "user": {"sub": f"u{n}", "name": f"User {n}", "org": "ntnu", "email": f"u{n}@example.org"},
            "resource_name": "Microscope",
            "lab": {"id": "l", "name": "Lab", "org": "ntnu", "timezone": "Europe/Oslo", "managers": []},
        }
        runtimes[n % 2].consumer.handle(make_event("booking", "booking.created", data, subject=data["id"]))
    barrier = threading.Barrier(4)

    def work(rt) -> None:
        barrier.wait()
        worker = DeliveryWorker(rt, "email")
        while handlers.queue_due_reminders(rt, limit=3) or worker.run_once():
            pass

    threads = [threading.Thread(target=work, args=(rt,)) for rt in runtimes for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for rt in runtimes:
        while DeliveryWorker(rt, "email").run_once():
            pass
    parsed = [parse_mail(m) for m in mail.sent]
    reminders = [m for m in parsed if m["Subject"].startswith("Reminder:")]
    assert len(reminders) == bookings
    assert len({m["To"].addresses[0].addr_spec for m in reminders}) == bookings
    for rt in runtimes:
        rt.db.dispose()
