"""Notify's use cases through its real wiring (``build_runtime``, consumer, workers) on a SQLite file,
with fake mail and webhook transports in place of SMTP and HTTP."""

from __future__ import annotations

import datetime as dt
import email
import hashlib
import hmac
import json
import mailbox
import uuid
from pathlib import Path

import icalendar
import pytest
from sqlalchemy import delete, select, update

from services.notify import handlers
from services.notify.app import build_runtime
from services.notify.store import OUTBOX, Delivery, DeliveryAttempt, Reminder
from services.notify.transports import MaildirTransport, Outcome, SmtpTransport, mail_transport
from services.notify.workers import DeliveryWorker
from shared.calendar import booking_uid
from shared.config import Settings
from shared.events import make_event
from shared.migrate import upgrade
from tests.servers import parse_mail

UTC = dt.UTC


class FakeMail:
    """Records what would have been sent; answers with scripted outcomes (default: accepted)."""

    def __init__(self) -> None:
        self.sent: list[email.message.EmailMessage] = []
        self.raw: list[bytes] = []
        self.envelopes: list[tuple[str, str]] = []
        self.script: list[Outcome] = []

    def send(self, messages):
        out = []
        for m in messages:
            outcome = self.script.pop(0) if self.script else Outcome(True, 1.0, 250)
            if outcome.ok:
                self.sent.append(parse_mail(m.message))
                self.raw.append(m.message)
                self.envelopes.append((m.sender, m.recipient))
            out.append(outcome)
        return out

    def to(self, address: str) -> list:
        return [m for m, (_, rcpt) in zip(self.sent, self.envelopes, strict=True) if rcpt == address]


class FakeHttp:
    """Records POSTs; answers with scripted status codes (the last repeats)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []
        self.statuses = statuses or [200]

    def post(self, url, body, headers):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        self.calls.append((url, body, headers))
        ok = 200 <= status < 300
        return Outcome(ok, 2.0, status, None if ok else f"HTTP {status}")


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(data_dir=str(tmp_path), retry_seconds=(0.0, 0.0), public_url="https://labshare.example.org")
    upgrade("notify", s)
    return s


@pytest.fixture
def fakes():
    return FakeMail(), FakeHttp()


@pytest.fixture
def rt(settings, fakes):
    runtime = build_runtime(settings, mail=fakes[0], http=fakes[1])
    yield runtime
    runtime.db.dispose()


def deliver(rt) -> None:
    """Run the reminder scheduler and both delivery workers until nothing is left to do."""
    email_worker, webhook_worker = DeliveryWorker(rt, "email"), DeliveryWorker(rt, "webhook")
    while handlers.queue_due_reminders(rt) + email_worker.run_once() + webhook_worker.run_once():
        pass


def snapshot(booking_id: str = "b1", **over) -> dict:
    start = over.pop("start", dt.datetime(2030, 12, 3, 8, 0, tzinfo=UTC))
    data = {
        "id": booking_id, "resource_id": "r1", "lab_id": "l1", "title": "Live-cell imaging", "project": "NFR-12345",
        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": (start + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": "confirmed", "sequence": 0, "cancel_reason": None, "series_id": None,
        "user": {"sub": "ada", "name": "Ada Lovelace", "org": "ntnu", "email": "ada@example.org"},
        "created_at": "2030-01-01T00:00:00Z", "updated_at": "2030-01-01T00:00:00Z",
        "resource_name": "Zeiss LSM 980",
        "lab": {"id": "l1", "name": "Cell imaging lab", "org": "ntnu", "timezone": "Europe/Oslo",
                "managers": [{"sub": "mgr", "name": "Imaging manager", "email": "mgr@example.org"}]},
    }
    data.update(over)
    return data


def send_event(rt, type_: str, data: dict) -> dict:
    event = make_event("booking", type_, data, subject=data.get("id"))
    rt.consumer.handle(event)
    return event


def calendar_part(msg):
    part = next(p for p in msg.walk() if p.get_content_type() == "text/calendar")
    return part, icalendar.Calendar.from_ical(part.get_content())


def the_event(cal) -> icalendar.Event:
    return next(iter(cal.walk("VEVENT")))


# -- e-mail -----------------------------------------------------------------------------------------


def test_invitation_is_an_imip_request_with_the_labs_zone(rt, fakes):
    mail = fakes[0]
    send_event(rt, "booking.created", snapshot())
    send_event(rt, "booking.confirmed", snapshot())
    deliver(rt)
    assert len(mail.sent) == 1
    msg = mail.sent[0]
    assert msg.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "text/html", "text/calendar", "application/ics"]
    assert msg["From"].addresses[0].addr_spec == "noreply@labshare.example.org"
    assert msg["Reply-To"] == "mgr@example.org" and msg["Auto-Submitted"] == "auto-generated"
    assert mail.envelopes[0] == ("noreply@labshare.example.org", "ada@example.org")
    part, cal = calendar_part(msg)
    assert part.get_param("method") == "REQUEST" == cal["METHOD"]
    assert cal["VERSION"] == "2.0" and "labshare" in str(cal["PRODID"])
    event = the_event(cal)
    assert str(event["UID"]) == booking_uid("b1", rt.settings) == "b1@labshare.example.org"
    assert int(event["SEQUENCE"]) == 0
    assert event["DTSTART"].params["TZID"] == "Europe/Oslo"
    assert event["DTSTART"].to_ical() == b"20301203T090000"  # 08:00 UTC is 09:00 in Oslo in winter
    assert event.decoded("DTEND") == dt.datetime(2030, 12, 3, 10, 0, tzinfo=UTC)
    assert event.decoded("DTSTAMP").tzinfo is not None
    assert [str(tz["TZID"]) for tz in cal.walk("VTIMEZONE")] == ["Europe/Oslo"]
    assert str(event["SUMMARY"]) == "Live-cell imaging – Zeiss LSM 980"
    assert str(event["LOCATION"]) == "Zeiss LSM 980, Cell imaging lab"
    organizer = event["ORGANIZER"]
    assert str(organizer) == "mailto:mgr@example.org" and organizer.params["CN"] == "Cell imaging lab"
    assert organizer.params["SENT-BY"] == "mailto:noreply@labshare.example.org"
    attendee = event["ATTENDEE"]
    assert str(attendee) == "mailto:ada@example.org" and attendee.params["CN"] == "Ada Lovelace"
    assert attendee.params["PARTSTAT"] == "ACCEPTED" and attendee.params["RSVP"] == "FALSE"
    attachment = next(p for p in msg.walk() if p.get_content_type() == "application/ics")
    assert attachment.get_filename() == "invite.ics"
    assert icalendar.Calendar.from_ical(attachment.get_content())["METHOD"] == "REQUEST"
    html = next(p for p in msg.walk() if p.get_content_type() == "text/html").get_content()
    assert "Live-cell imaging" in html and "<table>" in html


def test_a_subject_folded_after_its_colon_reads_back_unchanged(rt, fakes):
    # 22:00-00:00 UTC is 23:00-01:00 in Oslo: the subject names both days and, at 72 characters, just fits a
    # folded line of its own, so the header goes out as "Subject:" CRLF SP value.
    send_event(rt, "booking.confirmed", snapshot(start=dt.datetime(2030, 12, 13, 22, 0, tzinfo=UTC),
                                                 resource_name="Zeiss LSM 980 NLO"))
    deliver(rt)
    [raw], [msg] = fakes[0].raw, fakes[0].sent
    assert b"\r\nSubject:\r\n Booked: Zeiss" in raw
    assert msg["Subject"] == "Booked: Zeiss LSM 980 NLO, Fri 13 Dec 2030 23:00 - Sat 14 Dec 2030 01:00"


def test_change_and_cancel_keep_the_uid_and_raise_the_sequence(rt, fakes):
    mail = fakes[0]
    send_event(rt, "booking.confirmed", snapshot())
    moved = dt.datetime(2030, 12, 3, 12, 0, tzinfo=UTC)
    send_event(rt, "booking.updated", snapshot(start=moved, sequence=1))
    send_event(rt, "booking.cancelled", snapshot(start=moved, sequence=2, status="cancelled",
                                                 cancel_reason="Samples not ready"))
    deliver(rt)
    parts = [calendar_part(m) for m in mail.sent]
    assert [p.get_param("method") for p, _ in parts] == ["REQUEST", "REQUEST", "CANCEL"]
    assert [str(c["METHOD"]) for _, c in parts] == ["REQUEST", "REQUEST", "CANCEL"]
    events = [the_event(c) for _, c in parts]
    assert {str(e["UID"]) for e in events} == {"b1@labshare.example.org"}
    assert [int(e["SEQUENCE"]) for e in events] == [0, 1, 2]
    assert events[1].decoded("DTSTART") == moved
    assert events[2]["STATUS"] == "CANCELLED" and "Samples not ready" in str(events[2]["DESCRIPTION"])
    assert all(c.walk("VTIMEZONE") for _, c in parts)
    cancel = mail.sent[2]
    assert cancel["Subject"].startswith("Cancelled:")
    assert next(p for p in cancel.walk() if p.get_content_type() == "application/ics").get_filename() == "cancel.ics"


def test_a_no_show_tells_its_owner_and_takes_it_out_of_their_calendar(rt, fakes):
    """Released as a no-show: a mail in plain words, with a CANCEL for the invitation (as the feeds show it
    CANCELLED), once however often the event comes; its reminder goes with it."""
    mail = fakes[0]
    start = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(hours=3)
    send_event(rt, "booking.confirmed", snapshot(start=start))
    with rt.db.read() as s:
        assert s.scalar(select(Reminder).where(Reminder.booking_id == "b1")) is not None
    released = snapshot(start=start, status="no_show", sequence=1, checked_in_at=None)
    event = send_event(rt, "booking.no_show", released)
    assert rt.consumer.handle(event) is False  # a redelivery: the inbox knows it
    with rt.db.begin() as s:
        s.execute(delete(rt.inbox))
    assert rt.consumer.handle(event) is True  # replayed after the inbox forgot it: the delivery key still holds
    deliver(rt)
    assert [rcpt for _, rcpt in mail.envelopes] == ["ada@example.org", "ada@example.org"]
    invite, no_show = mail.sent
    assert no_show["To"].addresses[0].addr_spec == "ada@example.org"
    assert no_show["Subject"].startswith("No-show: Zeiss LSM 980, ")
    assert no_show["Subject"] == invite["Subject"].replace("Booked:", "No-show:")
    text = no_show.get_body(preferencelist=("plain",)).get_content()
    for words in ("Nobody checked in to the booking by its check-in deadline", "released as a no-show",
                  "the rest of its time is free for others", "removes it from your calendar",
                  "Zeiss LSM 980", "Cell imaging lab", "Live-cell imaging",
                  "https://labshare.example.org/api/v1/bookings/b1"):
        assert words in text, words
    assert "Booking:  b1" in text and "When:     " in text and "(Europe/Oslo)" in text
    part, cal = calendar_part(no_show)
    assert part.get_param("method") == "CANCEL" == cal["METHOD"]
    event_ = the_event(cal)
    assert str(event_["UID"]) == str(the_event(calendar_part(invite)[1])["UID"]) == "b1@labshare.example.org"
    assert int(event_["SEQUENCE"]) == 1 and event_["STATUS"] == "CANCELLED"
    assert "released as a no-show" in str(event_["DESCRIPTION"])
    with rt.db.read() as s:
        assert s.scalar(select(Reminder).where(Reminder.booking_id == "b1")) is None
        kinds = s.execute(select(Delivery.kind, Delivery.event_type).where(Delivery.channel == "email")).all()
    assert sorted(kinds) == [("cancellation", "booking.no_show"), ("invitation", "booking.confirmed")]


def test_waiters_hear_when_offered_skipped_or_expired(rt, fakes):
    mail = fakes[0]
    refused = {"rule": "qualification", "message": "Only users trained on Zeiss LSM 980 may book it."}
    skipped = send_event(rt, "waitlist.skipped", snapshot("w1", status="skipped", violations=[refused]))
    send_event(rt, "waitlist.offered", {**snapshot("w2", status="offered"), "booking_id": "b9"})
    send_event(rt, "waitlist.expired", snapshot("w3", status="expired"))
    send_event(rt, "waitlist.booked", {**snapshot("w4", status="booked"), "booking_id": "b8"})  # its invitation tells
    send_event(rt, "waitlist.joined", snapshot("w5", status="waiting"))
    rt.consumer.handle(skipped)  # a redelivery mails nobody twice
    deliver(rt)
    assert [m["Subject"].split(":")[0] for m in mail.sent] == ["Not booked", "Offered", "No longer waiting"]
    assert {rcpt for _, rcpt in mail.envelopes} == {"ada@example.org"}
    texts = [m.get_body(preferencelist=("plain",)).get_content() for m in mail.sent]
    assert "Only users trained on Zeiss LSM 980 may book it." in texts[0]
    assert "https://labshare.example.org/api/v1/waitlist/w1" in texts[0]
    assert "https://labshare.example.org/api/v1/bookings/b9" in texts[1] and "approval" in texts[1]
    assert all(not any(p.get_content_type() == "text/calendar" for p in m.walk()) for m in mail.sent)


def test_a_late_event_changes_nothing(rt, fakes):
    send_event(rt, "booking.cancelled", snapshot(sequence=2, status="cancelled"))
    send_event(rt, "booking.updated", snapshot(sequence=1))
    deliver(rt)
    assert [m["Subject"].split(":")[0] for m in fakes[0].sent] == ["Cancelled"]
    with rt.db.read() as s:
        assert s.scalar(select(Reminder).where(Reminder.booking_id == "b1")) is None


def test_without_a_manager_address_the_lab_organizes_from_our_sender(rt, fakes):
    data = snapshot()
    data["lab"]["managers"] = []
    send_event(rt, "booking.confirmed", data)
    deliver(rt)
    _, cal = calendar_part(fakes[0].sent[0])
    assert str(the_event(cal)["ORGANIZER"]) == "mailto:noreply@labshare.example.org"
    assert "SENT-BY" not in the_event(cal)["ORGANIZER"].params


def test_pending_asks_managers_with_an_address(rt, fakes):
    send_event(rt, "booking.created", snapshot(status="pending"))
    deliver(rt)
    mail = fakes[0]
    assert [rcpt for _, rcpt in mail.envelopes] == ["mgr@example.org"]
    body = mail.sent[0].get_body(("plain",)).get_content()
    assert "POST https://labshare.example.org/api/v1/bookings/b1/approve" in body
    assert "Ada Lovelace (ntnu) <ada@example.org>" in body and "NFR-12345" in body
    send_event(rt, "booking.confirmed", snapshot(sequence=1))
    deliver(rt)
    assert mail.sent[1]["Subject"].startswith("Approved:") and mail.envelopes[1][1] == "ada@example.org"


def test_the_same_event_twice_queues_one_mail(rt, fakes):
    event = send_event(rt, "booking.confirmed", snapshot())
    assert rt.consumer.handle(event) is False  # the inbox knows it
    with rt.db.begin() as s:
        s.execute(delete(rt.inbox))
    assert rt.consumer.handle(event) is True  # replayed: the delivery key still holds
    deliver(rt)
    assert len(fakes[0].sent) == 1


def test_finished_deliveries_are_forgotten_after_the_retention(rt, fakes):
    from shared.errors import NotFound

    for i in range(6):
        send_event(rt, "booking.confirmed", snapshot(f"b{i}"))
    deliver(rt)
    assert len(fakes[0].sent) == 6
    stamp = dt.datetime.now(UTC)
    old, yesterday = stamp - dt.timedelta(days=91), stamp - dt.timedelta(days=1)
    with rt.db.begin() as s:
        rows = {d.booking_id: d for d in s.scalars(select(Delivery))}
        ids = {b: d.id for b, d in rows.items()}
        # b0 sent, b1 sent but tried again yesterday (a replay), b2 dead, b3 cancelled, b4 still pending:
        # all made 91 days ago; b5 is recent.
        for b, status in (("b0", "sent"), ("b1", "sent"), ("b2", "dead"), ("b3", "cancelled"), ("b4", "pending")):
            rows[b].created_at, rows[b].status = old, status
        s.execute(update(DeliveryAttempt).where(DeliveryAttempt.delivery_id != ids["b5"]).values(started_at=old))
        s.execute(update(DeliveryAttempt).where(DeliveryAttempt.delivery_id == ids["b1"]).values(started_at=yesterday))
    assert handlers.purge_old_deliveries(rt, batch=2) == 3  # two batches
    with rt.db.read() as s:
        assert {d.booking_id for d in s.scalars(select(Delivery))} == {"b1", "b4", "b5"}
        assert set(s.scalars(select(DeliveryAttempt.delivery_id))) == {ids["b1"], ids["b4"], ids["b5"]}
    with pytest.raises(NotFound):
        handlers.get_notification(rt, _admin(), ids["b0"])
    assert handlers.get_notification(rt, _admin(), ids["b1"])["status"] == "sent"
    assert handlers.purge_old_deliveries(rt) == 0
    # Kept for ever with a retention of 0; a retention of 0.5 days takes b1 too.
    rt.settings = rt.settings.replace(delivery_retention_days=0)
    assert handlers.purge_old_deliveries(rt, at=stamp + dt.timedelta(days=30)) == 0
    rt.settings = rt.settings.replace(delivery_retention_days=0.5)
    assert handlers.purge_old_deliveries(rt) == 1


def test_sent_and_failed_are_announced_through_the_outbox(rt, fakes):
    mail = fakes[0]
    mail.script = [Outcome(False, 1.0, 550, "smtp: 550 no such user", permanent=True)]
    send_event(rt, "booking.confirmed", snapshot())
    send_event(rt, "booking.confirmed", snapshot("b2", user={"sub": "bob", "name": "Bob", "org": "ntnu",
                                                             "email": "bob@example.org"}))
    deliver(rt)
    with rt.db.read() as s:
        types = [json.loads(p) for p in s.scalars(select(OUTBOX.c.payload).order_by(OUTBOX.c.id))]
        dead = s.scalars(select(Delivery).where(Delivery.status == "dead")).all()
    assert sorted(e["type"] for e in types) == ["notification.failed", "notification.sent"]
    assert all(e["source"] == "/labshare/notify" for e in types)
    assert len(dead) == 1 and dead[0].attempts == 1  # a permanent refusal is not retried
    failed = next(e for e in types if e["type"] == "notification.failed")["data"]
    assert failed["channel"] == "email" and failed["last_status_code"] == 550


def test_temporary_failures_are_retried_then_dead(rt, fakes):
    mail = fakes[0]
    mail.script = [Outcome(False, 1.0, error="smtp connect: refused")] * 3
    send_event(rt, "booking.confirmed", snapshot())
    deliver(rt)
    with rt.db.read() as s:
        row = s.scalars(select(Delivery)).one()
    assert row.status == "dead" and row.attempts == 3 and mail.sent == []
    listed = handlers.dead_notifications(rt, _admin(), 10, None)
    assert [d["id"] for d in listed] == [row.id] and len(listed[0]["log"]) == 3
    handlers.replay(rt, _admin(), row.id)
    deliver(rt)
    assert len(mail.sent) == 1


def _admin():
    from shared.auth import Principal

    return Principal(sub="root", name="Root", email="root@example.org", roles=("admin",))


def test_a_worker_that_died_mid_send_is_taken_over_after_its_lease(rt, fakes):
    send_event(rt, "booking.confirmed", snapshot())
    lost = handlers.claim_deliveries(rt, "email", 10, dt.timedelta(seconds=60), "dead-worker")
    assert len(lost) == 1
    deliver(rt)
    assert fakes[0].sent == []  # still leased
    with rt.db.begin() as s:
        s.execute(update(Delivery).values(claimed_until=dt.datetime(2000, 1, 1, tzinfo=UTC)))
    deliver(rt)
    assert len(fakes[0].sent) == 1


# -- reminders --------------------------------------------------------------------------------------


def test_reminders_catch_up_skip_started_follow_moves_and_cancels(rt, fakes):
    now = dt.datetime.now(UTC).replace(microsecond=0)
    send_event(rt, "booking.confirmed", snapshot("soon", start=now + dt.timedelta(minutes=20)))
    send_event(rt, "booking.confirmed", snapshot("later", start=now + dt.timedelta(hours=5)))
    send_event(rt, "booking.confirmed", snapshot("gone", start=now + dt.timedelta(minutes=10)))
    send_event(rt, "booking.cancelled", snapshot("gone", start=now + dt.timedelta(minutes=10), status="cancelled",
                                                 sequence=1))
    with rt.db.begin() as s:  # notify was down: a reminder whose booking has meanwhile started
        s.add(Reminder(booking_id="started", owner_sub="ada", start_at=now - dt.timedelta(minutes=1),
                       due_at=now - dt.timedelta(minutes=61)))
    deliver(rt)
    reminders = [m for m in fakes[0].sent if m["Subject"].startswith("Reminder:")]
    assert len(reminders) == 1 and "soon" in reminders[0].get_body(("plain",)).get_content()
    with rt.db.read() as s:
        outcomes = dict(s.execute(select(Reminder.booking_id, Reminder.outcome)).all())
    assert outcomes == {"soon": "sent", "later": None, "started": "skipped"}
    # Moved closer: a new reminder for the new time.
    send_event(rt, "booking.updated", snapshot("later", start=now + dt.timedelta(minutes=30), sequence=1))
    send_event(rt, "booking.updated", snapshot("soon", start=now + dt.timedelta(minutes=20), sequence=1,
                                               title="Retitled"))
    deliver(rt)
    subjects = [m["Subject"] for m in fakes[0].sent if m["Subject"].startswith("Reminder:")]
    assert len(subjects) == 2  # "later" now; "soon" only retitled, so not reminded again


def test_preferences_choose_the_lead_time_or_none(rt, fakes):
    from shared.auth import Principal

    ada = Principal(sub="ada", name="Ada", email="ada@example.org", roles=("researcher",))
    assert handlers.get_preferences(rt, ada)["reminder_minutes"] == 60
    now = dt.datetime.now(UTC).replace(microsecond=0)
    send_event(rt, "booking.confirmed", snapshot(start=now + dt.timedelta(minutes=30)))
    handlers.set_preferences(rt, ada, None)
    deliver(rt)
    assert [m["Subject"].split(":")[0] for m in fakes[0].sent] == ["Booked"]
    assert handlers.get_preferences(rt, ada)["reminder_minutes"] is None
    handlers.set_preferences(rt, ada, 45)
    deliver(rt)
    assert [m["Subject"].split(":")[0] for m in fakes[0].sent] == ["Booked", "Reminder"]


# -- webhooks ---------------------------------------------------------------------------------------


def _hook(rt, **over) -> dict:
    data = {"url": "https://hooks.example.org/in", "events": ["booking.*"], "secret": "topsecret", **over}
    return handlers.create_webhook(rt, _admin(), data)


def test_webhook_calls_are_signed_and_retried(rt, fakes):
    http = fakes[1]
    http.statuses = [503, 200]
    hook = _hook(rt, events=["booking.confirmed"])
    event = send_event(rt, "booking.confirmed", snapshot())
    send_event(rt, "booking.created", snapshot())
    deliver(rt)
    assert len(http.calls) == 2
    (url, body, headers), (_, body2, headers2) = http.calls
    assert url == hook["url"] and body == body2 and json.loads(body) == event
    assert headers["X-Labshare-Signature"] == "sha256=" + hmac.new(b"topsecret", body, hashlib.sha256).hexdigest()
    assert headers["Content-Type"] == "application/cloudevents+json" and headers["ce-id"] == event["id"]
    assert headers["X-Labshare-Delivery"] == headers2["X-Labshare-Delivery"]
    log = handlers.webhook_deliveries(rt, _admin(), hook["id"], None, 10, None)
    assert [d["status"] for d in log] == ["sent"] and [a["status_code"] for a in log[0]["log"]] == [503, 200]


def test_webhooks_may_ask_for_no_shows(rt, fakes):
    http = fakes[1]
    no_shows = _hook(rt, events=["booking.no_show"], url="https://hooks.example.org/no-shows")
    _hook(rt, events=["booking.cancelled"], url="https://hooks.example.org/cancelled")
    every = _hook(rt, events=["booking.*"], url="https://hooks.example.org/all")
    event = send_event(rt, "booking.no_show", snapshot(status="no_show", sequence=1))
    deliver(rt)
    assert sorted(url for url, _, _ in http.calls) == sorted([no_shows["url"], every["url"]])
    assert all(json.loads(body) == event for _, body, _ in http.calls)


def test_a_webhook_failing_through_its_schedule_is_disabled_with_a_notice(rt, fakes):
    mail, http = fakes
    http.statuses = [500]
    hook = _hook(rt)
    send_event(rt, "booking.created", snapshot())
    deliver(rt)
    assert len(http.calls) == 3  # first try and two retries
    state = handlers.get_webhook(rt, _admin(), hook["id"])
    assert state["enabled"] is False and state["consecutive_failures"] == 3
    notice = mail.to("root@example.org")
    assert len(notice) == 1 and notice[0]["Subject"] == "Webhook disabled: https://hooks.example.org/in"
    send_event(rt, "booking.confirmed", snapshot())  # a disabled webhook gets nothing new
    deliver(rt)
    assert len(http.calls) == 3
    handlers.enable_webhook(rt, _admin(), hook["id"])
    http.statuses = [200]
    dead = handlers.webhook_deliveries(rt, _admin(), hook["id"], "dead", 10, None)
    handlers.replay(rt, _admin(), dead[0]["id"])
    deliver(rt)
    assert len(http.calls) == 4 and handlers.get_notification(rt, _admin(), dead[0]["id"])["status"] == "sent"


def test_deleted_webhooks_get_nothing_more(rt, fakes):
    http = fakes[1]
    hook = _hook(rt)
    send_event(rt, "booking.created", snapshot())
    handlers.delete_webhook(rt, _admin(), hook["id"])
    deliver(rt)
    assert http.calls == []
    with rt.db.read() as s:
        assert s.scalars(select(Delivery.status).where(Delivery.channel == "webhook")).all() == ["cancelled"]


# -- transports -------------------------------------------------------------------------------------


def test_smtp_urls():
    t = SmtpTransport("smtp://mailer:p%40ss@mail.example.org:2525?starttls=true", timeout=3)
    assert (t.host, t.port, t.user, t.password, t.starttls, t.implicit_tls) == (
        "mail.example.org", 2525, "mailer", "p@ss", True, False)
    t = SmtpTransport("smtps://mail.example.org")
    assert (t.port, t.implicit_tls, t.user) == (465, True, None)
    assert SmtpTransport("smtp://127.0.0.1").port == 25
    with pytest.raises(ValueError):
        SmtpTransport("http://mail.example.org")


def test_smtp_down_fails_every_message_for_a_retry():
    t = SmtpTransport(f"smtp://127.0.0.1:{_closed_port()}", timeout=2)
    from services.notify.transports import Outgoing

    out = t.send([Outgoing("a@x.org", "b@x.org", b"Subject: x\r\n\r\nx\r\n")] * 2)
    assert [o.ok for o in out] == [False, False] and not any(o.permanent for o in out)


def _closed_port() -> int:
    from tests.servers import free_port

    return free_port()


def test_without_smtp_mail_goes_to_a_maildir(settings):
    transport = mail_transport(settings)
    assert isinstance(transport, MaildirTransport)
    assert isinstance(mail_transport(settings.replace(smtp_url="smtp://127.0.0.1:1025")), SmtpTransport)
    runtime = build_runtime(settings, http=FakeHttp())
    send_event(runtime, "booking.confirmed", snapshot(str(uuid.uuid4())))
    deliver(runtime)
    box = mailbox.Maildir(Path(settings.data_dir) / "mail", create=False)
    messages = list(box)
    assert len(messages) == 1 and messages[0]["Delivered-To"] == "ada@example.org"
    assert messages[0]["Subject"].startswith("Booked:")
    runtime.db.dispose()
