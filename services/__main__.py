"""``python -m services run|migrate|seed``: all three services and the web app in one process, for development."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from urllib.parse import urlsplit

from werkzeug.serving import make_server

from services import demo, gateway
from services.booking.app import build_runtime as build_booking
from services.booking.app import create_app as booking_app
from services.inventory.app import build_runtime as build_inventory
from services.inventory.app import create_app as inventory_app
from services.notify.app import build_runtime as build_notify
from services.notify.app import create_app as notify_app
from services.web.app import create_app as web_app
from services.web.settings import WebSettings
from shared.cli import configure_logging
from shared.config import SERVICES, Settings
from shared.migrate import upgrade

log = logging.getLogger("labshare")

BANNER = """
labshare is running at {url}  (Ctrl-C stops it)

  Open {url}/ in a browser and log in as one of the demo users.

  Data:    {data}
  Broker:  {broker}
  Mail:    {mail}

Get a development token (dev mode only) and call the API:

  TOKEN=$(curl -s -X POST {url}/api/v1/dev/token -H 'Content-Type: application/json' \\
      -d '{{"sub": "ada", "name": "Ada Researcher", "email": "ada@ntnu.example.org", "org": "ntnu", \\
           "roles": ["researcher"]}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  curl -s {url}/api/v1/resources -H "Authorization: Bearer $TOKEN"

Demo users: {users}.  API documents: {url}/api/v1/openapi/booking.json (and inventory, notify).
"""


def _redacted(url: str) -> str:
    """A URL without its password, fit for a banner."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def migrate_all(settings: Settings) -> None:
    """Bring every service's schema up to date."""
    for name in SERVICES:
        upgrade(name, settings)


def build_stack(settings: Settings):
    """The three runtimes and the gateway in front of their apps and the web app.

    The web app calls the API through the gateway in this process (over the HTTP
    interface, without a socket), as it would call it over the network.
    """
    runtimes = {
        "inventory": build_inventory(settings),
        "booking": build_booking(settings),
        "notify": build_notify(settings),
    }
    apps = {
        "inventory": inventory_app(runtime=runtimes["inventory"]),
        "booking": booking_app(runtime=runtimes["booking"]),
        "notify": notify_app(runtime=runtimes["notify"]),
    }
    front = gateway.Gateway(apps)
    front.web = web_app(WebSettings.from_env(base=settings), api_wsgi=front)
    return runtimes, front


def run(settings: Settings, host: str = "127.0.0.1") -> None:
    """Migrate, seed, then serve the one origin with every relay and consumer in this process."""
    migrate_all(settings)
    runtimes, app = build_stack(settings)
    if demo.seed(runtimes["inventory"]):
        log.info("seeded demo labs and resources")
    stop = threading.Event()
    threads = [
        threading.Thread(target=loop, args=(stop,), daemon=True, name=f"{name}-{loop.__self__.__class__.__name__}")
        for name, rt in runtimes.items()
        for loop in rt.workers()
    ]
    for t in threads:
        t.start()
    server = make_server(host, settings.port, app, threaded=True)

    def _stop(signum, _frame) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print(
        BANNER.format(
            url=f"http://{host}:{settings.port}",
            data=settings.database_url or settings.data_dir,
            broker="in-process" if settings.broker_is_memory else settings.broker_url,
            mail=_redacted(settings.smtp_url) if settings.smtp_url
            else f"the Maildir {Path(settings.data_dir) / 'mail'} (no LABSHARE_SMTP_URL)",
            users=", ".join(demo.USERS),
        ),
        flush=True,
    )
    server.serve_forever()
    for t in threads:
        t.join(timeout=5)
    for rt in runtimes.values():
        rt.db.dispose()
    print("labshare stopped.", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m services``."""
    parser = argparse.ArgumentParser(prog="python -m services")
    parser.add_argument("command", choices=["run", "migrate", "seed"])
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings)
    if args.command == "migrate":
        migrate_all(settings)
    elif args.command == "seed":
        migrate_all(settings)
        print(f"seeded {demo.seed(build_inventory(settings))} labs")
    else:
        run(settings, args.host)


if __name__ == "__main__":
    main()
