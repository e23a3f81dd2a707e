"""Gunicorn settings for every labshare API process.

    gunicorn -c deploy/gunicorn.conf.py 'services.booking.app:create_app()'

Environment (all optional):

- ``LABSHARE_BIND``: address to listen on (``0.0.0.0:8000``)
- ``LABSHARE_WORKERS``: worker processes (default ``2 × CPUs + 1``, at most 12; CPUs
  as the process may use them: affinity and the container's cgroup CPU quota)
- ``LABSHARE_WORKER_CLASS``: ``sync`` (default) or any gunicorn worker class
- ``LABSHARE_THREADS``: threads per worker (1; more turns sync into gthread)
- ``LABSHARE_TIMEOUT`` (30), ``LABSHARE_GRACEFUL_TIMEOUT`` (30), ``LABSHARE_KEEPALIVE`` (5) in seconds
- ``LABSHARE_MAX_REQUESTS`` (100000) and ``LABSHARE_MAX_REQUESTS_JITTER`` (10000): recycle workers
  (a guard against leaks; a worker's RSS stays flat over tens of thousands of bookings, and each
  restart leaves a worker's share of the load to the others for the second a new one takes to start)
- ``LABSHARE_LOG_LEVEL``: ``INFO`` by default
- ``LABSHARE_FORWARDED_ALLOW_IPS``: proxies trusted for X-Forwarded-* (``127.0.0.1,::1``)
- ``PROMETHEUS_MULTIPROC_DIR``: a directory for prometheus-client's multiprocess mode, so that
  ``/metrics`` adds up the counters of every worker; emptied when gunicorn starts

The access log goes to standard output, one JSON object per line; gunicorn's own
messages go to standard error.
"""

from __future__ import annotations

import datetime as _dt
import json as _json
import os as _os
import re as _re
from pathlib import Path as _Path

from gunicorn import glogging as _glogging


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = _os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from exc
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 quota/period), None when unlimited."""
    try:
        quota, period = _Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(_Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(_Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """CPUs this process may use (at least 1)."""
    try:
        cpus = len(_os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = _os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, int(limit + 0.999)))
    return max(1, cpus)


def default_workers() -> int:
    """``2 × CPUs + 1``, at most 12 (each worker holds its own database pool)."""
    return min(2 * available_cpus() + 1, 12)


# ---- server socket ---------------------------------------------------------------
bind = [_os.environ.get("LABSHARE_BIND", "").strip() or "0.0.0.0:8000"]
backlog = 2048

# ---- workers -----------------------------------------------------------------------
workers = _env_int("LABSHARE_WORKERS", default_workers(), minimum=1)
worker_class = _os.environ.get("LABSHARE_WORKER_CLASS", "").strip() or "sync"
threads = _env_int("LABSHARE_THREADS", 1, minimum=1)
timeout = _env_int("LABSHARE_TIMEOUT", 30, minimum=1)
graceful_timeout = _env_int("LABSHARE_GRACEFUL_TIMEOUT", 30, minimum=1)
keepalive = _env_int("LABSHARE_KEEPALIVE", 5, minimum=0)
max_requests = _env_int("LABSHARE_MAX_REQUESTS", 100_000, minimum=0)
max_requests_jitter = _env_int("LABSHARE_MAX_REQUESTS_JITTER", 10_000, minimum=0)
# The app opens its own pools in each worker: never import it in the master.
preload_app = False
# Heartbeat files on tmpfs where there is one (a container's disk can stall).
worker_tmp_dir = "/dev/shm" if _os.path.isdir("/dev/shm") and _os.access("/dev/shm", _os.W_OK) else None
# No control socket: several services may run side by side as one user.
control_socket_disable = True

# ---- requests ------------------------------------------------------------------------
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384
forwarded_allow_ips = _os.environ.get("LABSHARE_FORWARDED_ALLOW_IPS", "").strip() or "127.0.0.1,::1"
proc_name = "labshare"

# ---- logging -------------------------------------------------------------------------
loglevel = (_os.environ.get("LABSHARE_LOG_LEVEL", "").strip() or "info").lower()
accesslog = "-"
errorlog = "-"
# One JSON object per request. Every string atom is JSON-escaped by JsonAccessLogger.
access_log_format = (
    '{"time":"%(t)s","level":"info","logger":"gunicorn.access","remote_addr":"%(h)s",'
    '"method":"%(m)s","path":"%(U)s","query":"%(q)s","protocol":"%(H)s","status":%(s)s,'
    '"bytes":%(B)s,"duration_ms":%(M)s,"request_id":"%({x-request-id}i)s",'
    '"user_agent":"%(a)s","referer":"%(f)s","pid":%(p)s}'
)


#: A string JSON takes as it is: printable ASCII without quote or backslash (most atoms of most requests).
_PLAIN = _re.compile(r'[ !#-\[\]-~]*').fullmatch


class JsonAtoms(_glogging.SafeAtoms):
    """gunicorn's atoms, with string values escaped for use inside JSON strings."""

    def __init__(self, atoms: dict) -> None:
        dict.__init__(self)
        for key, value in atoms.items():
            if isinstance(value, str) and not _PLAIN(value):
                value = _json.dumps(value)[1:-1]
            self[key] = value


class JsonAccessLogger(_glogging.Logger):
    """Access log lines that are valid JSON whatever the client sent."""

    atoms_wrapper_class = JsonAtoms

    def now(self) -> str:
        return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def atoms(self, resp, req, environ, request_time) -> dict:
        """The atoms ``access_log_format`` uses, and only those: gunicorn's own method adds one per
        request header, response header and WSGI environ entry, each then escaped, on every request."""
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        request_id = environ.get("HTTP_X_REQUEST_ID")
        if not request_id:  # no id came in: log the one the app made up and returned
            request_id = next((v for k, v in resp.headers if k.lower() == "x-request-id"), "-")
        return {
            "t": self.now(),
            "h": environ.get("REMOTE_ADDR", "-"),
            "m": environ.get("REQUEST_METHOD"),
            "U": environ.get("PATH_INFO"),
            "q": environ.get("QUERY_STRING"),
            "H": environ.get("SERVER_PROTOCOL"),
            "s": status if str(status).isdigit() else 0,
            "B": getattr(resp, "sent", None) or 0,
            "M": request_time.seconds * 1000 + request_time.microseconds // 1000,
            "{x-request-id}i": request_id,
            "a": environ.get("HTTP_USER_AGENT", "-"),
            "f": environ.get("HTTP_REFERER", "-"),
            "p": _os.getpid(),
        }


logger_class = JsonAccessLogger


# ---- hooks -----------------------------------------------------------------------------
def on_starting(server) -> None:
    """In multiprocess metrics mode, start from an empty directory: an earlier run's counters must not count."""
    directory = _os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if directory:
        path = _Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()


def child_exit(server, worker) -> None:
    """Tell prometheus-client that a worker is gone (its live gauges drop out; its counters stay)."""
    if _os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_fork(server, worker) -> None:
    """Only logs: the app opens its own database and broker pools lazily in each worker."""
    server.log.info("worker %s started", worker.pid)


def post_worker_init(worker) -> None:
    """Freeze what start-up left on the heap, so the collector stops walking it.

    A worker's imports and app make a few hundred thousand long-lived objects;
    without this every full collection walks them all and stalls the request in
    hand (measured: ~60 ms per full collection under load, ~1 ms frozen).
    """
    import gc

    gc.collect()
    gc.freeze()


def worker_abort(worker) -> None:
    """A worker killed by the timeout: say so (the request it served is lost)."""
    worker.log.error("worker %s aborted after %ss without finishing a request", worker.pid, timeout)
