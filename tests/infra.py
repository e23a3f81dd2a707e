"""Access to the machine's PostgreSQL and RabbitMQ for tests: fresh databases, a vhost, clear skips;
and deploy/'s scripts as modules.

``create_database``, ``drop_database`` and ``deploy_script`` need no pytest run: the benchmarks use them too.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import text

from shared.db import admin_engine

PG_ADMIN_URL = os.environ.get("LABSHARE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_HOST = os.environ.get("LABSHARE_TEST_AMQP_HOST", "127.0.0.1")
REQUIRED = os.environ.get("LABSHARE_REQUIRE_SERVICES") == "1"
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def deploy_script(relative: str) -> ModuleType:
    """``deploy/<relative>`` as a module, loaded once per process (deploy/ holds scripts, not a package)."""
    name = "labshare_deploy_" + relative.removesuffix(".py").replace("/", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DEPLOY / relative)
    assert spec and spec.loader, relative
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def unavailable(message: str) -> None:
    """Skip, or fail when the services (and tools) are required (LABSHARE_REQUIRE_SERVICES=1)."""
    if REQUIRED:
        pytest.fail(f"{message}, and LABSHARE_REQUIRE_SERVICES=1")
    pytest.skip(message)


def nginx_binary() -> str:
    """The machine's nginx (also where Debian puts it, outside a user's PATH), or skip/fail."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not binary:
        unavailable("nginx is not installed (apt-get install nginx)")
    return binary


def port_open(host: str, port: int) -> bool:
    """Whether something listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need(name: str, host: str, port: int) -> None:
    """Skip (or fail, when services are required) if a server is not reachable."""
    if port_open(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if REQUIRED:
        pytest.fail(f"{message}, and LABSHARE_REQUIRE_SERVICES=1")
    pytest.skip(f"{message}; start it to run this test")


def create_database(admin_url: str = PG_ADMIN_URL, prefix: str = "labshare_test") -> str:
    """Create an empty database ``<prefix>_<random>`` on the server ``admin_url`` points at; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = admin_engine(admin_url)
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def fresh_database() -> str:
    """Create an empty PostgreSQL database for a test (skipped without PostgreSQL); returns its URL."""
    need("PostgreSQL", "127.0.0.1", 5432)
    return create_database()


def drop_database(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    """Drop a database made by ``create_database``, closing what still uses it."""
    name = url.rsplit("/", 1)[1]
    engine = admin_engine(admin_url)
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def create_vhost() -> tuple[str, str]:
    """A vhost of its own for this test run; returns (vhost, amqp url)."""
    need("RabbitMQ", AMQP_HOST, 5672)
    if shutil.which("rabbitmqctl") is None:
        if REQUIRED:
            pytest.fail("rabbitmqctl is needed to create a test vhost")
        pytest.skip("rabbitmqctl is not installed; cannot create an isolated vhost")
    vhost = f"labshare-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost, f"amqp://guest:guest@{AMQP_HOST}:5672/{vhost}"


def delete_vhost(vhost: str) -> None:
    """Remove a test vhost and everything in it."""
    _rabbitmqctl("delete_vhost", vhost)
