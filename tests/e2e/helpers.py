"""Helpers for end-to-end tests: labshare processes started as a user starts them, and an HTTP client.

Nothing here imports the services: the tests only start commands and speak HTTP.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
OSLO = zoneinfo.ZoneInfo("Europe/Oslo")


def venv_bin(name: str) -> str:
    """A program of the project's virtualenv (``.venv/bin/<name>``), else the one next to this interpreter."""
    candidate = REPO / ".venv" / "bin" / name
    if candidate.exists():
        return str(candidate)
    return str(Path(sys.executable).parent / name)


PYTHON = venv_bin("python")
GUNICORN = venv_bin("gunicorn")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**values: str) -> dict[str, str]:
    """The current environment without any ``LABSHARE_*`` variable, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABSHARE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(values)
    return env


# -- processes ------------------------------------------------------------------------------------


class Proc:
    """One started process; its stdout and stderr go to files so that it can never block on a pipe."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.expected_exit = False  # set when a test stops or kills it on purpose
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = f"{name}.{time.monotonic_ns()}"
        self.stdout_path = log_dir / f"{stamp}.out"
        self.stderr_path = log_dir / f"{stamp}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv, env=env, cwd=REPO, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def report(self, tail: int = 4000) -> str:
        """The process's state and the end of its output, for assertion messages."""
        state = "running" if self.alive() else f"exited with {self.popen.returncode}"
        return (
            f"--- {self.name} (pid {self.pid}, {state}): {' '.join(self.argv)}\n"
            f"stdout: ...{self.stdout()[-tail:]}\nstderr: ...{self.stderr()[-tail:]}\n"
        )

    def signal(self, signum: int) -> None:
        """Send ``signum`` to this process only."""
        if self.alive():
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then after ``timeout`` SIGKILL of the process group this process leads.

        The group is only signalled while its leader is not yet reaped, so its id cannot have been reused.
        """
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)  # with its children (gunicorn workers)
            self.popen.wait(5)
        return self.popen.returncode


class Processes:
    """Every process a test started, so that teardown can stop them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, env, self.log_dir)
        self.procs.append(proc)
        return proc

    def report(self) -> str:
        return "\n".join(p.report() for p in self.procs)

    def check_alive(self) -> None:
        """Fail at once (with the logs) when a process that should run has died."""
        dead = [p for p in self.procs if not p.alive() and not p.expected_exit]
        if dead:
            raise AssertionError("a labshare process died:\n" + "\n".join(p.report() for p in dead))

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def wait_until(check: Callable[[], Any], timeout: float, what: str, procs: Processes | None = None,
               interval: float = 0.1) -> Any:
    """Poll ``check()`` until it returns something truthy; on timeout fail with the processes' logs."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except requests.RequestException as exc:  # not listening yet
            last_error = exc
        if procs is not None:
            procs.check_alive()
        if time.monotonic() > deadline:
            logs = procs.report() if procs is not None else ""
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})\n{logs}"
            )
        time.sleep(interval)


# -- HTTP -----------------------------------------------------------------------------------------


class Api:
    """A small client of one labshare origin."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self.http = requests.Session()

    def url(self, path: str) -> str:
        return self.base + path

    def request(self, method: str, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        kw.setdefault("timeout", 15)
        return self.http.request(method, self.url(path), headers=headers, **kw)

    def get(self, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        return self.request("GET", path, token, **kw)

    def post(self, path: str, token: str | None = None, json: Any = None, **kw: Any) -> requests.Response:
        return self.request("POST", path, token, json=json, **kw)

    def healthy(self) -> bool:
        return self.get("/healthz", timeout=2).status_code == 200

    def token(self, sub: str, roles: list[str] | None = None, org: str = "ntnu", **claims: str) -> str:
        """A development token from ``POST /api/v1/dev/token``."""
        body = {"sub": sub, "name": claims.get("name", sub.title()), "email": claims.get("email", f"{sub}@example.org"),
                "org": org, "roles": roles or ["researcher"]}
        resp = self.post("/api/v1/dev/token", json=body)
        assert resp.status_code == 201, (resp.status_code, resp.text)
        return resp.json()["token"]

    def knows_resource(self, token: str, resource_id: str) -> bool:
        """Whether booking's read model has the resource (availability is 404 until it has)."""
        return self.get(f"/api/v1/availability?resource_id={resource_id}", token, timeout=5).status_code == 200


def expect(resp: requests.Response, status: int) -> Any:
    """Assert the status (showing the body otherwise) and return the JSON body, if any."""
    assert resp.status_code == status, f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:2000]}"
    if resp.content and "json" in resp.headers.get("Content-Type", ""):
        return resp.json()
    return None


def expect_problem(resp: requests.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem document with ``status``."""
    assert resp.status_code == status, f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:2000]}"
    assert resp.headers.get("Content-Type", "").startswith("application/problem+json"), resp.headers
    body = resp.json()
    for member in ("type", "title", "status", "detail"):
        assert member in body, body
    assert body["status"] == status, body
    assert "Traceback" not in resp.text and "<html" not in resp.text.lower()
    return body


# -- time -----------------------------------------------------------------------------------------


def next_weekday(weekday: int, hour: int, minute: int = 0, min_days: int = 2) -> dt.datetime:
    """The next ``weekday`` (0 = Monday) at least ``min_days`` ahead, at a wall-clock time in Oslo."""
    day = dt.datetime.now(OSLO).date() + dt.timedelta(days=min_days)
    while day.weekday() != weekday:
        day += dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=OSLO)


def utc(value: dt.datetime) -> str:
    """How the API writes a timestamp: UTC with ``Z``."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(value: str) -> dt.datetime:
    """An RFC 3339 timestamp from the API."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
