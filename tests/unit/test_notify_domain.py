"""Notify's rules: what each booking event sends, reminders, backoff, webhook patterns, URLs and scope."""

from __future__ import annotations

import datetime as dt

import pytest

from services.notify import domain
from services.notify.domain import BookingFacts, Person, Seen, WebhookScope
from shared.config import Settings

UTC = dt.UTC
T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def facts(**over) -> BookingFacts:
    values = dict(
        id="b1", status="confirmed", sequence=0, start=T0, end=T0 + dt.timedelta(hours=2), timezone="Europe/Oslo",
        title="Imaging", project="P", resource_id="r1", resource_name="Confocal", lab_id="l1", lab_name="Lab",
        owner=Person("ada", "Ada", "ada@example.org"), owner_org="ntnu",
        managers=(Person("m1", "Manager", "m1@example.org"), Person("m2", "No mail", "")),
    )
    values.update(over)
    return BookingFacts(**values)


def test_snapshot_is_read_with_lab_zone_owner_and_outage():
    b = BookingFacts.from_snapshot({
        "id": "b1", "status": "cancelled", "sequence": 3, "start": "2026-12-01T08:00:00Z",
        "end": "2026-12-01T10:00:00Z", "resource_name": "Confocal", "cancel_reason": "outage",
        "outage": {"id": "o1", "reason": "Laser service"},
        "user": {"sub": "ada", "name": "Ada", "email": "ada@example.org", "org": "ntnu"},
        "lab": {"id": "l1", "name": "Lab", "timezone": "Europe/Oslo",
                "managers": [{"sub": "m", "name": "M", "email": "m@example.org"}]},
    })
    assert b.start == T0 and b.timezone == "Europe/Oslo" and b.owner.email == "ada@example.org"
    assert b.managers == (Person("m", "M", "m@example.org"),) and b.outage_reason == "Laser service"
    assert "out of service" in domain.cancel_text(b) and "Laser service" in domain.cancel_text(b)


@pytest.mark.parametrize(
    ("event", "status", "sequence", "seen", "owner_mail", "approvers", "remind"),
    [
        ("booking.created", "confirmed", 0, None, None, 0, True),
        ("booking.created", "pending", 0, None, None, 1, False),
        ("booking.confirmed", "confirmed", 0, None, "booked", 0, True),
        ("booking.confirmed", "confirmed", 1, Seen(0, "pending", False), "approved", 0, True),
        ("booking.confirmed", "confirmed", 1, None, "approved", 0, True),
        ("booking.updated", "confirmed", 1, Seen(0, "confirmed", True), "changed", 0, True),
        ("booking.updated", "confirmed", 1, Seen(0, "confirmed", False), "booked", 0, True),
        ("booking.updated", "pending", 2, Seen(1, "confirmed", True), "pending_again", 1, False),
        ("booking.updated", "pending", 1, Seen(0, "pending", False), None, 1, False),
        ("booking.cancelled", "cancelled", 2, Seen(1, "confirmed", True), "cancelled", 0, False),
        ("booking.declined", "declined", 1, Seen(0, "pending", False), "declined", 0, False),
        ("booking.checked_in", "confirmed", 1, Seen(0, "confirmed", True), None, 0, True),
        ("booking.no_show", "no_show", 1, Seen(0, "confirmed", True), "no_show", 0, False),
    ],
)
def test_plan_for_each_booking_event(event, status, sequence, seen, owner_mail, approvers, remind):
    plan = domain.plan_for(event, facts(status=status, sequence=sequence), seen)
    assert plan.owner_mail == owner_mail
    assert [p.sub for p in plan.approvers] == ["m1"][:approvers]
    assert plan.remind is remind and plan.stale is False


def test_a_late_event_mails_nobody():
    plan = domain.plan_for("booking.updated", facts(sequence=1), Seen(2, "cancelled", False))
    assert plan.stale and plan.owner_mail is None and not plan.approvers and not plan.remind


def test_no_owner_address_no_owner_mail():
    assert domain.plan_for("booking.confirmed", facts(owner=Person("x", "X", "")), None).owner_mail is None


def test_reminders_catch_up_but_never_after_the_start():
    due = domain.reminder_due(T0, 60)
    assert due == T0 - dt.timedelta(hours=1)
    assert domain.reminder_due(T0, None) is None
    assert domain.reminder_action(T0, due, due - dt.timedelta(seconds=1)) == "wait"
    assert domain.reminder_action(T0, due, due) == "send"
    assert domain.reminder_action(T0, due, T0 - dt.timedelta(minutes=1)) == "send"  # after downtime
    assert domain.reminder_action(T0, due, T0) == "skip"


def test_retry_schedule_backs_off_with_jitter_and_ends():
    schedule = (10.0, 30.0, 60.0)
    assert domain.retry_delay(1, schedule, 0.5) == 10.0
    assert domain.retry_delay(2, schedule, 0.0) == pytest.approx(24.0)
    assert domain.retry_delay(3, schedule, 0.999) == pytest.approx(71.98, abs=0.01)
    assert domain.retry_delay(4, schedule, 0.5) is None
    assert domain.max_attempts(schedule) == 4


def test_default_schedule_retries_for_over_an_hour():
    from shared.config import Settings

    schedule = Settings().retry_seconds
    assert len(schedule) >= 9 and sum(schedule) * 0.8 > 3600
    assert list(schedule) == sorted(schedule)


@pytest.mark.parametrize(
    ("patterns", "type_", "expected"),
    [
        (["booking.*"], "booking.created", True),
        (["booking.*"], "lab.created", False),
        (["*"], "outage.created", True),
        (["booking.confirmed"], "booking.confirmed", True),
        (["booking.confirmed"], "booking.confirmed.extra", False),
        (["lab.*", "resource.*"], "resource.retired", True),
        (["Booking.*"], "booking.created", False),
    ],
)
def test_event_patterns(patterns, type_, expected):
    assert domain.matches(patterns, type_) is expected


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://hooks.example.org/labshare", True),
        ("http://127.0.0.1:9000/hook?x=1", True),
        ("ftp://example.org/", False),
        ("https://user:secret@example.org/", False),
        ("https://token@example.org/", False),
        ("https:///path", False),
        ("https://example.org/#frag", False),
        ("https://exa mple.org/", False),
        ("https://example.org:99999/", False),
        ("example.org/hook", False),
        ("https://example.org/" + "x" * 2000, False),
    ],
)
def test_webhook_urls(url, ok):
    assert (domain.url_problems(url) == []) is ok


@pytest.mark.parametrize(
    ("url", "refused_for"),
    [
        ("https://hooks.example.org/labshare", None),
        ("https://8.8.8.8/hook", None),
        ("https://[2001:4860:4860::8888]/hook", None),
        ("http://127.0.0.1:9000/hook", "127.0.0.1 is a loopback address"),
        ("http://127.8.9.10/hook", "127.8.9.10 is a loopback address"),
        ("http://[::1]/hook", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "::ffff:127.0.0.1 is a loopback address"),
        ("http://localhost:8080/hook", "localhost is this machine"),
        ("http://API.Localhost./hook", "api.localhost is this machine"),
        ("http://10.1.2.3/hook", "10.1.2.3 is a private or reserved address"),
        ("http://172.16.0.9/hook", "172.16.0.9 is a private or reserved address"),
        ("http://192.168.1.20/hook", "192.168.1.20 is a private or reserved address"),
        ("http://[fd00::5]/hook", "fd00::5 is a private or reserved address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[fe80::1]/hook", "fe80::1 is a link-local address"),
        ("http://100.64.0.1/hook", "100.64.0.1 is not a public address"),
        ("http://0.0.0.0/hook", "0.0.0.0 is an unspecified address"),
        ("http://239.1.2.3/hook", "239.1.2.3 is a multicast address"),
    ],
)
def test_webhooks_may_be_kept_to_public_addresses(url, refused_for):
    assert domain.url_problems(url, private_targets=True) == []
    problems = domain.url_problems(url, private_targets=False)
    if refused_for is None:
        assert problems == []
    else:
        assert problems == [f"must point to a public address ({refused_for}; LABSHARE_WEBHOOK_PRIVATE_TARGETS=1 "
                            "allows it)"]


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({}, False),
        ({"LABSHARE_DEV_MODE": "1"}, True),
        ({"LABSHARE_DEV_MODE": "1", "LABSHARE_WEBHOOK_PRIVATE_TARGETS": "0"}, False),
        ({"LABSHARE_WEBHOOK_PRIVATE_TARGETS": "1"}, True),
    ],
)
def test_private_webhook_targets_follow_dev_mode_unless_set(env, allowed):
    assert Settings.from_env(env).private_webhook_targets is allowed


def test_event_patterns_are_checked():
    assert domain.pattern_problems(["booking.*", "*", "lab.created"]) == []
    assert domain.pattern_problems(["booking created", ""]) != []


def test_which_lab_an_event_is_about():
    assert domain.event_lab({"type": "lab.updated", "data": {"id": "l1"}}, {}) == "l1"
    assert domain.event_lab({"type": "booking.created", "data": {"lab": {"id": "l2"}, "lab_id": "l2"}}, {}) == "l2"
    assert domain.event_lab({"type": "resource.created", "data": {"id": "r", "lab_id": "l3"}}, {}) == "l3"
    assert domain.event_lab({"type": "outage.created", "data": {"resource_id": "r9"}}, {"r9": "l4"}) == "l4"
    assert domain.event_lab({"type": "outage.created", "data": {"resource_id": "r9"}}, {}) is None


def test_webhook_scope():
    managers = frozenset({"m1"})
    assert domain.in_scope(WebhookScope(None, "root", True), None, frozenset())
    assert domain.in_scope(WebhookScope("l1", "m1", False), "l1", managers)
    assert not domain.in_scope(WebhookScope("l1", "m1", False), "l2", managers)
    assert not domain.in_scope(WebhookScope("l1", "m1", False), "l1", frozenset({"m2"}))  # no longer a manager
    assert domain.in_scope(WebhookScope(None, "m1", False), "l1", managers)
    assert not domain.in_scope(WebhookScope(None, "m1", False), None, frozenset())


def test_mail_domain():
    assert domain.mail_domain("labshare.example.org") == "labshare.example.org"
    assert domain.mail_domain("127.0.0.1") == "localhost"
    assert domain.mail_domain("localhost") == "localhost"
    assert domain.mail_domain(None) == "localhost"
