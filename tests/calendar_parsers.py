"""The calendar parsers people's clients use, for checking feeds: Python icalendar, ical.js and libical.

ical.js (the parser in Thunderbird) comes from the npm registry into ``tests/.node``
(git-ignored) on first use; libical is read through its GObject bindings with the
system's Python (``gir1.2-ical-3.0`` and ``python3-gi``), which a virtualenv cannot
import. Without node/npm or libical the checks skip and say why; with
``LABSHARE_REQUIRE_SERVICES=1`` (as CI sets it) they fail instead.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import tempfile
import warnings
from pathlib import Path

import icalendar

from tests.npm import npm_file, unavailable

HERE = Path(__file__).resolve().parent
ICALJS_CHECK = HERE / "icaljs_check.mjs"
SYSTEM_PYTHON = "/usr/bin/python3"


# -- Python icalendar ---------------------------------------------------------------------------


def parse_icalendar(data: bytes) -> icalendar.Calendar:
    """Parse with icalendar; any warning or any component with parse errors fails the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = icalendar.Calendar.from_ical(data)
    assert not caught, [str(w.message) for w in caught]
    broken = [(c.name, c.errors) for c in cal.walk() if getattr(c, "errors", None)]
    assert not broken, broken
    return cal


# -- ical.js ------------------------------------------------------------------------------------


def icaljs_module() -> Path:
    """The ical.js module, installed from the npm registry into ``tests/.node`` the first time."""
    return npm_file("ical.js", "2", "dist/ical.js")


def parse_icaljs(*feeds: bytes) -> list[dict]:
    """What ical.js reads in each feed (see ``icaljs_check.mjs``); fails on any warning."""
    module = icaljs_module()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, data in enumerate(feeds):
            path = Path(tmp) / f"feed{i}.ics"
            path.write_bytes(data)
            paths.append(str(path))
        done = subprocess.run(["node", str(ICALJS_CHECK), str(module), *paths],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout)
    out = [results[p] for p in paths]
    for result in out:
        assert result["warnings"] == [], result["warnings"]
    return out


# -- libical ------------------------------------------------------------------------------------

_LIBICAL_SCRIPT = r"""
import json, re, sys
import gi
gi.require_version("ICalGLib", "3.0")
from gi.repository import ICalGLib as I

def lic_errors(comp):
    text = comp.as_ical_string().replace("\r\n ", "").replace("\n ", "")
    return [line for line in text.splitlines() if line.startswith("X-LIC-ERROR")]

cal = I.Component.new_from_string(sys.stdin.read())
out = {"errors": [], "itip_errors": [], "events": []}
if cal is None:
    out["errors"].append("not parsed")
else:
    out["errors"] = lic_errors(cal)
    I.restriction_check(cal)
    out["itip_errors"] = [e for e in lic_errors(cal) if e not in out["errors"]]
    ev = cal.get_first_component(I.ComponentKind.VEVENT_COMPONENT)
    while ev is not None:
        times = {}
        for name, t in (("start", ev.get_dtstart()), ("end", ev.get_dtend())):
            zone = t.get_timezone()
            times[name] = t.as_timet_with_zone(zone) if zone is not None else None
            times[name + "_tzid"] = t.get_tzid()
        out["events"].append({"uid": ev.get_uid(), "summary": ev.get_summary(), "location": ev.get_location(),
                              "status": ev.get_status().real, **times})
        ev = cal.get_next_component(I.ComponentKind.VEVENT_COMPONENT)
print(json.dumps(out))
"""


def libical_available() -> bool:
    """Whether the system Python can load libical's GObject bindings."""
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('ICalGLib', '3.0'); "
                            "from gi.repository import ICalGLib"], capture_output=True, timeout=60)
    return probe.returncode == 0


def parse_libical(data: bytes) -> dict:
    """What libical reads in a feed, after its RFC 5546 (iTIP) restriction check; fails on any error it adds.

    Each event's ``start``/``end`` are Unix times, resolved through the VTIMEZONE of its TZID.
    """
    if not libical_available():
        unavailable("libical's Python bindings are missing (apt-get install gir1.2-ical-3.0 python3-gi)")
    done = subprocess.run([SYSTEM_PYTHON, "-c", _LIBICAL_SCRIPT], input=data.decode(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["errors"] == [], result["errors"]
    assert result["itip_errors"] == [], result["itip_errors"]
    for event in result["events"]:
        if event["start_tzid"]:
            assert event["start"] is not None, f"libical found no VTIMEZONE for {event['start_tzid']}"
    return result


def unix(moment: dt.datetime) -> int:
    """Seconds since the epoch, as libical reports times."""
    return int(moment.timestamp())
