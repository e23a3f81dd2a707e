"""The stack of ``make stack`` under a fixed booking load: 1 vs 2 booking replicas behind nginx.

For each configuration a fresh stack (deploy/stack.py: every component its own process, the
gateway nginx) on a fresh PostgreSQL database and RabbitMQ vhost; 50 always-open resources and
8 users; then a fixed closed-loop load through nginx (wrk, 16 connections, when it is installed;
else the same from Python threads) of non-conflicting 15-minute bookings, each user booking in
turn. Reported: bookings per second, p50/p99 latency, the statuses, how nginx spread the requests
over the replicas, and a check that every 201 is a booking in the database.

    python bench/stack.py            # writes bench/stack.md
    from bench.stack import run      # run() -> the Markdown section

Environment: LABSHARE_BENCH_PG_URL (admin URL, default postgresql://postgres@127.0.0.1:5432/postgres),
LABSHARE_BENCH_AMQP_HOST (default 127.0.0.1; rabbitmqctl makes the vhost). Everything it starts or
creates is removed at the end.
"""

from __future__ import annotations

import collections
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from shared.db import admin_engine, psycopg_url  # noqa: E402

PG_ADMIN_URL = os.environ.get("LABSHARE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_HOST = os.environ.get("LABSHARE_BENCH_AMQP_HOST", "127.0.0.1")
RESOURCES = 50
USERS = 8
CONNECTIONS = 16
THREADS = 2
SECONDS = 20
WARMUP_SECONDS = 3
WORKERS = 2  # gunicorn workers per API replica, as make stack runs them
SPAN_DAYS = 60  # days of slots each load thread owns (50 resources x 96 slots a day)


def _load_stack_module():
    spec = importlib.util.spec_from_file_location("labshare_bench_stack", ROOT / "deploy" / "stack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


stack_module = _load_stack_module()


class BenchError(Exception):
    pass


# -- the machine's PostgreSQL and RabbitMQ -------------------------------------------------------------


def create_database() -> str:
    name = f"labshare_stack_bench_{uuid.uuid4().hex[:8]}"
    engine = admin_engine(PG_ADMIN_URL)
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    engine = admin_engine(PG_ADMIN_URL)
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    engine.dispose()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def create_vhost() -> tuple[str, str]:
    vhost = f"labshare-stack-bench-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost, f"amqp://guest:guest@{AMQP_HOST}:5672/{vhost}"


# -- load ------------------------------------------------------------------------------------------------


def midnight_utc(days_ahead: int) -> int:
    day = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days_ahead)
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())


def with_wrk(url: str, seconds: float, first_day: int, ids: list[str], tokens: list[str]) -> dict[str, Any]:
    cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "--latency",
           "-s", str(BENCH / "stack.lua"), url, "--", str(midnight_utc(first_day)), str(SPAN_DAYS), ",".join(ids),
           ",".join(tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    result = json.loads(line.split(" ", 1)[1])
    seconds_run = result["duration_us"] / 1e6
    return {"tool": "wrk", "requests": result["requests"], "seconds": seconds_run,
            "statuses": {int(k): v for k, v in result["statuses"].items()},
            "errors": sum(result["errors"].values()),
            "p50_ms": result["latency_us"]["p50"] / 1000, "p99_ms": result["latency_us"]["p99"] / 1000}


def with_python(url: str, seconds: float, first_day: int, ids: list[str], tokens: list[str]) -> dict[str, Any]:
    """The same load as bench/stack.lua from CONNECTIONS Python threads (when wrk is missing)."""
    base = midnight_utc(first_day)
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    errors = 0
    stop = time.monotonic() + seconds

    def client(c: int) -> None:
        nonlocal errors
        session = requests.Session()
        n = 0
        block = base + c * SPAN_DAYS * 86400
        while time.monotonic() < stop:
            start = block + (n // len(ids)) * 900
            body = {"resource_id": ids[n % len(ids)], "title": "stack bench",
                    "start": dt.datetime.fromtimestamp(start, dt.UTC).isoformat(),
                    "end": dt.datetime.fromtimestamp(start + 900, dt.UTC).isoformat()}
            headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
            n += 1
            t0 = time.perf_counter()
            try:
                status = session.post(f"{url}/api/v1/bookings", json=body, headers=headers, timeout=30).status_code
            except requests.RequestException:
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                statuses[status] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ordered = sorted(latencies) or [0.0]
    return {"tool": "Python threads", "requests": len(latencies), "seconds": time.monotonic() - started,
            "statuses": dict(statuses), "errors": errors,
            "p50_ms": statistics.median(ordered) * 1000, "p99_ms": ordered[int(0.99 * (len(ordered) - 1))] * 1000}


def load(url: str, seconds: float, first_day: int, ids: list[str], tokens: list[str]) -> dict[str, Any]:
    if shutil.which("wrk"):
        return with_wrk(url, seconds, first_day, ids, tokens)
    return with_python(url, seconds, first_day, ids, tokens)


# -- one configuration ---------------------------------------------------------------------------------


def token(url: str, sub: str, roles: list[str]) -> str:
    body = {"sub": sub, "name": sub, "email": f"{sub}@example.org", "org": "ntnu", "roles": roles}
    resp = requests.post(f"{url}/api/v1/dev/token", json=body, timeout=10)
    if resp.status_code != 201:
        raise BenchError(f"no token: {resp.status_code} {resp.text}")
    return resp.json()["token"]


def setup_data(url: str) -> tuple[list[str], list[str]]:
    manager = token(url, "bench-manager", ["researcher", "manager"])
    auth = {"Authorization": f"Bearer {manager}"}
    lab = requests.post(f"{url}/api/v1/labs", headers=auth, timeout=10, json={
        "name": "Bench lab", "org": "ntnu", "building": "B", "timezone": "Europe/Oslo",
        "managers": [{"sub": "bench-manager", "name": "Manager", "email": "bench-manager@example.org"}]}).json()
    ids = []
    for i in range(RESOURCES):
        resp = requests.post(f"{url}/api/v1/resources", headers=auth, timeout=10, json={
            "lab_id": lab["id"], "name": f"Bench {i}", "kind": "equipment", "category": "bench/stack",
            "policy": {"slot_minutes": 15, "min_minutes": 15, "max_minutes": 240, "horizon_days": 3650}})
        if resp.status_code != 201:
            raise BenchError(f"resource: {resp.status_code} {resp.text}")
        ids.append(resp.json()["id"])
    deadline = time.monotonic() + 60
    for rid in ids:
        while requests.get(f"{url}/api/v1/availability?resource_id={rid}", headers=auth, timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise BenchError("booking's read model never learnt the resources")
            time.sleep(0.1)
    users = [token(url, f"bench-user-{i}", ["researcher"]) for i in range(USERS)]
    return ids, users


def measure(replicas: int, state_dir: Path) -> dict[str, Any]:
    database_url = create_database()
    vhost = None
    stack = None
    try:
        vhost, broker_url = create_vhost()
        stack = stack_module.Stack(database_url=database_url, broker_url=broker_url, state_dir=state_dir,
                                   replicas_of={"booking-api": replicas}, workers=WORKERS)
        stack.start()
        ids, users = setup_data(stack.url)
        load(stack.url, WARMUP_SECONDS, 30, ids, users)
        log = stack.components["gateway"].log_path
        offset = log.stat().st_size
        load_before = os.getloadavg()[0]
        result = load(stack.url, SECONDS, 30 + 2 * THREADS * SPAN_DAYS, ids, users)
        time.sleep(0.5)
        replica_addresses = {stack.components[f"booking-api-{i}"].address: f"booking-api-{i}"
                             for i in range(1, replicas + 1)}
        spread: collections.Counter[str] = collections.Counter()
        with log.open(encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            for line in f:
                if line.startswith("{") and '"uri":"/api/v1/bookings"' in line:
                    record = json.loads(line)
                    spread[replica_addresses.get(record["upstream"], record["upstream"])] += 1
        engine = create_engine(psycopg_url(database_url))
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM booking.bookings WHERE title = 'stack bench'")).scalar()
        engine.dispose()
        created_total = stored  # warm-up and measured run
        result.update(replicas=replicas, spread=dict(spread), stored=created_total, load_before=load_before,
                      load_after=os.getloadavg()[0])
        return result
    finally:
        if stack is not None:
            stack.stop()
        if vhost:
            rabbitmqctl("delete_vhost", vhost)
        drop_database(database_url)


def run() -> str:
    """Measure 1 and 2 booking replicas; the Markdown section."""
    if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
        raise BenchError("nginx is not installed")
    rows = []
    with tempfile.TemporaryDirectory(prefix="labshare-stack-bench-") as tmp:
        for replicas in (1, 2):
            rows.append(measure(replicas, Path(tmp) / f"replicas-{replicas}"))
    return render(rows)


def render(rows: list[dict[str, Any]]) -> str:
    cpus = os.cpu_count()
    tool = rows[0]["tool"]
    lines = [
        "## The stack: booking throughput with 1 and 2 booking replicas behind nginx",
        "",
        f"`python bench/stack.py`, {dt.datetime.now(dt.UTC):%Y-%m-%d}, {platform.machine()}, {cpus} CPUs, "
        f"Python {platform.python_version()}. Each row is a fresh `make stack` (deploy/stack.py: every "
        "component its own process; two replicas of inventory and notify, two relays per service, two "
        "booking consumers, two notify workers, the web app, nginx) on a fresh PostgreSQL database and "
        f"RabbitMQ vhost, with {WORKERS} gunicorn workers per API replica. Load: {tool}, {THREADS} threads, "
        f"{CONNECTIONS} connections, {SECONDS} s after a {WARMUP_SECONDS} s warm-up, `POST /api/v1/bookings` "
        f"through nginx of non-conflicting 15-minute bookings over {RESOURCES} resources by {USERS} users.",
        "",
        "| booking replicas | gunicorn workers | bookings/s | p50 | p99 | statuses | errors | requests per replica "
        "| load average before / after |",
        "|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for r in rows:
        created = r["statuses"].get(201, 0)
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        spread = ", ".join(f"{k}: {v}" for k, v in sorted(r["spread"].items()))
        lines.append(f"| {r['replicas']} | {r['replicas'] * WORKERS} | {created / r['seconds']:.0f} | "
                     f"{r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {statuses} | {r['errors']} | {spread} "
                     f"| {r['load_before']:.1f} / {r['load_after']:.1f} |")
    lines += [
        "",
        "Every 201 is a booking in the database (checked after each run: "
        + ", ".join(f"{r['stored']} stored" for r in rows) + ", warm-up included).",
        "",
        f"On {cpus} CPUs the second replica adds gunicorn workers but no processor: PostgreSQL, RabbitMQ, "
        "nginx, the relays, consumers and notify's workers (one invitation per booking) share the same two "
        "cores with the load generator, so what it buys here is availability (a replica can die or restart "
        "without clients noticing, tests/e2e/test_stack.py), not throughput. On separate machines each "
        "replica brings its own CPUs and the booking rate grows with them until PostgreSQL's commit rate "
        "bounds it (bench/results.md measures one replica's write path on its own).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    try:
        section = run()
    except BenchError as exc:
        print(f"bench/stack.py: {exc}", file=sys.stderr)
        return 1
    (BENCH / "stack.md").write_text(section, encoding="utf-8")
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
