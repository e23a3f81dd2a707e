"""What notify's e-mails say, and how they are put together: plain text, HTML and an iMIP calendar part.

Pure: the ``email`` package builds the MIME message and ``icalendar`` the
iTIP object (RFC 5546) carried as iMIP (RFC 6047). Nothing is sent from here.

Invitations go to the booking's owner with ``PARTSTAT=ACCEPTED`` and
``RSVP=FALSE``: the owner made the booking, so there is nothing to answer, and
Outlook, Google and Apple then file the event as accepted instead of asking.
The organizer is the lab (its name, and its first manager's address, with
labshare's sender as ``SENT-BY``), so replies, if any, reach a person.
"""

from __future__ import annotations

import datetime as dt
import html
import zoneinfo
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr

import icalendar

from services.notify.domain import BookingFacts, Person, cancel_text

PRODID = "-//labshare//notify//EN"


@dataclass(frozen=True)
class Letter:
    """One e-mail to one person, before it becomes MIME."""

    to: Person
    subject: str
    lines: tuple[tuple[str, str], ...]
    intro: str
    outro: str = ""
    calendar: str | None = None
    method: str | None = None
    from_name: str = "labshare"
    reply_to: str | None = None


# -- wording ----------------------------------------------------------------------------------------


def _zone(name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def when(b: BookingFacts, zone: bool = True) -> str:
    """The booking's time in the lab's zone, e.g. ``Tue 1 Dec 2026, 09:00-11:00 (Europe/Oslo)``.

    Plain ASCII, so that subjects stay readable where headers are shown undecoded
    (subjects leave the zone out: the body names it).
    """
    tz = _zone(b.timezone)
    start, end = b.start.astimezone(tz), b.end.astimezone(tz)
    day = f"{start:%a} {start.day} {start:%b %Y}"
    if start.date() == end.date():
        text = f"{day}, {start:%H:%M}-{end:%H:%M}"
    else:
        text = f"{day} {start:%H:%M} - {end:%a} {end.day} {end:%b %Y} {end:%H:%M}"
    return f"{text} ({b.timezone})" if zone else text


def _details(b: BookingFacts) -> list[tuple[str, str]]:
    lines = [("Resource", b.resource_name), ("Lab", b.lab_name), ("When", when(b))]
    if b.title:
        lines.append(("Title", b.title))
    if b.project:
        lines.append(("Project", b.project))
    lines.append(("Booking", b.id))
    return lines


def summary(b: BookingFacts) -> str:
    """The calendar entry's title."""
    return f"{b.title} – {b.resource_name}" if b.title else b.resource_name


OWNER_WORDING = {
    "booked": ("Booked", "Your booking is confirmed. The attached invitation puts it in your calendar."),
    "approved": ("Approved", "The lab approved your booking. The attached invitation puts it in your calendar."),
    "changed": ("Changed", "Your booking was changed. The attached invitation updates your calendar."),
    "pending_again": ("Awaiting approval", "Your booking was changed and waits for the lab's approval again; "
                                           "your calendar shows it as tentative until then."),
    "cancelled": ("Cancelled", ""),
    "declined": ("Declined", ""),
    "no_show": ("No-show", ""),
}


def owner_letter(kind: str, b: BookingFacts, calendar: str, method: str, booking_url: str,
                 organizer: Person) -> Letter:
    """The mail to a booking's owner: an invitation (REQUEST) or its withdrawal (CANCEL: cancelled, declined,
    released as a no-show)."""
    word, intro = OWNER_WORDING[kind]
    if method == "CANCEL":
        intro = cancel_text(b) + " The attached cancellation removes it from your calendar."
    return Letter(
        to=b.owner,
        subject=f"{word}: {b.resource_name}, {when(b, zone=False)}",
        intro=intro,
        lines=(*_details(b), ("Details", booking_url)),
        calendar=calendar,
        method=method,
        from_name=f"{b.lab_name} via labshare",
        reply_to=organizer.email or None,
    )


def approval_letter(b: BookingFacts, manager: Person, public_url: str) -> Letter:
    """The mail asking a lab manager to approve or decline a pending booking."""
    base = public_url.rstrip("/")
    who = b.owner.name or b.owner.sub
    if b.owner_org:
        who += f" ({b.owner_org})"
    if b.owner.email:
        who += f" <{b.owner.email}>"
    return Letter(
        to=manager,
        subject=f"Approval needed: {b.resource_name}, {when(b, zone=False)}",
        intro=f"{b.owner.name or b.owner.sub} asks to use {b.resource_name}, which needs a manager's approval.",
        lines=(("Who", who), *_details(b)),
        outro=(
            f"Approve:  POST {base}/api/v1/bookings/{b.id}/approve\n"
            f"Decline:  POST {base}/api/v1/bookings/{b.id}/decline  with {{\"reason\": \"...\"}}\n"
            f"Details:  GET {base}/api/v1/bookings/{b.id}"
        ),
        from_name=f"{b.lab_name} via labshare",
        reply_to=b.owner.email or None,
    )


def reminder_letter(b: BookingFacts, to: Person, booking_url: str) -> Letter:
    """The reminder shortly before a booking starts."""
    return Letter(
        to=to,
        subject=f"Reminder: {b.resource_name}, {when(b, zone=False)}",
        intro=f"Your booking of {b.resource_name} starts soon.",
        lines=(*_details(b), ("Details", booking_url)),
        from_name=f"{b.lab_name} via labshare",
    )


WAITLIST_WORDING = {
    "waitlist.offered": ("Offered", "The time you were waiting for came free. It is held for you as a booking that "
                                    "waits for the lab's approval; you will hear when they decide."),
    "waitlist.skipped": ("Not booked", "The time you were waiting for came free, but it could not be booked for you."),
    "waitlist.expired": ("No longer waiting", "The time you were waiting for did not come free before it began, so "
                                              "you are no longer on its waitlist."),
}


def waitlist_letter(event_type: str, w: BookingFacts, reasons: list[str], details_url: str) -> Letter:
    """The mail to someone on a waitlist: offered a booking that needs approval, skipped (and why), or expired."""
    word, intro = WAITLIST_WORDING[event_type]
    lines = [("Resource", w.resource_name), ("Lab", w.lab_name), ("When", when(w))]
    if w.title:
        lines.append(("Title", w.title))
    lines += [("Why", reason) for reason in reasons]
    lines.append(("Details", details_url))
    return Letter(
        to=w.owner,
        subject=f"{word}: {w.resource_name}, {when(w, zone=False)}",
        intro=intro,
        lines=tuple(lines),
        from_name=f"{w.lab_name} via labshare",
    )


def webhook_disabled_letter(to: Person, webhook_id: str, url: str, reason: str, public_url: str) -> Letter:
    """The notice to a webhook's owner that labshare stopped calling it."""
    base = public_url.rstrip("/")
    return Letter(
        to=to,
        subject=f"Webhook disabled: {url}",
        intro="labshare stopped delivering events to your webhook because deliveries kept failing.",
        lines=(("Webhook", webhook_id), ("URL", url), ("Reason", reason)),
        outro=(
            f"Deliveries: GET {base}/api/v1/webhooks/{webhook_id}/deliveries\n"
            f"Re-enable:  POST {base}/api/v1/webhooks/{webhook_id}/enable\n"
            "Failed deliveries can be replayed once the endpoint works again."
        ),
    )


# -- the calendar part ------------------------------------------------------------------------------


def calendar(b: BookingFacts, method: str, uid: str, organizer: Person, sent_by: str | None,
             stamp: dt.datetime) -> str:
    """An iTIP ``REQUEST`` or ``CANCEL`` for one booking, times in the lab's zone with its VTIMEZONE."""
    tz = _zone(b.timezone)
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", method)
    event = icalendar.Event()
    event.add("uid", uid)
    event.add("sequence", b.sequence)
    event.add("dtstamp", stamp.astimezone(dt.UTC))
    event.add("dtstart", b.start.astimezone(tz))
    event.add("dtend", b.end.astimezone(tz))
    if b.updated_at is not None:
        event.add("last-modified", b.updated_at.astimezone(dt.UTC))
    event.add("summary", summary(b))
    event.add("location", f"{b.resource_name}, {b.lab_name}")
    description = [f"{k}: {v}" for k, v in _details(b)]
    if method == "CANCEL":
        description.insert(0, cancel_text(b))
    event.add("description", "\n".join(description))
    if method == "CANCEL":
        event.add("status", "CANCELLED")
    else:
        event.add("status", "CONFIRMED" if b.status == "confirmed" else "TENTATIVE")
    event.add("transp", "OPAQUE")
    org = icalendar.vCalAddress(f"mailto:{organizer.email}")
    org.params["cn"] = organizer.name
    if sent_by and sent_by.lower() != organizer.email.lower():
        org.params["sent-by"] = f"mailto:{sent_by}"
    event.add("organizer", org)
    attendee = icalendar.vCalAddress(f"mailto:{b.owner.email}")
    attendee.params["cn"] = b.owner.name or b.owner.email
    attendee.params["cutype"] = "INDIVIDUAL"
    attendee.params["role"] = "REQ-PARTICIPANT"
    attendee.params["partstat"] = "ACCEPTED"
    attendee.params["rsvp"] = "FALSE"
    event.add("attendee", attendee)
    cal.add_component(event)
    year = dt.timedelta(days=366)
    cal.add_missing_timezones(first_date=(b.start - year).date(), last_date=(b.end + year).date())
    return cal.to_ical().decode("utf-8")


# -- MIME -------------------------------------------------------------------------------------------


def render(letter: Letter, sender: str, message_id: str, stamp: dt.datetime) -> EmailMessage:
    """The e-mail: text and HTML alternatives, plus the calendar part (and an .ics copy) when there is one."""
    msg = EmailMessage()
    _, sender_addr = parseaddr(sender)
    msg["From"] = formataddr((letter.from_name, sender_addr))
    msg["To"] = formataddr((letter.to.name, letter.to.email)) if letter.to.name else letter.to.email
    if letter.reply_to:
        msg["Reply-To"] = letter.reply_to
    msg["Subject"] = letter.subject
    msg["Date"] = format_datetime(stamp.astimezone(dt.UTC))
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(_text(letter))
    msg.add_alternative(_html(letter), subtype="html")
    if letter.calendar is not None and letter.method is not None:
        msg.add_alternative(letter.calendar, subtype="calendar", params={"method": letter.method})
        name = "cancel.ics" if letter.method == "CANCEL" else "invite.ics"
        msg.add_attachment(letter.calendar.encode("utf-8"), maintype="application", subtype="ics", filename=name)
    return msg


def message_id(delivery_id: str, domain: str) -> str:
    """The Message-ID of a delivery; the same on every retry, so receivers can drop duplicates."""
    return f"<{delivery_id}@{domain}>"


def sender_address(mail_from: str | None, domain: str) -> str:
    """The ``From`` of notify's e-mail: configured, or ``labshare <noreply@domain>``."""
    if mail_from:
        return mail_from
    return str(Address("labshare", "noreply", domain))


def _text(letter: Letter) -> str:
    width = max((len(k) for k, _ in letter.lines), default=0) + 1
    parts = [f"Hello {letter.to.name or letter.to.email},", "", letter.intro, ""]
    parts += [f"{(k + ':').ljust(width)} {v}" for k, v in letter.lines]
    if letter.outro:
        parts += ["", letter.outro]
    parts += ["", "-- ", "labshare (an automatic message)"]
    return "\n".join(parts) + "\n"


def _html(letter: Letter) -> str:
    e = html.escape
    rows = "".join(
        f'<tr><th align="left" style="padding-right:1em">{e(k)}</th><td>{e(v)}</td></tr>' for k, v in letter.lines
    )
    outro = f"<pre>{e(letter.outro)}</pre>" if letter.outro else ""
    return (
        "<!DOCTYPE html><html><body>"
        f"<p>Hello {e(letter.to.name or letter.to.email)},</p><p>{e(letter.intro)}</p>"
        f"<table>{rows}</table>{outro}"
        "<p style=\"color:#666\">labshare (an automatic message)</p></body></html>\n"
    )
