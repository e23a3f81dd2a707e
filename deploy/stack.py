"""Every labshare component as its own process on this machine, several replicas each, behind nginx.

``make stack`` (or ``python deploy/stack.py``) starts what docker-compose.yml or the
Kubernetes manifests run, with the same commands, against this machine's PostgreSQL
and RabbitMQ:

- ``python -m services migrate`` once (and, in development mode, ``python -m services seed``);
- per service (inventory, booking, notify) N API replicas, each its own gunicorn
  (``gunicorn -c deploy/gunicorn.conf.py 'services.<name>.app:create_app()'``) on its
  own port, and N outbox relays (``python -m services.<name> relay``);
- N booking consumers and N notify workers (``python -m services.<name> consume``);
- the web app under gunicorn;
- nginx in front, configured from deploy/nginx.conf by deploy/render_nginx.py, each
  upstream listing every replica of its service, the web app's upstream the web app,
  and 127.0.0.1 (where the web app calls the API from) its trusted proxy: each user of
  the web app has a rate-limit allowance of their own, as in production.

Relays and consumers serve their metrics with ``--metrics-port``, as the Kubernetes
probes use them. Ctrl-C stops everything (SIGTERM, then SIGKILL after a grace period);
a component that dies meanwhile is started again, as a container runtime would.

Configuration (options override the environment):

- ``LABSHARE_DATABASE_URL``: default ``postgresql://postgres@127.0.0.1:5432/labshare``,
  created when missing;
- ``LABSHARE_BROKER_URL``: default ``amqp://guest:guest@127.0.0.1:5672/%2F``;
- ``LABSHARE_PORT``: the gateway's port (8080); ``--replicas`` (2), ``--workers`` (2
  gunicorn workers per replica), ``--state-dir`` (``var/stack``: logs, nginx, mail).

Development mode is on (as in ``make run``): tokens come from ``POST /api/v1/dev/token``.
The production gateway never serves that path, so this stack's nginx adds one
development route to the rendered configuration: ``/api/v1/dev/`` to inventory. All
else, the web app's pages included, is deploy/nginx.conf as it is.

From Python (the end-to-end tests and bench/stack.py do this)::

    stack = Stack(database_url=..., broker_url=..., state_dir=...)
    stack.start()                  # migrate, start everything, wait until healthy
    stack.kill("booking-api-1")    # SIGKILL a replica with its workers
    stack.restart("booking-api-1") # out of nginx, graceful stop, start, healthy, back in
    stack.rolling_restart()        # replica 1 of everything, then replica 2, the web app, nginx
    stack.stop()

Standard library only, so that it runs before anything is installed but the project.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SERVICES = ("inventory", "booking", "notify")
CONSUMERS = ("booking", "notify")
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/labshare"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Seconds a component may take to stop after SIGTERM before it is killed (gunicorn's graceful timeout is 30).
STOP_GRACE = 35.0
STARTUP_TIMEOUT = 60.0

# Creates the database named in the URL when it does not exist yet (run with the project's Python).
_ENSURE_DATABASE = r"""
import sys
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

url = sys.argv[1]
name = conninfo_to_dict(url).get("dbname")
try:
    psycopg.connect(url, connect_timeout=5).close()
except psycopg.OperationalError as exc:
    if not name or "does not exist" not in str(exc):
        raise
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    print(f"created database {name}")
"""


def _load_render_nginx() -> ModuleType:
    spec = importlib.util.spec_from_file_location("labshare_render_nginx", DEPLOY / "render_nginx.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_nginx = _load_render_nginx()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (our own loopback URLs)
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _program(name: str) -> list[str]:
    """A console script of this interpreter's environment (gunicorn), else ``python -m name``."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", name]


@dataclass
class Component:
    """One process of the stack: what it runs, where it answers, and its current process."""

    name: str
    #: ``api``, ``relay``, ``consumer``, ``web`` or ``gateway``.
    kind: str
    service: str
    argv: list[str]
    env: dict[str, str]
    #: Its HTTP port (APIs, web, gateway) or metrics port (relays, consumers).
    port: int
    #: Where it answers 200 when ready.
    ready_path: str = "/healthz"
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    expected_exit: bool = False
    restarts: int = 0
    started_at: float = 0.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return self.alive() and http_status(f"http://{self.address}{self.ready_path}") == 200

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the process and everything it started (gunicorn's workers).

        Only while the leader is not reaped, so the group id cannot have been reused.
        """
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)


@dataclass
class Stack:
    """The whole system as separate processes on 127.0.0.1 (see the module's documentation)."""

    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = DEFAULT_BROKER_URL
    state_dir: Path = ROOT / "var" / "stack"
    port: int | None = None
    #: Replicas of every API, relay and consumer; ``replicas_of`` overrides it per component kind,
    #: e.g. ``{"booking-api": 1}``.
    replicas: int = 2
    replicas_of: Mapping[str, int] = field(default_factory=dict)
    workers: int = 2
    dev_mode: bool = True
    web: bool = True
    #: Gateway rate limits per client address (the production default of 50 r/s would throttle a load test).
    api_rate: str = "5000r/s"
    feeds_rate: str = "5000r/s"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    nginx: str | None = None
    components: dict[str, Component] = field(default_factory=dict, init=False)
    #: Replicas taken out of the gateway (while they restart).
    drained: set[str] = field(default_factory=set, init=False)
    #: Seconds each component's last restart took.
    restart_seconds: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.port = self.port or free_port()
        self.log_dir = self.state_dir / "logs"
        self.url = f"http://127.0.0.1:{self.port}"

    # ---- what runs ------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        """The environment of every labshare process: the caller's minus LABSHARE_*, plus the stack's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABSHARE_", "PROMETHEUS_"))}
        env.update(
            PYTHONUNBUFFERED="1",
            LABSHARE_DATABASE_URL=self.database_url,
            LABSHARE_BROKER_URL=self.broker_url,
            LABSHARE_PUBLIC_URL=self.url,
            LABSHARE_DATA_DIR=str(self.state_dir / "data"),
            LABSHARE_DEV_MODE="1" if self.dev_mode else "0",
        )
        env.update(self.extra_env)
        return env

    def count(self, kind: str) -> int:
        return self.replicas_of.get(kind, self.replicas)

    def plan(self) -> list[Component]:
        """Every component, in start order (relays and consumers, APIs, web, gateway)."""
        python, gunicorn = [sys.executable], _program("gunicorn")
        conf = str(DEPLOY / "gunicorn.conf.py")
        env = self.base_env()
        out: list[Component] = []
        for service in SERVICES:
            for i in range(1, self.count(f"{service}-relay") + 1):
                port = free_port()
                out.append(Component(f"{service}-relay-{i}", "relay", service,
                                     [*python, "-m", f"services.{service}", "relay", "--metrics-port", str(port),
                                      "--metrics-host", "127.0.0.1"], dict(env), port, "/metrics"))
        for service in CONSUMERS:
            for i in range(1, self.count(f"{service}-consumer") + 1):
                port = free_port()
                out.append(Component(f"{service}-consumer-{i}", "consumer", service,
                                     [*python, "-m", f"services.{service}", "consume", "--metrics-port", str(port),
                                      "--metrics-host", "127.0.0.1"], dict(env), port, "/metrics"))
        for service in SERVICES:
            for i in range(1, self.count(f"{service}-api") + 1):
                name, port = f"{service}-api-{i}", free_port()
                api_env = dict(env, LABSHARE_BIND=f"127.0.0.1:{port}", LABSHARE_WORKERS=str(self.workers),
                               PROMETHEUS_MULTIPROC_DIR=str(self.state_dir / "metrics" / name))
                out.append(Component(name, "api", service,
                                     [*gunicorn, "-c", conf, f"services.{service}.app:create_app()"], api_env, port))
        if self.web:
            port = free_port()
            web_env = dict(env, LABSHARE_BIND=f"127.0.0.1:{port}", LABSHARE_WORKERS=str(self.workers),
                           LABSHARE_API_URL=self.url)
            out.append(Component("web", "web", "web", [*gunicorn, "-c", conf, "services.web.app:create_app()"],
                                 web_env, port, "/static/app.css"))
        return out

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self, seed: bool = False, timeout: float = STARTUP_TIMEOUT) -> None:
        """Create the database if needed, migrate, start every component and wait until all are ready."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.database_url.startswith("postgresql"):
                self._run_once("create-database", [sys.executable, "-c", _ENSURE_DATABASE, self.database_url])
            self._run_once("migrate", [sys.executable, "-m", "services", "migrate"])
            if seed:
                self._run_once("seed", [sys.executable, "-m", "services", "seed"])
            for component in self.plan():
                self.components[component.name] = component
                self._spawn(component)
            self.wait_ready(list(self.components), timeout)
            self._start_gateway()
            self.wait_ready(["gateway"], timeout)
        except BaseException:
            self.stop()
            raise

    def _run_once(self, name: str, argv: list[str]) -> None:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            code = subprocess.run(argv, cwd=ROOT, env=self.base_env(), stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=300).returncode
        if code != 0:
            raise RuntimeError(f"{name} failed with exit code {code}:\n{log.read_text(errors='replace')[-4000:]}")

    def _spawn(self, component: Component) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        component.log_path = self.log_dir / f"{component.name}.log"
        with component.log_path.open("ab") as out:
            component.proc = subprocess.Popen(component.argv, cwd=ROOT, env=component.env, stdout=out,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True)
        component.expected_exit = False
        component.started_at = time.monotonic()

    def replicas_in_rotation(self, service: str) -> list[str]:
        names = [c.name for c in self.components.values() if c.kind == "api" and c.service == service]
        return [n for n in names if n not in self.drained] or names[:1]

    def gateway_config(self) -> Path:
        """Render deploy/nginx.conf for the replicas in rotation and the web app, plus the development route.

        Without the web app (``web=False``) its upstream is a port nothing listens on: pages answer 502.
        """
        upstreams = {s: [self.components[n].address for n in self.replicas_in_rotation(s)] for s in SERVICES}
        web = self.components.get("web")
        gateway_dir = self.state_dir / "gateway"
        conf = render_nginx.write_local_config(
            gateway_dir, listen=f"127.0.0.1:{self.port}", inventory=upstreams["inventory"],
            booking=upstreams["booking"], notify=upstreams["notify"],
            web=web.address if web else f"127.0.0.1:{free_port()}", api_rate=self.api_rate,
            feeds_rate=self.feeds_rate, trusted_proxies="127.0.0.1",
        )
        if self.dev_mode:
            conf.write_text(development_routes(conf.read_text(encoding="utf-8")), encoding="utf-8")
        return conf

    def _start_gateway(self) -> None:
        nginx = self.nginx or shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "")
        if not nginx:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        conf = self.gateway_config()
        check = subprocess.run(render_nginx.nginx_command(conf, nginx=nginx, test=True), capture_output=True,
                               text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refuses the configuration:\n{check.stderr}")
        gateway = Component("gateway", "gateway", "gateway", render_nginx.nginx_command(conf, nginx=nginx),
                            self.base_env(), self.port)
        self.components["gateway"] = gateway
        self._spawn(gateway)

    def reload_gateway(self) -> None:
        """Render the configuration again and let nginx switch to it (SIGHUP; in-flight requests finish)."""
        self.gateway_config()
        gateway = self.components["gateway"]
        if gateway.alive():
            gateway.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            time.sleep(0.5)  # new workers take over; old ones finish what they have

    def wait_ready(self, names: Iterable[str], timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until each named component answers 200 on its ready path; raise with its log otherwise."""
        pending = list(names)
        deadline = time.monotonic() + timeout
        while pending:
            for name in list(pending):
                component = self.components[name]
                if not component.alive():
                    raise RuntimeError(f"{name} exited with {component.proc.returncode}:\n{self.tail(name)}")  # type: ignore[union-attr]
                if component.ready():
                    pending.remove(name)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f} s: {', '.join(pending)}\n"
                                   + "\n".join(self.tail(n) for n in pending))
            if pending:
                time.sleep(0.1)

    def tail(self, name: str, chars: int = 3000) -> str:
        component = self.components[name]
        text = component.log_path.read_text(errors="replace") if component.log_path else ""
        return f"--- {name} ({' '.join(component.argv)}):\n...{text[-chars:]}"

    def terminate(self, name: str, timeout: float = STOP_GRACE) -> int | None:
        """Stop one component as a container runtime does: SIGTERM, then SIGKILL after ``timeout``."""
        component = self.components[name]
        if component.proc is None:
            return None
        component.expected_exit = True
        if component.alive():
            component.proc.send_signal(signal.SIGQUIT if component.kind == "gateway" else signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.proc.wait(timeout)
        component.signal_group(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(component.proc.pid, signal.SIGKILL)  # leftover workers whose leader already exited
        component.proc.wait(5)
        return component.proc.returncode

    def kill(self, name: str) -> None:
        """SIGKILL a component and every process of its group, as when its container or node dies."""
        component = self.components[name]
        component.expected_exit = True
        assert component.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(component.proc.pid, signal.SIGKILL)
        component.proc.wait(10)

    def start_again(self, name: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Start a stopped component with the same command and wait until it is ready."""
        component = self.components[name]
        assert not component.alive(), f"{name} still runs"
        component.restarts += 1
        self._spawn(component)
        self.wait_ready([name], timeout)

    def restart(self, *names: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Restart components together without losing a request.

        API replicas first leave the gateway (nginx reloads without them, as a pod leaves
        its Service's endpoints before it is stopped), then stop gracefully, start, and
        rejoin once their /healthz answers. Relays, consumers and the web app stop
        gracefully and start again. The gateway reloads its configuration (nginx's own
        graceful restart). Several names restart side by side, as Deployments roll at once.
        """
        started = time.monotonic()
        components = [self.components[n] for n in names]
        apis = [c.name for c in components if c.kind == "api"]
        if apis:
            self.drained.update(apis)
            self.reload_gateway()
        processes = [c for c in components if c.kind != "gateway"]
        threads = [threading.Thread(target=self.terminate, args=(c.name,)) for c in processes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in processes:
            c.restarts += 1
            self._spawn(c)
        try:
            self.wait_ready([c.name for c in processes], timeout)
        finally:
            self.drained.difference_update(apis)
        if apis or any(c.kind == "gateway" for c in components):
            self.reload_gateway()
        for name in names:
            self.restart_seconds[name] = time.monotonic() - started

    def rolling_restart(self) -> list[list[str]]:
        """Restart every component, one replica of each at a time; returns the waves.

        Wave *i* restarts replica *i* of every API, relay and consumer together (so one
        replica of each keeps serving); then the web app, then the gateway.
        """
        waves: dict[int, list[str]] = {}
        for c in self.components.values():
            if c.kind in ("api", "relay", "consumer"):
                waves.setdefault(int(c.name.rsplit("-", 1)[1]), []).append(c.name)
        order = [waves[i] for i in sorted(waves)]
        order += [[n] for n in ("web", "gateway") if n in self.components]
        for wave in order:
            self.restart(*wave)
        return order

    def unexpected_exits(self) -> list[str]:
        return [c.name for c in self.components.values()
                if c.proc is not None and not c.alive() and not c.expected_exit]

    def stop(self) -> None:
        """Stop everything: the gateway first, then the web app and APIs, then consumers and relays."""
        order = ["gateway", "web"] + [n for n in reversed(list(self.components)) if n not in ("gateway", "web")]
        procs = [self.components[n] for n in order if n in self.components]
        for component in procs:
            component.expected_exit = True
            if component.alive():
                component.proc.send_signal(  # type: ignore[union-attr]
                    signal.SIGQUIT if component.kind == "gateway" else signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for component in procs:
            if component.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.proc.wait(max(0.1, deadline - time.monotonic()))
            component.signal_group(signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(component.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.proc.wait(5)

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        lines = [f"{'component':<20} {'pid':>7}  address", f"{'-' * 20} {'-' * 7}  {'-' * 30}"]
        for c in self.components.values():
            what = {"relay": "metrics", "consumer": "metrics"}.get(c.kind, "http")
            lines.append(f"{c.name:<20} {c.proc.pid if c.proc else '-':>7}  {what} http://{c.address}")
        return "\n".join(lines)


# ---- the development route of the stack's gateway -----------------------------------------------

_DEV_PATHS = re.compile(r"\n(?P<indent>[ \t]*)location \^~ /api/v1/dev/ \{\n.*?\n(?P=indent)\}\n", re.S)


def development_routes(conf: str) -> str:
    """The rendered production configuration with ``/api/v1/dev/`` (the token endpoint) sent to inventory."""
    match = _DEV_PATHS.search(conf)
    if not match:
        raise ValueError("deploy/nginx.conf has no 'location ^~ /api/v1/dev/' block any more")
    i = match.group("indent")
    return (conf[: match.start()] + f"\n{i}# development stack: development tokens (dev mode only)\n"
            f"{i}location ^~ /api/v1/dev/ {{\n{i}    proxy_pass http://inventory;\n{i}}}\n" + conf[match.end():])


# ---- command line ---------------------------------------------------------------------------------------

BANNER = """
labshare stack at {url}  (Ctrl-C stops it)

  {replicas} replicas of each API (gunicorn, {workers} workers each), {replicas} relays per service,
  {replicas} booking consumers, {replicas} notify workers, the web app and nginx in front.

{table}

  Logs:     {logs}/<component>.log
  Database: {database}
  Broker:   {broker}

  Open {url}/ and log in as a demo user, or get a development token:
  curl -s -X POST {url}/api/v1/dev/token -H 'Content-Type: application/json' \\
       -d '{{"sub": "ada", "name": "Ada", "email": "ada@ntnu.example.org", "org": "ntnu", "roles": ["researcher"]}}'
"""


def _redacted(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every labshare component as separate processes behind nginx.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LABSHARE_PORT", "8080")),
                        help="the gateway's port (LABSHARE_PORT, 8080)")
    parser.add_argument("--replicas", type=int, default=2, help="replicas of each API, relay and consumer (2)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per API replica (2)")
    parser.add_argument("--state-dir", default=str(ROOT / "var" / "stack"), help="logs, nginx and mail (var/stack)")
    parser.add_argument("--database-url", default=os.environ.get("LABSHARE_DATABASE_URL") or DEFAULT_DATABASE_URL)
    parser.add_argument("--broker-url", default=os.environ.get("LABSHARE_BROKER_URL") or DEFAULT_BROKER_URL)
    parser.add_argument("--no-seed", action="store_true", help="do not load the demo data")
    args = parser.parse_args(argv)

    stack = Stack(database_url=args.database_url, broker_url=args.broker_url, state_dir=Path(args.state_dir),
                  port=args.port, replicas=args.replicas, workers=args.workers)
    stopping = False

    def _stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print(f"starting the labshare stack in {stack.state_dir} ...", flush=True)
    try:
        stack.start(seed=not args.no_seed)
    except RuntimeError as exc:
        print(f"the stack did not start: {exc}", file=sys.stderr)
        return 1
    print(BANNER.format(url=stack.url, replicas=args.replicas, workers=args.workers, table=stack.describe(),
                        logs=stack.log_dir, database=_redacted(args.database_url), broker=_redacted(args.broker_url)),
          flush=True)
    try:
        while not stopping:
            time.sleep(0.5)
            for name in stack.unexpected_exits():
                component = stack.components[name]
                print(f"{name} exited with {component.proc.returncode}; starting it again", flush=True)  # type: ignore[union-attr]
                time.sleep(min(10.0, 0.5 * 2 ** min(component.restarts, 5)))
                component.restarts += 1
                stack._spawn(component)
    finally:
        print("stopping ...", flush=True)
        stack.stop()
        print(json.dumps({"stopped": len(stack.components)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
