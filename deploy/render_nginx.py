"""Render the gateway's nginx.conf from the template deploy/nginx.conf.

In docker-compose.yml the nginx image fills in the ``${GATEWAY_*}`` placeholders
itself (its envsubst step); this script does the same outside containers, so the
very same file fronts services running on 127.0.0.1 ports.

Command line (values: option > ``GATEWAY_*`` environment variable > default)::

    # services on 127.0.0.1:8001 (inventory), :8002 (booking), :8003 (notify), the web
    # app on :8004, gateway on 127.0.0.1:8080, state under ./var/gateway
    python deploy/render_nginx.py --local --out var/gateway/nginx.conf
    nginx -p var/gateway -c nginx.conf -e stderr -g 'daemon off;'

    # or render and start nginx in the foreground in one go
    python deploy/render_nginx.py --local --listen 127.0.0.1:9080 --booking 127.0.0.1:9002 --run

    # several replicas of a service: a comma-separated list, one ``server`` line each
    python deploy/render_nginx.py --local --booking 127.0.0.1:8012,127.0.0.1:8022 --out var/gateway/nginx.conf

From Python::

    from render_nginx import write_local_config, nginx_command
    conf = write_local_config("var/gateway", listen="127.0.0.1:8080", inventory="127.0.0.1:8001",
                              booking="127.0.0.1:8002", notify="127.0.0.1:8003", web="127.0.0.1:8004")
    subprocess.Popen(nginx_command(conf))
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf"

#: Placeholders and their values in docker-compose.yml.
DEFAULTS: dict[str, str] = {
    "GATEWAY_LISTEN": "8080",
    "GATEWAY_INVENTORY_UPSTREAM": "inventory:8000",
    "GATEWAY_BOOKING_UPSTREAM": "booking:8000",
    "GATEWAY_NOTIFY_UPSTREAM": "notify:8000",
    "GATEWAY_WEB_UPSTREAM": "web:8000",
    "GATEWAY_STATE_DIR": "/var/cache/nginx",
    "GATEWAY_API_RATE": "50r/s",
    "GATEWAY_FEEDS_RATE": "100r/s",
    # the web app's containers: their X-Forwarded-For names the person (a name nginx resolves when it starts)
    "GATEWAY_TRUSTED_PROXIES": "web",
}

#: Values for services started on this machine's loopback ports (``--local``).
LOCAL: dict[str, str] = {
    "GATEWAY_LISTEN": "127.0.0.1:8080",
    "GATEWAY_INVENTORY_UPSTREAM": "127.0.0.1:8001",
    "GATEWAY_BOOKING_UPSTREAM": "127.0.0.1:8002",
    "GATEWAY_NOTIFY_UPSTREAM": "127.0.0.1:8003",
    "GATEWAY_WEB_UPSTREAM": "127.0.0.1:8004",
    "GATEWAY_STATE_DIR": "var/gateway",
    "GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
}

PLACEHOLDER = re.compile(r"\$\{(GATEWAY_[A-Z0-9_]+)\}")

#: Settings that may list several servers, comma-separated ("10.0.0.5:8000,10.0.0.6:8000"): the
#: template's ``server ${...};`` line is repeated once per server (nginx balances round-robin and,
#: after a failed connection, leaves a server out for a while).
UPSTREAMS = ("GATEWAY_INVENTORY_UPSTREAM", "GATEWAY_BOOKING_UPSTREAM", "GATEWAY_NOTIFY_UPSTREAM",
             "GATEWAY_WEB_UPSTREAM")

#: Settings that are comma-separated lists, and how their template line repeats for each item. (The nginx
#: image's envsubst cannot repeat a line: in docker-compose.yml and on Kubernetes they take one item.)
LISTS: dict[str, str] = {
    **dict.fromkeys(UPSTREAMS, ";\n        server "),
    "GATEWAY_TRUSTED_PROXIES": ";\n    set_real_ip_from ",
}

_SERVER = re.compile(r"^(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):[0-9]{1,5}$")
_CHECKS: dict[str, re.Pattern[str]] = {
    "GATEWAY_LISTEN": re.compile(r"^(?:[A-Za-z0-9.\-]+:|\[[0-9A-Fa-f:]+\]:)?[0-9]{1,5}$"),
    **dict.fromkeys(UPSTREAMS, _SERVER),
    "GATEWAY_STATE_DIR": re.compile(r"^/[^\s;{}'\"$]*$"),
    "GATEWAY_API_RATE": re.compile(r"^[0-9]+r/[sm]$"),
    "GATEWAY_FEEDS_RATE": re.compile(r"^[0-9]+r/[sm]$"),
    # an address, a network (address/bits) or a host name
    "GATEWAY_TRUSTED_PROXIES": re.compile(r"^(?:[0-9A-Fa-f:.]+(?:/[0-9]{1,3})?|[A-Za-z0-9][A-Za-z0-9.\-]*)$"),
}


def placeholders(template: str | None = None) -> set[str]:
    """The ``${GATEWAY_*}`` names used by the template."""
    text = TEMPLATE.read_text(encoding="utf-8") if template is None else template
    return set(PLACEHOLDER.findall(text))


def resolve(values: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Defaults, overridden by ``GATEWAY_*`` variables in ``env``, overridden by ``values``; validated."""
    env = os.environ if env is None else env
    out = dict(DEFAULTS)
    out.update({k: v for k, v in env.items() if k in DEFAULTS and v})
    out.update({k: v for k, v in (values or {}).items() if v is not None})
    unknown = set(out) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown gateway setting(s): {', '.join(sorted(unknown))}")
    if not out["GATEWAY_STATE_DIR"].startswith("/"):
        out["GATEWAY_STATE_DIR"] = str(Path(out["GATEWAY_STATE_DIR"]).resolve())
    for key, value in out.items():
        items = value.split(",") if key in LISTS else [value]
        if not all(_CHECKS[key].match(item) for item in items):
            raise ValueError(f"{key}={value!r} is not a valid value")
    return out


def _fill(resolved: Mapping[str, str], name: str) -> str:
    """A placeholder's text; a list (upstream servers, trusted proxies) becomes one line each."""
    value = resolved[name]
    if name in LISTS:
        return LISTS[name].join(value.split(","))
    return value


def render(values: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> str:
    """The nginx.conf text with every placeholder filled in (see :func:`resolve`)."""
    resolved = resolve(values, env)
    text = TEMPLATE.read_text(encoding="utf-8")
    missing = placeholders(text) - set(resolved)
    if missing:
        raise ValueError(f"template uses unknown placeholder(s): {', '.join(sorted(missing))}")
    return PLACEHOLDER.sub(lambda m: _fill(resolved, m.group(1)), text)


def _servers(value: str | Sequence[str]) -> str:
    return value if isinstance(value, str) else ",".join(value)


def write_local_config(
    state_dir: str | os.PathLike[str] = "var/gateway",
    *,
    listen: str = LOCAL["GATEWAY_LISTEN"],
    inventory: str | Sequence[str] = LOCAL["GATEWAY_INVENTORY_UPSTREAM"],
    booking: str | Sequence[str] = LOCAL["GATEWAY_BOOKING_UPSTREAM"],
    notify: str | Sequence[str] = LOCAL["GATEWAY_NOTIFY_UPSTREAM"],
    web: str | Sequence[str] = LOCAL["GATEWAY_WEB_UPSTREAM"],
    api_rate: str | None = None,
    feeds_rate: str | None = None,
    trusted_proxies: str | Sequence[str] = LOCAL["GATEWAY_TRUSTED_PROXIES"],
    env: Mapping[str, str] | None = None,
) -> Path:
    """Write ``<state_dir>/nginx.conf`` for services and the web app on loopback ports; returns its path.

    ``state_dir`` is created and also holds nginx's pid, temp files and feed cache. An upstream may
    be a list of ``host:port`` (or a comma-separated string): one ``server`` line each. The web app
    calls the API from ``trusted_proxies`` (127.0.0.1), so its X-Forwarded-For is believed there.
    """
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    values = {
        "GATEWAY_LISTEN": listen,
        "GATEWAY_INVENTORY_UPSTREAM": _servers(inventory),
        "GATEWAY_BOOKING_UPSTREAM": _servers(booking),
        "GATEWAY_NOTIFY_UPSTREAM": _servers(notify),
        "GATEWAY_WEB_UPSTREAM": _servers(web),
        "GATEWAY_STATE_DIR": str(state),
        "GATEWAY_API_RATE": api_rate,
        "GATEWAY_FEEDS_RATE": feeds_rate,
        "GATEWAY_TRUSTED_PROXIES": _servers(trusted_proxies),
    }
    conf = state / "nginx.conf"
    conf.write_text(render(values, env=env if env is not None else {}), encoding="utf-8")
    return conf


def nginx_command(conf: str | os.PathLike[str], nginx: str | None = None, test: bool = False) -> list[str]:
    """argv that runs nginx in the foreground on ``conf`` (prefix = its directory).

    When run as root the workers stay root too, since the state directory is usually
    private to the user who created it.
    """
    conf = Path(conf).resolve()
    binary = nginx or shutil.which("nginx") or "nginx"
    directives = "daemon off;"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        directives += " user root;"
    argv = [binary, "-p", str(conf.parent), "-c", str(conf), "-e", "stderr", "-g", directives]
    if test:
        argv.append("-t")
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the labshare gateway's nginx.conf.")
    parser.add_argument("--local", action="store_true", help="start from the 127.0.0.1 values instead of compose's")
    parser.add_argument("--listen", help="port or address:port (GATEWAY_LISTEN)")
    parser.add_argument("--inventory", help="host:port[,host:port...] of inventory (GATEWAY_INVENTORY_UPSTREAM)")
    parser.add_argument("--booking", help="host:port[,host:port...] of booking (GATEWAY_BOOKING_UPSTREAM)")
    parser.add_argument("--notify", help="host:port[,host:port...] of notify (GATEWAY_NOTIFY_UPSTREAM)")
    parser.add_argument("--web", help="host:port[,host:port...] of the web app (GATEWAY_WEB_UPSTREAM)")
    parser.add_argument("--state-dir", help="pid, temp and cache directory (GATEWAY_STATE_DIR)")
    parser.add_argument("--api-rate", help="e.g. 50r/s (GATEWAY_API_RATE)")
    parser.add_argument("--feeds-rate", help="e.g. 100r/s (GATEWAY_FEEDS_RATE)")
    parser.add_argument("--trusted-proxies",
                        help="address, network or host name[,...] whose X-Forwarded-For is believed "
                             "(GATEWAY_TRUSTED_PROXIES)")
    parser.add_argument("--out", help="file to write (default: standard output; with --run: <state-dir>/nginx.conf)")
    parser.add_argument("--run", action="store_true", help="then exec nginx in the foreground on the written file")
    args = parser.parse_args(argv)

    base = dict(LOCAL) if args.local else {}
    given = {
        "GATEWAY_LISTEN": args.listen,
        "GATEWAY_INVENTORY_UPSTREAM": args.inventory,
        "GATEWAY_BOOKING_UPSTREAM": args.booking,
        "GATEWAY_NOTIFY_UPSTREAM": args.notify,
        "GATEWAY_WEB_UPSTREAM": args.web,
        "GATEWAY_STATE_DIR": args.state_dir,
        "GATEWAY_API_RATE": args.api_rate,
        "GATEWAY_FEEDS_RATE": args.feeds_rate,
        "GATEWAY_TRUSTED_PROXIES": args.trusted_proxies,
    }
    env = {k: v for k, v in os.environ.items() if k in DEFAULTS and v}
    values = {**base, **env, **{k: v for k, v in given.items() if v}}
    try:
        resolved = resolve(values, env={})
        text = render(resolved, env={})
    except ValueError as exc:
        parser.error(str(exc))
    out = args.out
    if args.run and not out:
        out = str(Path(resolved["GATEWAY_STATE_DIR"]) / "nginx.conf")
    if not out or out == "-":
        sys.stdout.write(text)
        return 0
    Path(resolved["GATEWAY_STATE_DIR"]).mkdir(parents=True, exist_ok=True)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if args.run:
        cmd = nginx_command(path)
        os.execvp(cmd[0], cmd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
