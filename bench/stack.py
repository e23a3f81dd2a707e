"""The stack of ``make stack`` under a fixed booking load: 1 vs 2 booking replicas behind nginx.

One stack (deploy/stack.py: every component its own process, two booking replicas, nginx in
front) on a fresh PostgreSQL database and RabbitMQ vhost; 50 always-open resources and 8 users;
then runs of a fixed closed-loop load through nginx (wrk, 16 connections, when it is installed;
else the same from Python threads) of non-conflicting 15-minute bookings, each user booking in
turn: alternately with one booking replica in nginx's upstream (reloaded without the other) and
with both, three times each. Reported: bookings per second, p50/p99 latency, the statuses, how
nginx spread the requests over the replicas, and a check of every run against the database.

    python bench/stack.py            # writes bench/stack.md
    from bench.stack import run      # run() -> the Markdown section

Environment: LABSHARE_BENCH_PG_URL (admin URL, default postgresql://postgres@127.0.0.1:5432/postgres),
LABSHARE_BENCH_AMQP_HOST (default 127.0.0.1; rabbitmqctl makes the vhost). Everything it starts or
creates is removed at the end.
"""

from __future__ import annotations

import collections
import datetime as dt
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

from shared.db import psycopg_url  # noqa: E402
from tests.infra import create_database, deploy_script, drop_database  # noqa: E402

PG_ADMIN_URL = os.environ.get("LABSHARE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_HOST = os.environ.get("LABSHARE_BENCH_AMQP_HOST", "127.0.0.1")
RESOURCES = 50
USERS = 8
CONNECTIONS = 16
THREADS = 2
SECONDS = 10
WARMUP_SECONDS = 3
ROUNDS = 3
WORKERS = 2  # gunicorn workers per API replica, as make stack runs them
SPAN_DAYS = 20  # days of slots each load thread owns in a run (50 resources x 96 slots a day)
BLOCK_DAYS = max(THREADS, CONNECTIONS) * SPAN_DAYS  # days one run may book (wrk threads or Python clients)




stack_module = deploy_script("stack.py")


class BenchError(Exception):
    pass


TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_owner() -> dict[str, float]:
    """CPU seconds so far: the whole machine, this bench with all it started (the stack, wrk), the
    servers it uses (PostgreSQL, RabbitMQ) and the kernel's threads; what is left is other work."""
    procs: dict[int, tuple[int, float, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # utime + stime, and cutime + cstime: the children it has reaped (wrk runs, old nginx workers)
        procs[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / TICK, cmdline)
    ours, frontier = set(), [os.getpid()]
    while frontier:
        parent = frontier.pop()
        ours.add(parent)
        frontier += [pid for pid, (ppid, _, _) in procs.items() if ppid == parent and pid not in ours]
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return {
        "machine": (sum(values[:8]) - values[3] - values[4]) / TICK,
        "bench": sum(procs[pid][1] for pid in ours if pid in procs),
        "servers": sum(cpu for pid, (_, cpu, cmd) in procs.items() if pid not in ours and (
            cmd.startswith("postgres") or "beam.smp" in cmd or "/postgresql/" in cmd)),
        # the kernel's own threads (block I/O for the commits, memory housekeeping) work for everyone
        "kernel": sum(cpu for pid, (ppid, cpu, _) in procs.items() if pid == 2 or ppid == 2),
    }


def other_work(before: dict[str, float], after: dict[str, float], seconds: float) -> float:
    """The share of the machine's CPUs that neither the bench's processes, its servers nor the kernel used."""
    delta = {k: after[k] - before[k] for k in before}
    used = delta["bench"] + delta["servers"] + delta["kernel"]
    return max(0.0, delta["machine"] - used) / (seconds * (os.cpu_count() or 1))


# -- the machine's PostgreSQL and RabbitMQ -------------------------------------------------------------


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
            "errors": sum(v for k, v in result["errors"].items() if k != "status"),  # socket errors
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


def one_run(stack, database_url: str, replicas: int, first_day: int, ids: list[str], users: list[str]) -> dict:
    """One load run with ``replicas`` booking replicas in nginx's upstream; checked against the database."""
    stack.drained = {f"booking-api-{i}" for i in range(replicas + 1, 3)}
    stack.reload_gateway()
    time.sleep(1.0)
    log = stack.components["gateway"].log_path
    offset = log.stat().st_size
    cpu_before, started = cpu_by_owner(), time.monotonic()
    result = load(stack.url, SECONDS, first_day, ids, users)
    others = other_work(cpu_before, cpu_by_owner(), time.monotonic() - started)
    time.sleep(0.5)
    names = {stack.components[f"booking-api-{i}"].address: f"booking-api-{i}" for i in (1, 2)}
    spread: collections.Counter[str] = collections.Counter()
    with log.open(encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        for line in f:
            if line.startswith("{") and '"uri":"/api/v1/bookings"' in line:
                upstream = json.loads(line)["upstream"]
                spread[names.get(upstream, upstream)] += 1
    engine = create_engine(psycopg_url(database_url))
    with engine.connect() as conn:
        stored = conn.execute(text(
            "SELECT count(*) FROM booking.bookings WHERE title = 'stack bench' AND start_at >= :since "
            "AND start_at < :until"),
            {"since": dt.datetime.fromtimestamp(midnight_utc(first_day), dt.UTC),
             "until": dt.datetime.fromtimestamp(midnight_utc(first_day + BLOCK_DAYS), dt.UTC)}).scalar()
    engine.dispose()
    created = result["statuses"].get(201, 0)
    # wrk stops with requests in flight: the server may still commit those (at most one per connection).
    if not 0 <= stored - created <= CONNECTIONS:
        raise BenchError(f"{created} bookings answered 201, {stored} in the database")
    result.update(replicas=replicas, spread=dict(spread), stored=stored, others=others)
    return result


def measure(state_dir: Path) -> list[dict[str, Any]]:
    """One stack with two booking replicas; ROUNDS of (1 replica, 2 replicas) runs, interleaved."""
    database_url = create_database(PG_ADMIN_URL, "labshare_stack_bench")
    vhost = None
    stack = None
    try:
        vhost, broker_url = create_vhost()
        stack = stack_module.Stack(database_url=database_url, broker_url=broker_url, state_dir=state_dir,
                                   replicas_of={"booking-api": 2}, workers=WORKERS)
        stack.start()
        ids, users = setup_data(stack.url)
        load(stack.url, WARMUP_SECONDS, 30, ids, users)
        runs = []
        day = 30 + BLOCK_DAYS
        for _ in range(ROUNDS):
            for replicas in (1, 2):
                runs.append(one_run(stack, database_url, replicas, day, ids, users))
                day += BLOCK_DAYS
        return runs
    finally:
        if stack is not None:
            stack.stop()
        if vhost:
            rabbitmqctl("delete_vhost", vhost)
        drop_database(database_url, PG_ADMIN_URL)


def run() -> str:
    """Measure 1 and 2 booking replicas; the Markdown section."""
    if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
        raise BenchError("nginx is not installed")
    with tempfile.TemporaryDirectory(prefix="labshare-stack-bench-") as tmp:
        runs = measure(Path(tmp))
    return render(runs)


def summarise(runs: list[dict[str, Any]], replicas: int) -> dict[str, Any]:
    mine = [r for r in runs if r["replicas"] == replicas]
    spread: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    for r in mine:
        spread.update(r["spread"])
        statuses.update(r["statuses"])
    return {
        "replicas": replicas, "runs": len(mine), "tool": mine[0]["tool"],
        "rate": sum(r["statuses"].get(201, 0) for r in mine) / sum(r["seconds"] for r in mine),
        "rates": [r["statuses"].get(201, 0) / r["seconds"] for r in mine],
        "p50_ms": statistics.median(r["p50_ms"] for r in mine),
        "p99_ms": statistics.median(r["p99_ms"] for r in mine),
        "statuses": dict(statuses), "errors": sum(r["errors"] for r in mine), "spread": dict(spread),
        "created": sum(r["statuses"].get(201, 0) for r in mine), "stored": sum(r["stored"] for r in mine),
        "others": max(r["others"] for r in mine),
    }


def render(runs: list[dict[str, Any]]) -> str:
    rows = [summarise(runs, 1), summarise(runs, 2)]
    cpus = os.cpu_count()
    lines = [
        "## The stack: booking throughput with 1 and 2 booking replicas behind nginx",
        "",
        f"`python bench/stack.py`, {dt.datetime.now(dt.UTC):%Y-%m-%d}, {platform.machine()}, {cpus} CPUs, "
        f"Python {platform.python_version()}. One `make stack` (deploy/stack.py: every component its own "
        "process; two replicas of each API, two relays per service, two booking consumers, two notify workers, "
        f"the web app, nginx; {WORKERS} gunicorn workers per API replica) on a fresh PostgreSQL database and "
        "RabbitMQ vhost. For the one-replica runs nginx is reloaded with only `booking-api-1` in its booking "
        "upstream (the other idles); the runs alternate, one replica then two, "
        f"{ROUNDS} times, so that other work on the machine weighs on both alike. Load: {rows[0]['tool']}, "
        f"{THREADS} threads, {CONNECTIONS} connections, {SECONDS} s per run after a {WARMUP_SECONDS} s warm-up, "
        f"`POST /api/v1/bookings` through nginx of non-conflicting 15-minute bookings over {RESOURCES} "
        f"resources by {USERS} users.",
        "",
        "| booking replicas | gunicorn workers | bookings/s (all runs) | each run | p50 (median run) "
        "| p99 (median run) | statuses | errors | requests per replica | other work, highest share of the CPUs |",
        "|---:|---:|---:|---|---:|---:|---|---:|---|---|",
    ]
    for r in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        spread = ", ".join(f"{k}: {v}" for k, v in sorted(r["spread"].items()))
        each = " / ".join(f"{x:.0f}" for x in r["rates"])
        lines.append(f"| {r['replicas']} | {r['replicas'] * WORKERS} | {r['rate']:.0f} | {each} | "
                     f"{r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {statuses} | {r['errors']} | {spread} "
                     f"| {100 * r['others']:.0f} % |")
    lines += [
        "",
        "Every 201 of a run is a booking in the database; the database holds at most one more per connection, "
        "the requests in flight when the load stopped (checked after each run; in all: "
        + ", ".join(f"{r['replicas']} replica{'s' if r['replicas'] > 1 else ''}: {r['created']} answered 201, "
                    f"{r['stored']} stored" for r in rows) + ").",
        "",
        comparison(rows, cpus),
        "",
    ]
    return "\n".join(lines)


def comparison(rows: list[dict[str, Any]], cpus: int | None) -> str:
    """What the two rows say, in words."""
    one, two = rows
    rate1, rate2 = one["rate"], two["rate"]
    busy = max(r["others"] for r in rows)
    text = (f"With the second replica the rate went from {rate1:.0f} to {rate2:.0f} bookings/s "
            f"({(rate2 / rate1 - 1) * 100:+.0f} %) and the median run's p99 from {one['p99_ms']:.0f} to "
            f"{two['p99_ms']:.0f} ms. Twice the gunicorn workers take the {CONNECTIONS} connections' requests, "
            f"but no processor comes with them: PostgreSQL, RabbitMQ, nginx, the relays, consumers and notify's "
            f"workers (an invitation per booking) share the same {cpus} cores with the load generator, so on "
            "one machine the rate cannot grow with the replicas. ")
    if busy > 0.10:
        text += (f"Other work took up to {100 * busy:.0f} % of the machine's CPUs during a run, which moves "
                 "single runs by tens of per cent (the \"each run\" column). ")
    else:
        text += (f"Nothing else weighed on the runs: processes outside the bench, PostgreSQL and RabbitMQ used "
                 f"at most {100 * busy:.0f} % of the CPUs during any of them. ")
    text += ("Across machines each replica brings its own CPUs and the rate grows with them until PostgreSQL's "
             "commit rate bounds it. What a second replica buys everywhere is availability: one can die or "
             "restart without clients noticing (tests/e2e/test_stack.py).")
    return text


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
