"""Booking's background loop: no-shows and expired waitlist entries.

It runs with the consumer (``python -m services.booking consume`` or ``worker``,
and ``make run``). Any number of booking processes may run it side by side: the
work is claimed in the database (``SKIP LOCKED`` on PostgreSQL, the write lock on
SQLite), never in memory. It does not rely on running on time: each pass settles
everything that fell due since the last one, however long ago.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import DBAPIError

from services.booking import handlers, waitlist
from shared.service import Runtime

log = logging.getLogger("labshare.booking")


class Housekeeping:
    """Every ``housekeeping_interval`` seconds: mark no-shows, then expire waitlist entries."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def run_once(self) -> tuple[int, int]:
        """One pass: (no-shows made, entries expired)."""
        return handlers.mark_no_shows(self.rt), waitlist.expire_entries(self.rt)

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``; a failing pass is logged and tried again at the next interval."""
        interval = self.rt.settings.housekeeping_interval
        while not stop.is_set():
            try:
                no_shows, expired = self.run_once()
                if no_shows or expired:
                    log.info("booking housekeeping: no-shows %d, expired waitlist entries %d", no_shows, expired)
            except DBAPIError as exc:
                log.warning("booking housekeeping: the database is away (%s); trying again in %.0fs",
                            type(exc).__name__, interval)
            except Exception:
                log.exception("booking housekeeping failed; trying again in %.0fs", interval)
            stop.wait(interval)
