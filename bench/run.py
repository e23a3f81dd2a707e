"""labshare benchmarks (``make bench``): write-path throughput, worker memory and booking latency.

What it does, start to end (one and a half to three minutes, depending on the machine):

1. PostgreSQL + RabbitMQ: a fresh database and a unique exchange/queue prefix; migrate; one lab and
   50 always-open resources made through an in-process stack (which also lets booking's read model learn
   them), then closed. The booking API runs under gunicorn with the production settings
   (deploy/gunicorn.conf.py) and 2 sync workers, booking's outbox relay as a process of its own.
   After 3 s of booking to warm up (psycopg prepares a statement on its fifth use, the workers
   cache what they read of the read model), wrk (16 connections, 2 threads) makes non-conflicting
   bookings, then hits the same server's cheapest endpoint, so that the booking rate is also given
   as a share of it. Afterwards the outbox must drain and notify's queue (nobody consumes it during
   the bench) must hold two events (``booking.created`` + ``booking.confirmed``) per confirmed
   booking. The CPU time each process used during the booking run is reported too (from /proc),
   with what other work on the machine took.
2. Memory: VmRSS of each gunicorn worker once at least 10,000 bookings were made.
3. Sequential booking latency from one Python client: on embedded defaults (``python -m services run``,
   SQLite and the in-process broker) and on PostgreSQL + RabbitMQ (the gunicorn booking API).

Results go to bench/results.md (and stdout). Everything it starts or creates is removed at the end.
Environment: LABSHARE_BENCH_PG_URL (an admin URL, default postgresql://postgres@127.0.0.1:5432/postgres)
and LABSHARE_BENCH_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672//).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from kombu import Connection, Queue  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from shared.auth import issue_dev_token  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db import psycopg_url  # noqa: E402
from tests.infra import create_database, drop_database  # noqa: E402

PG_ADMIN_URL = os.environ.get("LABSHARE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("LABSHARE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
PYTHON = sys.executable
GUNICORN = str(Path(sys.executable).parent / "gunicorn")

RESOURCES = 50
WORKERS = 2
CONNECTIONS = 16
THREADS = 2
MIN_BOOKINGS = 10_000
WARMUP = 20
SPAN_DAYS = 100  # days of slots each wrk thread owns in one run (50 resources x 96 slots x 100 days)
MAIN_RUN_DAY = 30  # first day (from today) of the main wrk run
TOPUP_DAY = 430  # first day of the top-up runs (each takes THREADS * SPAN_DAYS days more)
SEQUENTIAL_DAY = 2500  # first day of the sequential client on PostgreSQL
ASYNC_DAY = 2600  # first day of the run with synchronous_commit off
WARMUP_DAY = 2900  # first day of the warm-up bookings before the main run
WARMUP_SECONDS = 3
HORIZON_DAYS = 3650

MANAGER = {"sub": "bench-manager", "name": "Bench Manager", "email": "bench-manager@example.org", "org": "ntnu",
           "roles": ["researcher", "manager"]}
BOOKER = {"sub": "bench-user", "name": "Bench User", "email": "bench-user@example.org", "org": "ntnu",
          "roles": ["researcher"]}


class BenchError(RuntimeError):
    """A step failed; the message says which and why."""


# -- small helpers ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def midnight_utc(days_ahead: int) -> int:
    """The epoch of UTC midnight ``days_ahead`` days from today."""
    today = dt.datetime.now(dt.UTC).date()
    return int(dt.datetime.combine(today + dt.timedelta(days=days_ahead), dt.time(), tzinfo=dt.UTC).timestamp())


def stamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if path.exists():
        return [int(x) for x in path.read_text().split()]
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every CPU, anything but idle and iowait)."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK


def pids_where(match) -> list[int]:
    """Processes whose command line (NUL bytes as spaces) satisfies ``match``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if match(cmdline):
                found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU time used by groups of processes (and by wrk, our child) between start() and stop()."""

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups  # name -> callable returning the pids of that group now
        self.before: dict[str, dict[int, float]] = {}

    def _sample(self) -> dict[str, dict[int, float]]:
        out = {}
        for name, pids in self.groups.items():
            out[name] = {pid: cpu for pid in pids() if (cpu := cpu_seconds(pid)) is not None}
        return out

    def start(self) -> None:
        self.before = self._sample()
        self.busy0, self.wall0 = machine_busy(), time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children0 = usage.ru_utime + usage.ru_stime

    def stop(self) -> dict[str, float]:
        after = self._sample()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = {name: sum(cpu - self.before[name].get(pid, 0.0) for pid, cpu in pids.items())
                for name, pids in after.items()}
        used["wrk"] = usage.ru_utime + usage.ru_stime - self.children0
        busy = machine_busy() - self.busy0
        used["everything else on the machine"] = max(0.0, busy - sum(used.values()))
        used["_machine_busy"] = busy
        used["_capacity"] = (time.monotonic() - self.wall0) * (os.cpu_count() or 1)
        return used


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def ms(us: float) -> str:
    return f"{us / 1000:.1f} ms"


def ms_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def child_env(**values: str) -> dict[str, str]:
    """The environment for a labshare process: ours without any LABSHARE_* variable, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABSHARE_")}
    env.update(values)
    return env


@dataclass
class Proc:
    """A process this bench started; stopped by its own id (and its own process group)."""

    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Bench:
    """State shared by the steps, and everything to clean up."""

    args: argparse.Namespace
    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    db_url: str | None = None
    exchange: str = ""
    prefix: str = ""

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        log = self.workdir / f"{name}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        handle.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc


def wait_http(proc: Proc, url: str, timeout: float = 60.0, headers: dict | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if requests.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise BenchError(f"{url} did not answer 200 within {timeout:.0f}s:\n{proc.tail()}")


# -- wrk ----------------------------------------------------------------------------------------------------


def wrk(url: str, script: str, seconds: float, script_args: list[str] | None = None) -> dict[str, Any]:
    """Run wrk with --latency and one of our Lua scripts; the figures its done() printed."""
    cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency",
           "--timeout", "10s", "-s", str(BENCH / script), url]
    if script_args:
        cmd += ["--", *script_args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    result = json.loads(line.split(" ", 1)[1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["text"] = "\n".join(x for x in out.stdout.splitlines() if not x.startswith("BENCH_RESULT "))
    return result


def book_with_wrk(base_url: str, token: str, resource_ids: list[str], first_day: int, seconds: float) -> dict:
    return wrk(base_url, "book.lua", seconds,
               [token, str(midnight_utc(first_day)), str(SPAN_DAYS), ",".join(resource_ids)])


# -- PostgreSQL and RabbitMQ ----------------------------------------------------------------------------------


def notify_queue(settings: Settings) -> Queue:
    """Notify's own queue, where every booking event must arrive (no notify consumer runs in the bench,
    so its depth counts them; a queue of the bench's own would add broker work production does not have)."""
    from shared.messaging import service_queue

    return service_queue(settings, "notify")


def queue_depth(queue: Queue) -> int:
    with Connection(AMQP_URL) as conn:
        _, count, _ = queue(conn.channel()).queue_declare(passive=True)
        return count


def delete_broker_objects(bench: Bench) -> None:
    """Delete the bench's queue, the services' queues of this prefix and the bench's exchange."""
    from shared.messaging import SUBSCRIPTIONS

    names = set()
    for service in SUBSCRIPTIONS:
        names |= {f"{bench.prefix}.{service}", f"{bench.prefix}.{service}.dead"}
    if shutil.which("rabbitmqctl") and AMQP_URL.endswith("//"):  # any other queue of the prefix, on the default vhost
        with contextlib.suppress(Exception):
            listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True,
                                    timeout=60).stdout.split()
            names |= {n for n in listed if n.startswith(f"{bench.prefix}.")}
    with Connection(AMQP_URL) as conn:
        channel = conn.channel()
        for name in sorted(names):
            try:
                channel.queue_delete(name)
            except Exception:  # never declared: the channel is closed, open a new one
                channel = conn.channel()
        with contextlib.suppress(Exception):
            channel.exchange_delete(bench.exchange)


def broker_version() -> str:
    try:
        with Connection(AMQP_URL) as conn:
            conn.connect()
            props = conn.connection.server_properties
            version = props.get("version", "?")
            return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return "?"


# -- set-up through the in-process stack ----------------------------------------------------------------------


def make_inventory(settings: Settings) -> tuple[str, list[str]]:
    """One lab with RESOURCES always-open resources, known to booking's read model, via an in-process stack."""
    from tests.harness import Stack

    stack = Stack(settings)
    try:
        lab = stack.make_lab(name="Bench lab")
        policy = {"slot_minutes": 15, "min_minutes": 15, "max_minutes": 480, "horizon_days": HORIZON_DAYS}
        ids = [stack.make_resource(lab["id"], policy, name=f"Bench instrument {i:02d}")["id"]
               for i in range(RESOURCES)]
        return lab["id"], ids
    finally:
        stack.close()


# -- the sequential client ---------------------------------------------------------------------------------


def sequential(base_url: str, token: str, resource_id: str, first_day: int, count: int) -> dict[str, Any]:
    """Book ``count`` consecutive 15-minute slots of one resource, one request at a time (after a warm-up)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    start = midnight_utc(first_day)
    times, failures = [], []
    for i in range(WARMUP + count):
        body = {"resource_id": resource_id, "start": stamp(start + i * 900), "end": stamp(start + i * 900 + 900),
                "title": "bench"}
        t0 = time.perf_counter()
        resp = session.post(f"{base_url}/api/v1/bookings", json=body, timeout=30)
        elapsed = time.perf_counter() - t0
        if resp.status_code != 201:
            failures.append(f"{resp.status_code} {resp.text[:200]}")
        elif i >= WARMUP:
            times.append(elapsed)
    session.close()
    if failures:
        raise BenchError(f"{len(failures)} sequential bookings failed, first: {failures[0]}")
    return {"n": len(times), "median": statistics.median(times), "p99": percentile(times, 99),
            "mean": statistics.fmean(times), "rate": len(times) / sum(times)}


# -- 1 + 2 + 3b: PostgreSQL and RabbitMQ ----------------------------------------------------------------------


def run_postgres(bench: Bench) -> None:
    r = bench.results
    bench.exchange = f"labshare.bench.{uuid.uuid4().hex[:8]}"
    bench.prefix = f"bench{uuid.uuid4().hex[:8]}"
    bench.db_url = create_database(PG_ADMIN_URL, "labshare_bench")
    env = child_env(LABSHARE_DATABASE_URL=bench.db_url, LABSHARE_BROKER_URL=AMQP_URL, LABSHARE_DEV_MODE="1",
                    LABSHARE_EXCHANGE=bench.exchange, LABSHARE_QUEUE_PREFIX=bench.prefix)
    engine = create_engine(psycopg_url(bench.db_url))
    try:
        _run_postgres(bench, env, engine, r)
    finally:
        engine.dispose()


def _run_postgres(bench: Bench, env: dict[str, str], engine, r: dict[str, Any]) -> None:
    def scalar(sql: str) -> int:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()

    def drain() -> float:
        """Wait until booking's outbox has no unpublished row; the seconds it took."""
        t0 = time.monotonic()
        while (backlog := scalar("SELECT count(*) FROM booking.outbox WHERE published_at IS NULL")) > 0:
            if time.monotonic() - t0 > bench.args.drain_timeout:
                raise BenchError(f"{backlog} events still unpublished after {bench.args.drain_timeout} s")
            if relay.popen.poll() is not None:
                raise BenchError(f"the relay exited:\n{relay.tail()}")
            time.sleep(0.1)
        return time.monotonic() - t0

    with engine.connect() as conn:
        r["pg_version"] = conn.execute(text("SHOW server_version")).scalar_one()
    r["rabbit_version"] = broker_version()

    step("migrate")
    out = subprocess.run([PYTHON, "-m", "services", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise BenchError(f"migrate failed:\n{out.stdout}\n{out.stderr}")

    step(f"1 lab, {RESOURCES} resources")
    settings = Settings(database_url=bench.db_url, broker_url=AMQP_URL, dev_mode=True, exchange=bench.exchange,
                        queue_prefix=bench.prefix, relay_interval=0.05)
    _, resource_ids = make_inventory(settings)
    queue = notify_queue(settings)
    with Connection(AMQP_URL) as conn:
        queue(conn.channel()).declare()
        queue(conn.channel()).purge()  # the lab and resource events of the set-up: only bookings' count

    step(f"gunicorn ({WORKERS} sync workers) and booking relay")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    relay = bench.start("booking-relay", [PYTHON, "-m", "services.booking", "relay"], env)
    api = bench.start("gunicorn", [GUNICORN, "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "-w", str(WORKERS),
                                   "-b", f"127.0.0.1:{port}", "services.booking.app:create_app()"], env)
    wait_http(api, f"{base_url}/healthz")
    deadline = time.monotonic() + 30
    while len(children(api.popen.pid)) < WORKERS and time.monotonic() < deadline:
        time.sleep(0.1)
    if relay.popen.poll() is not None:
        raise BenchError(f"the relay exited:\n{relay.tail()}")
    token = issue_dev_token(Settings(), BOOKER)
    worker_pids = children(api.popen.pid)
    # A few requests first, so the start-up figure includes what the first requests load.
    for _ in range(4 * WORKERS):
        requests.get(f"{base_url}/openapi.json", timeout=10)
    r["rss_start"] = {pid: rss_kib(pid) for pid in worker_pids}

    step("pick the cheapest endpoint (3 s of wrk each)")
    probes = {path: wrk(f"{base_url}{path}", "plain.lua", 3) for path in ("/healthz", "/openapi.json")}
    for path, res in probes.items():
        print(f"    {path}: {res['rps']:.0f} req/s")
    cheapest = max(probes, key=lambda p: probes[p]["rps"])
    r["probes"] = {p: res["rps"] for p, res in probes.items()}

    step(f"warm-up: {WARMUP_SECONDS} s of bookings (prepared statements, caches), not counted")
    book_with_wrk(base_url, token, resource_ids, WARMUP_DAY, WARMUP_SECONDS)
    drain()

    step(f"wrk: POST /api/v1/bookings, {CONNECTIONS} connections, {THREADS} threads, {bench.args.duration} s")
    booked_before = scalar("SELECT count(*) FROM booking.bookings")
    db_name = bench.db_url.rsplit("/", 1)[1]
    meter = CpuMeter({
        "gunicorn workers": lambda: children(api.popen.pid),
        "PostgreSQL backends of the bench database": lambda: pids_where(
            lambda c: c.startswith("postgres:") and f" {db_name} " in c),
        "booking relay": lambda: [relay.popen.pid],
        "RabbitMQ (whole broker)": lambda: pids_where(lambda c: "beam.smp" in c and "-s rabbit boot" in c),
    })
    r["load_before_main"] = os.getloadavg()[0]
    meter.start()
    book = book_with_wrk(base_url, token, resource_ids, MAIN_RUN_DAY, bench.args.duration)
    r["cpu"] = meter.stop()
    print(book["text"])
    r["book"] = book
    r["book_db"] = scalar("SELECT count(*) FROM booking.bookings") - booked_before
    r["rss_mid"] = {pid: rss_kib(pid) for pid in worker_pids}
    r["main_backlog"] = scalar("SELECT count(*) FROM booking.outbox WHERE published_at IS NULL")
    r["main_drain_s"] = drain()
    print(f"    outbox: {r['main_backlog']} unpublished events when wrk ended, drained in {r['main_drain_s']:.1f} s")

    step(f"wrk: GET {cheapest}, same settings")
    base = wrk(f"{base_url}{cheapest}", "plain.lua", bench.args.duration)
    print(base["text"])
    r["baseline"], r["baseline_path"] = base, cheapest

    total = scalar("SELECT count(*) FROM booking.bookings")
    first_day = TOPUP_DAY
    topups = 0
    while total < bench.args.min_bookings:
        need = bench.args.min_bookings - total
        seconds = min(60.0, max(2.0, 1.2 * need / max(book["rps"], 1.0) + 1))
        step(f"top-up: {need} more bookings wanted, {seconds:.0f} s of wrk")
        extra = book_with_wrk(base_url, token, resource_ids, first_day, seconds)
        print(f"    {extra['rps']:.0f} req/s, median {ms(extra['latency_us']['p50'])}, non-2xx {extra['non2xx']}")
        if extra["non2xx"] or sum(extra["errors"].values()):
            raise BenchError(f"top-up run had failures: {extra}")
        first_day += THREADS * SPAN_DAYS
        total = scalar("SELECT count(*) FROM booking.bookings")
        topups += 1
        if topups > 3:
            raise BenchError(f"only {total} bookings after {topups} top-up runs")
    r["topups"] = topups

    step(f"sequential client: {bench.args.sequential} bookings on PostgreSQL + RabbitMQ")
    r["seq_pg"] = sequential(base_url, token, resource_ids[0], SEQUENTIAL_DAY, bench.args.sequential)

    r["bookings_total"] = scalar("SELECT count(*) FROM booking.bookings")
    r["bookings_confirmed"] = scalar("SELECT count(*) FROM booking.bookings WHERE status = 'confirmed'")
    r["rss_end"] = {pid: rss_kib(pid) for pid in worker_pids}
    r["rss_relay"] = rss_kib(relay.popen.pid)
    r["rss_master"] = rss_kib(api.popen.pid)
    if children(api.popen.pid) != worker_pids:
        r["worker_restarts"] = True

    step("what bounds the rate: one client's INSERT + COMMIT of a tiny row, 500 times")
    r["commit_floor"] = commit_floor(bench.db_url)
    print(f"    median {ms_s(r['commit_floor']['median'])}: {WORKERS} sync workers cannot pass "
          f"{WORKERS / r['commit_floor']['median']:.0f} bookings/s however cheap the rest")

    step(f"wrk again for {bench.args.duration} s, the bench database's synchronous_commit off (never for real)")
    with engine.begin() as conn:
        conn.execute(text(f'ALTER DATABASE "{db_name}" SET synchronous_commit = off'))
    os.kill(api.popen.pid, signal.SIGHUP)  # new workers, new connections, the new setting
    deadline = time.monotonic() + 30
    while (not set(children(api.popen.pid)).isdisjoint(worker_pids) or len(children(api.popen.pid)) < WORKERS):
        if time.monotonic() > deadline:
            raise BenchError("gunicorn did not replace its workers after SIGHUP")
        time.sleep(0.1)
    wait_http(api, f"{base_url}/healthz")
    for _ in range(4 * WORKERS):
        requests.get(f"{base_url}/openapi.json", timeout=10)
    booked_before = scalar("SELECT count(*) FROM booking.bookings")
    meter.start()
    r["async"] = book_with_wrk(base_url, token, resource_ids, ASYNC_DAY, bench.args.duration)
    r["cpu_async"] = meter.stop()
    r["async_db"] = scalar("SELECT count(*) FROM booking.bookings") - booked_before
    print(r["async"]["text"])

    step("waiting for the outbox to drain")
    r["drain_s"] = drain()
    # wrk stops with requests in flight; the workers finish them, so count once the outbox is empty.
    r["bookings_total"] = scalar("SELECT count(*) FROM booking.bookings")
    r["bookings_confirmed"] = scalar("SELECT count(*) FROM booking.bookings WHERE status = 'confirmed'")
    r["drain_s"] = max(r["drain_s"], drain())
    r["outbox_total"] = scalar("SELECT count(*) FROM booking.outbox WHERE type LIKE 'booking.%'")
    depth, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 1.0:
        now_depth = queue_depth(queue)
        if now_depth != depth:
            depth, stable_since = now_depth, time.monotonic()
        time.sleep(0.2)
    r["delivered"] = depth
    api.stop()
    relay.stop()


def commit_floor(db_url: str, count: int = 500) -> dict[str, Any]:
    """Seconds per INSERT + COMMIT of one tiny row from one client: the disk's flush, mostly."""
    import psycopg

    times = []
    with psycopg.connect(db_url) as conn:
        conn.execute("CREATE TABLE bench_commit_floor (n integer)")
        conn.commit()
        for i in range(count + WARMUP):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO bench_commit_floor VALUES (%s)", (i,))
            conn.commit()
            if i >= WARMUP:
                times.append(time.perf_counter() - t0)
        conn.execute("DROP TABLE bench_commit_floor")
        conn.commit()
    return {"n": count, "median": statistics.median(times), "p99": percentile(times, 99)}


# -- 3a: embedded defaults --------------------------------------------------------------------------------------


def run_embedded(bench: Bench) -> None:
    step("embedded defaults: python -m services run (SQLite, in-process broker)")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    data_dir = bench.workdir / "var"
    env = child_env(LABSHARE_DEV_MODE="1", LABSHARE_DATA_DIR=str(data_dir), LABSHARE_PORT=str(port))
    proc = bench.start("embedded", [PYTHON, "-m", "services", "run"], env)
    wait_http(proc, f"{base_url}/healthz")
    manager = {"Authorization": f"Bearer {issue_dev_token(Settings(), MANAGER)}"}
    lab = requests.post(f"{base_url}/api/v1/labs", headers=manager, timeout=10, json={
        "name": "Bench lab", "org": "ntnu", "building": "Bench", "timezone": "Europe/Oslo",
        "managers": [{k: MANAGER[k] for k in ("sub", "name", "email")}]})
    if lab.status_code != 201:
        raise BenchError(f"creating the lab answered {lab.status_code}: {lab.text}")
    res = requests.post(f"{base_url}/api/v1/resources", headers=manager, timeout=10, json={
        "lab_id": lab.json()["id"], "name": "Bench instrument", "kind": "equipment", "category": "bench/instrument",
        "policy": {"slot_minutes": 15, "min_minutes": 15, "max_minutes": 480, "horizon_days": HORIZON_DAYS}})
    if res.status_code != 201:
        raise BenchError(f"creating the resource answered {res.status_code}: {res.text}")
    resource_id = res.json()["id"]
    wait_http(proc, f"{base_url}/api/v1/availability?resource_id={resource_id}", 30, manager)
    token = issue_dev_token(Settings(), BOOKER)
    bench.results["seq_embedded"] = sequential(base_url, token, resource_id, MAIN_RUN_DAY, bench.args.sequential)
    proc.stop()


# -- report -------------------------------------------------------------------------------------------------


def socket_errors(result: dict[str, Any]) -> int:
    return sum(v for k, v in result["errors"].items() if k != "status")


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def report(bench: Bench, started: dt.datetime, elapsed: float) -> str:
    r, a = bench.results, bench.args
    book, base = r["book"], r["baseline"]
    expected = 2 * r["bookings_confirmed"]
    others = r["cpu"]["everything else on the machine"] / r["cpu"]["_capacity"]
    busy_note = (f"; other work took {100 * others:.0f}% of the machine during the booking run, so the figures "
                 "are lower than on an idle machine" if others > 0.10 else "")
    lines = [
        "# labshare benchmarks",
        "",
        "Written by `make bench` (bench/run.py); every figure below comes from the run described in the first table.",
        "",
        "| run | |",
        "|---|---|",
        f"| date | {started:%Y-%m-%d %H:%M} UTC (whole bench {elapsed:.0f} s) |",
        f"| machine | nproc {os.cpu_count()}, {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()} |",
        f"| load average (1 min) | {r['load_start']:.2f} at the start, {r['load_before_main']:.2f} before the "
        f"booking run, {r['load_end']:.2f} at the end{busy_note} |",
        f"| servers | PostgreSQL {r.get('pg_version', '?')}, RabbitMQ {r.get('rabbit_version', '?')}, "
        "all on loopback |",
        f"| booking API | gunicorn with deploy/gunicorn.conf.py (JSON access log, frozen start-up heap), {WORKERS} "
        "sync workers; booking relay as a separate process |",
        f"| wrk | {THREADS} threads, {CONNECTIONS} connections, {a.duration} s per run, `--latency` |",
        f"| data | 1 lab, {RESOURCES} always-open resources (slot 15 min), each wrk request a distinct "
        "15-minute slot (bench/book.lua) |",
        f"| sequential client | requests.Session, one at a time, {WARMUP} warm-up + {a.sequential} measured bookings |",
        "",
        *targets(r),
        "## 1. Write path on PostgreSQL + RabbitMQ",
        "",
        "| figure | value |",
        "|---|---|",
        f"| POST /api/v1/bookings | **{book['rps']:.0f} req/s** ({book['requests']} requests) |",
        f"| latency median / p99 | {ms(book['latency_us']['p50'])} / {ms(book['latency_us']['p99'])} |",
        f"| non-2xx / socket errors | {book['non2xx']} / {socket_errors(book)} |",
        f"| bookings in the database from that run | {r['book_db']} |",
        f"| baseline GET {r['baseline_path']} (cheapest; 3 s probes: "
        + ", ".join(f"{p} {v:.0f}" for p, v in r["probes"].items()) + " req/s) | "
        f"{base['rps']:.0f} req/s, median {ms(base['latency_us']['p50'])}, p99 {ms(base['latency_us']['p99'])}, "
        f"non-2xx {base['non2xx']} |",
        f"| booking rate / baseline rate | {book['rps'] / base['rps']:.2f} |",
        f"| bookings in total (all runs) / confirmed | {r['bookings_total']} / {r['bookings_confirmed']} |",
        f"| outbox backlog when that wrk run ended | {r['main_backlog']} events, published {r['main_drain_s']:.1f} s "
        "later (separate relay process) |",
        f"| outbox drained after the last booking | {r['drain_s']:.1f} s (0 unpublished rows left) |",
        f"| events in notify's queue (bound to `booking.*`) | {r['delivered']} (expected {expected}: "
        f"booking.created + booking.confirmed per confirmed booking; outbox rows {r['outbox_total']}) |",
        "",
        f"CPU time during that booking run ({r['book_db']} bookings; everything shares the {os.cpu_count()} CPUs):",
        "",
        "| process | CPU seconds | per booking | share of the machine |",
        "|---|---|---|---|",
    ]
    cpu = r["cpu"]
    for name, used in cpu.items():
        if not name.startswith("_"):
            lines.append(f"| {name} | {used:.1f} | {used / max(r['book_db'], 1) * 1000:.2f} ms | "
                         f"{100 * used / cpu['_capacity']:.0f}% |")
    lines += [
        f"| whole machine busy | {cpu['_machine_busy']:.1f} | | {100 * cpu['_machine_busy'] / cpu['_capacity']:.0f}% |",
        "",
        f"## 2. Memory (after {r['bookings_total']} bookings)",
        "",
        f"| process | VmRSS after start-up | after the {r['book_db']} bookings of the main run | "
        f"after all {r['bookings_total']} bookings |",
        "|---|---|---|---|",
    ]
    for i, (pid, end) in enumerate(r["rss_end"].items()):
        lines.append(f"| gunicorn worker {i + 1} (pid {pid}) | {mib(r['rss_start'].get(pid))} | "
                     f"{mib(r['rss_mid'].get(pid))} | {mib(end)} |")
    lines += [
        f"| gunicorn master | | | {mib(r['rss_master'])} |",
        f"| booking relay | | | {mib(r['rss_relay'])} |",
    ]
    if r.get("worker_restarts"):
        lines.append("\nA gunicorn worker was replaced during the run; its figures are from the original pids.")
    lines += [
        "",
        "## 3. Booking create latency, one sequential client",
        "",
        "| setup | bookings | median | p99 | mean | rate |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (("embedded defaults (`python -m services run`: SQLite, in-process broker)", "seq_embedded"),
                       (f"PostgreSQL + RabbitMQ (gunicorn, {WORKERS} sync workers)", "seq_pg")):
        s = r[key]
        lines.append(f"| {label} | {s['n']} | {ms_s(s['median'])} | {ms_s(s['p99'])} | {ms_s(s['mean'])} | "
                     f"{s['rate']:.0f} /s |")
    lines += ["", *bounds(r), ""]
    return "\n".join(lines)


#: What the write path must do on a 2-core machine (PostgreSQL + RabbitMQ, 2 sync workers, wrk 16 connections).
TARGET_RATE, TARGET_P99_MS, TARGET_RSS_MB = 500, 50, 150


def targets(r: dict[str, Any]) -> list[str]:
    """The write path's targets, met or not in this run (a machine's result, so reported, never a failed check)."""
    book = r["book"]
    rss = max((kib for kib in r["rss_end"].values() if kib), default=0) * 1024 / 1e6
    errors = book["non2xx"] + socket_errors(book)
    rows = [
        (f"bookings/s >= {TARGET_RATE}", f"{book['rps']:.0f}", book["rps"] >= TARGET_RATE),
        (f"p99 <= {TARGET_P99_MS} ms", ms(book["latency_us"]["p99"]),
         book["latency_us"]["p99"] <= TARGET_P99_MS * 1000),
        ("errors = 0", str(errors), errors == 0),
        ("every booking's events published", f"{r['delivered']} of {2 * r['bookings_confirmed']}",
         r["delivered"] >= 2 * r["bookings_confirmed"]),
        (f"worker RSS < {TARGET_RSS_MB} MB after {r['bookings_total']} bookings", f"{rss:.0f} MB",
         rss < TARGET_RSS_MB),
    ]
    return ["## Targets (section 1's wrk run, section 2's memory)", "", "| target | this run | met |", "|---|---|---|",
            *(f"| {what} | {value} | {'yes' if ok else '**no**'} |" for what, value, ok in rows), ""]


def bounds(r: dict[str, Any]) -> list[str]:
    """Section 4: the two ceilings of the write path on this machine, from this run's own figures."""
    floor, fast = r["commit_floor"], r["async"]
    cpus = os.cpu_count() or 1

    def per_booking(cpu: dict[str, float], count: int) -> float:
        return sum(v for k, v in cpu.items() if not k.startswith("_") and k != "everything else on the machine") \
            / max(count, 1)

    sync_cpu, async_cpu = per_booking(r["cpu"], r["book_db"]), per_booking(r["cpu_async"], r["async_db"])
    workers_async = r["cpu_async"]["gunicorn workers"] / max(r["async_db"], 1)
    return [
        "## 4. What bounds the booking rate here",
        "",
        "| figure | value |",
        "|---|---|",
        f"| INSERT + COMMIT of a tiny row, one client ({floor['n']} times) | median {ms_s(floor['median'])}, "
        f"p99 {ms_s(floor['p99'])} |",
        f"| so {WORKERS} sync workers, each waiting for its own commit, stay under | "
        f"{WORKERS / floor['median']:.0f} bookings/s, however cheap the rest |",
        f"| CPU per booking of the bench's processes (workers, PostgreSQL, relay, RabbitMQ, wrk), section 1 | "
        f"{1000 * sync_cpu:.2f} ms, so {cpus} CPUs stay under {cpus / sync_cpu:.0f} bookings/s |",
        f"| the same wrk run with the bench database's `synchronous_commit` off | **{fast['rps']:.0f} req/s**, "
        f"median {ms(fast['latency_us']['p50'])}, p99 {ms(fast['latency_us']['p99'])}, non-2xx {fast['non2xx']}, "
        f"socket errors {socket_errors(fast)} |",
        f"| its CPU per booking (all the bench's processes / the workers alone) | {1000 * async_cpu:.2f} ms / "
        f"{1000 * workers_async:.2f} ms |",
        "",
        "`synchronous_commit = off` answers before the commit reaches the disk, so a crash of PostgreSQL can lose",
        "the last moments of confirmed bookings; labshare never sets it. It is measured only to tell the disk's",
        "share of the rate from the CPU's.",
    ]


def check(bench: Bench) -> list[str]:
    """What must hold for the run to count."""
    r = bench.results
    problems = []
    if r["async"]["non2xx"] or socket_errors(r["async"]):
        problems.append(f"the run with synchronous_commit off had failures: {r['async']['statuses']}")
    if r["book"]["non2xx"] or r["baseline"]["non2xx"]:
        problems.append(f"non-2xx answers: bookings {r['book']['non2xx']}, baseline {r['baseline']['non2xx']}")
    if socket_errors(r["book"]) or socket_errors(r["baseline"]):
        problems.append(f"socket errors: bookings {r['book']['errors']}, baseline {r['baseline']['errors']}")
    if r["delivered"] < 2 * r["bookings_confirmed"]:
        problems.append(f"only {r['delivered']} events delivered for {r['bookings_confirmed']} confirmed bookings")
    if r["bookings_total"] < bench.args.min_bookings:
        problems.append(f"only {r['bookings_total']} bookings made (memory needs {bench.args.min_bookings})")
    return problems


# -- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run (default 15)")
    parser.add_argument("--sequential", type=int, default=500, help="bookings of the sequential client")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to wait for the outbox")
    parser.add_argument("--min-bookings", type=int, default=MIN_BOOKINGS,
                        help="bookings to reach before memory is read (wrk top-up runs make up the rest)")
    parser.add_argument("--output", type=Path, default=BENCH / "results.md")
    args = parser.parse_args(argv)

    if shutil.which("wrk") is None:
        print("bench: wrk is not installed. Install it, then run `make bench` again:\n"
              "  Debian/Ubuntu: sudo apt-get install -y wrk\n"
              "  macOS:         brew install wrk", file=sys.stderr)
        return 2
    if not Path(GUNICORN).exists():
        print(f"bench: {GUNICORN} is missing; run `make install`.", file=sys.stderr)
        return 2
    for name, url, default, var in (("PostgreSQL", PG_ADMIN_URL, 5432, "LABSHARE_BENCH_PG_URL"),
                                    ("RabbitMQ", AMQP_URL, 5672, "LABSHARE_BENCH_AMQP_URL")):
        netloc = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
        host, _, port = netloc.partition(":")
        if not port_open(host, int(port or default)):
            print(f"bench: {name} is not reachable at {netloc}; start it (or point {var} at it).", file=sys.stderr)
            return 2

    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"bench: note: the load average is {load:.1f} on {os.cpu_count()} CPUs; other work will lower "
              "the figures", file=sys.stderr)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    bench = Bench(args, Path(tempfile.mkdtemp(prefix="labshare-bench-")))
    bench.results["load_start"] = os.getloadavg()[0]
    failed = False
    try:
        run_postgres(bench)
        run_embedded(bench)
    except BaseException as exc:
        failed = True
        if isinstance(exc, BenchError):
            print(f"bench failed: {exc}", file=sys.stderr)
        elif isinstance(exc, KeyboardInterrupt):
            print("bench interrupted", file=sys.stderr)
        else:
            traceback.print_exc()
    finally:
        for proc in reversed(bench.procs):
            proc.stop()
        if bench.prefix:
            try:
                delete_broker_objects(bench)
            except Exception as exc:
                print(f"bench: could not delete the broker objects of {bench.prefix}: {exc}", file=sys.stderr)
        if bench.db_url:
            try:
                drop_database(bench.db_url, PG_ADMIN_URL)
            except Exception as exc:
                print(f"bench: could not drop {bench.db_url}: {exc}", file=sys.stderr)
        if failed:
            print(f"bench: process logs kept in {bench.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    if failed:
        return 1

    bench.results["load_end"] = os.getloadavg()[0]
    text_out = report(bench, started, time.monotonic() - t0)
    args.output.write_text(text_out)
    print()
    print(text_out)
    problems = check(bench)
    for problem in problems:
        print(f"bench: FAILED CHECK: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
