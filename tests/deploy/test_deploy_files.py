"""The deployment files, checked without a container engine.

- docker-compose.yml: the compose-spec JSON schema, then what the schema cannot
  know (services, commands, dependencies, health checks, mounts, credentials);
- deploy/Dockerfile and .dockerignore, read as text;
- deploy/gunicorn.conf.py: loaded by gunicorn and serving a stand-in app;
- deploy/rabbitmq: the definitions against the services' own topology code, and
  imported into the machine's RabbitMQ (a throw-away virtual host);
- deploy/postgres/init.sql: run on the machine's PostgreSQL in a transaction that
  is rolled back (in a throw-away database);
- deploy/nginx.conf: rendered, checked by ``nginx -t``, then started in front of
  stand-ins for the three services and the web app, and in front of the web app
  itself as docker-compose.yml runs it.

What needs a program or server this machine lacks (nginx, psql, rabbitmqctl, a
running PostgreSQL or RabbitMQ) is skipped with the reason, or fails when
LABSHARE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.infra import deploy_script, nginx_binary, unavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEFINITIONS_FILE = DEPLOY / "rabbitmq" / "definitions.json"


render_nginx = deploy_script("render_nginx.py")
render_definitions = deploy_script("rabbitmq/render_definitions.py")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# ==== docker-compose.yml ===============================================================

API_SERVICES = {"inventory-api": "inventory", "booking-api": "booking", "notify-api": "notify"}
WORKER_SERVICES = {
    "inventory-relay": "inventory",
    "booking-relay": "booking",
    "notify-relay": "notify",
    "booking-consumer": "booking",
    "notify-consumer": "notify",
}
APP_SERVICES = {"migrate", *API_SERVICES, *WORKER_SERVICES, "web"}

EXPECTED_COMMANDS = {
    "migrate": ["python", "-m", "services", "migrate"],
    "inventory-api": ["gunicorn", "-c", "deploy/gunicorn.conf.py", "services.inventory.app:create_app()"],
    "booking-api": ["gunicorn", "-c", "deploy/gunicorn.conf.py", "services.booking.app:create_app()"],
    "notify-api": ["gunicorn", "-c", "deploy/gunicorn.conf.py", "services.notify.app:create_app()"],
    "inventory-relay": ["python", "-m", "services.inventory", "relay"],
    "booking-relay": ["python", "-m", "services.booking", "relay"],
    "notify-relay": ["python", "-m", "services.notify", "relay"],
    "booking-consumer": ["python", "-m", "services.booking", "consume"],
    "notify-consumer": ["python", "-m", "services.notify", "consume"],
    "web": ["gunicorn", "-c", "deploy/gunicorn.conf.py", "services.web.app:create_app()"],
}

_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable interpolation, enough for this file (no nesting)."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?"):
            if not current:
                raise ValueError(f"{name} is required: {arg}")
            return current
        return current or ""

    return _INTERPOLATION.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def _depends(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def test_compose_matches_the_compose_specification(compose):
    import check_jsonschema
    import jsonschema

    schema_file = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_has_every_service(compose):
    assert set(compose["services"]) == APP_SERVICES | {"postgres", "rabbitmq", "gateway", "mailpit"}
    assert compose["services"]["mailpit"].get("profiles") == ["dev"]
    for name, service in compose["services"].items():
        if name != "mailpit":
            assert not service.get("profiles"), f"{name} must start without a profile"


def test_compose_app_services_run_one_image_built_from_deploy_dockerfile(compose):
    services = compose["services"]
    images = set()
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name} has neither image nor build"
        if name in APP_SERVICES:
            build = service["build"]
            assert (ROOT / build["context"]).resolve() == ROOT
            assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
            images.add(service["image"])
        else:
            assert "build" not in service, name
            image = service["image"]
            tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
            assert re.search(r"\d+\.\d+", tag), f"{name}: pin a version, not {image!r}"
    assert len(images) == 1, images
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.13") and "management" in services["rabbitmq"]["image"]
    assert services["gateway"]["image"].startswith("nginx:")


def test_compose_commands_are_the_services_entry_points(compose):
    for name, expected in EXPECTED_COMMANDS.items():
        assert compose["services"][name]["command"] == expected, name


def test_compose_dependencies_exist_and_are_ordered(compose):
    services = compose["services"]
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for target, spec in _depends(service).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec.get("condition", "service_started") in valid
            if spec.get("condition") == "service_healthy":
                assert services[target].get("healthcheck", {}).get("test"), f"{target} has no healthcheck"
            if spec.get("condition") == "service_completed_successfully":
                assert target == "migrate"
    assert _depends(services["migrate"]) == {"postgres": {"condition": "service_healthy"}}
    for name in set(API_SERVICES) | set(WORKER_SERVICES):
        deps = _depends(services[name])
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
    for name in WORKER_SERVICES:
        assert _depends(services[name])["rabbitmq"]["condition"] == "service_healthy", name
    gateway = _depends(services["gateway"])
    assert {k: v["condition"] for k, v in gateway.items()} == dict.fromkeys([*API_SERVICES, "web"], "service_healthy")
    # Restarted with each of them, so that nginx resolves their new addresses.
    assert all(spec.get("restart") is True for spec in gateway.values())
    # The web app reaches the API through the gateway at request time, so it waits for nothing.
    assert _depends(services["web"]) == {}

    # No cycles: a topological order exists.
    order, pending = [], dict(services)
    while pending:
        ready = [n for n, s in pending.items() if all(d in order for d in _depends(s))]
        assert ready, f"dependency cycle among {sorted(pending)}"
        order += ready
        for n in ready:
            del pending[n]


def test_compose_every_long_running_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        if name == "migrate":
            assert service.get("restart") == "no"
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        test = check["test"]
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, name
        assert not check.get("disable"), name
    for name in API_SERVICES:
        code = compose["services"][name]["healthcheck"]["test"][-1]
        assert "http://127.0.0.1:8000/healthz" in code
    assert "/healthz" in " ".join(compose["services"]["gateway"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/static/app.css" in compose["services"]["web"]["healthcheck"]["test"][-1]


def test_compose_bind_mounts_exist(compose):
    mounted = {}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = interpolate(volume).split(":")[:2]
            if source.startswith("."):
                path = (ROOT / source).resolve()
                assert path.exists(), f"{name}: {source} does not exist"
                mounted[target] = path
    assert mounted["/docker-entrypoint-initdb.d/10-labshare.sql"] == DEPLOY / "postgres" / "init.sql"
    assert mounted["/etc/rabbitmq/rabbitmq.conf"] == DEPLOY / "rabbitmq" / "rabbitmq.conf"
    assert mounted["/etc/rabbitmq/definitions.json"] == DEFINITIONS_FILE
    assert mounted["/etc/nginx/templates/nginx.conf.template"] == DEPLOY / "nginx.conf"
    assert set(compose["volumes"]) >= {"postgres-data", "rabbitmq-data", "web-data"}


def test_rabbitmq_loads_the_definitions_file():
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8")
    settings = dict(
        (k.strip(), v.strip())
        for k, v in (line.split("=", 1) for line in conf.splitlines() if line.strip() and not line.startswith("#"))
    )
    assert settings["load_definitions"] == "/etc/rabbitmq/definitions.json"


def test_compose_each_process_gets_only_its_own_credentials(compose):
    services = compose["services"]
    pg = _env(services["postgres"])
    for name in set(API_SERVICES) | set(WORKER_SERVICES):
        svc = (API_SERVICES | WORKER_SERVICES)[name]
        env = _env(services[name])
        assert "LABSHARE_DATABASE_URL" not in env, name
        db_urls = {k: v for k, v in env.items() if k.endswith("_DATABASE_URL")}
        assert list(db_urls) == [f"LABSHARE_{svc.upper()}_DATABASE_URL"], name
        db = urlsplit(db_urls[f"LABSHARE_{svc.upper()}_DATABASE_URL"])
        assert (db.scheme, db.hostname, db.port, db.path) == ("postgresql", "postgres", 5432, "/labshare")
        assert db.username == f"labshare_{svc}"
        assert db.password == pg[f"LABSHARE_{svc.upper()}_DB_PASSWORD"], name
        broker = urlsplit(env["LABSHARE_BROKER_URL"])
        assert (broker.scheme, broker.hostname, broker.port, broker.path) == ("amqp", "rabbitmq", 5672, "/%2F")
        assert broker.username == f"labshare-{svc}", name
        assert env.get("LABSHARE_DEV_MODE", "0") in {"0", "false", ""}, name
        assert "LABSHARE_OIDC_ISSUER" in env and "LABSHARE_OIDC_AUDIENCE" in env, name
    migrate = _env(services["migrate"])
    for svc in ("inventory", "booking", "notify"):
        assert urlsplit(migrate[f"LABSHARE_{svc.upper()}_DATABASE_URL"]).username == f"labshare_{svc}"
    for name in API_SERVICES:
        assert _env(services[name])["LABSHARE_BIND"] == "0.0.0.0:8000"
    assert _env(services["notify-consumer"])["LABSHARE_SMTP_URL"].startswith("smtp://")


def test_compose_web_app_settings(compose):
    """The web app: no database or broker, the API through the gateway, its login and session key."""
    services = compose["services"]
    web, gateway = services["web"], services["gateway"]
    env = _env(web)
    assert not {k for k in env if k.endswith(("_DATABASE_URL", "_BROKER_URL", "_PASSWORD"))}
    assert env["LABSHARE_DEV_MODE"] == "0"
    assert env["LABSHARE_BIND"] == "0.0.0.0:8000" and web["expose"] == ["8000"]
    # The API through the gateway: its service name and the port it listens on, on the same network.
    api = urlsplit(env["LABSHARE_API_URL"])
    listen = _env(gateway)["GATEWAY_LISTEN"]
    assert (api.scheme, api.hostname, str(api.port), api.path) == ("http", "gateway", listen, "")
    assert web.get("networks", ["default"]) == gateway.get("networks", ["default"]) == ["default"]
    # Logins: the OIDC issuer (shared) and the web app's own client.
    for name in ("LABSHARE_OIDC_ISSUER", "LABSHARE_OIDC_CLIENT_ID", "LABSHARE_OIDC_CLIENT_SECRET",
                 "LABSHARE_PUBLIC_URL"):
        assert name in env, name
    assert web["environment"]["LABSHARE_OIDC_CLIENT_SECRET"] == "${LABSHARE_OIDC_CLIENT_SECRET:-}"
    # The session key from the environment, else the file the web app keeps in its data volume.
    assert web["environment"]["LABSHARE_WEB_SECRET_KEY"] == "${LABSHARE_WEB_SECRET_KEY:-}"
    assert interpolate(web["environment"]["LABSHARE_WEB_SECRET_KEY"], {"LABSHARE_WEB_SECRET_KEY": "k1"}) == "k1"
    assert f"web-data:{env['LABSHARE_DATA_DIR']}" in web["volumes"]
    # The image makes that directory for the unprivileged user, so the new volume is theirs.
    runtime = _dockerfile_instructions()
    user = [rest for word, rest in runtime if word == "USER"][-1].split(":")[0]
    assert any(word == "RUN" and f"-o {user}" in rest and rest.endswith(env["LABSHARE_DATA_DIR"])
               for word, rest in runtime)


def test_compose_default_broker_passwords_match_the_definitions(compose):
    users = {u["name"]: u for u in json.loads(DEFINITIONS_FILE.read_text(encoding="utf-8"))["users"]}
    for name in set(API_SERVICES) | set(WORKER_SERVICES):
        broker = urlsplit(_env(compose["services"][name])["LABSHARE_BROKER_URL"])
        user = users[broker.username]
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert render_definitions.check_password(broker.password, user["password_hash"]), name


def test_compose_gateway_fills_every_placeholder_of_the_template(compose):
    services = compose["services"]
    gateway = services["gateway"]
    env = _env(gateway)
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    names = render_nginx.placeholders()
    assert names == set(render_nginx.DEFAULTS)
    assert {k for k in env if k.startswith("GATEWAY_")} == names
    assert all(re.search(env["NGINX_ENVSUBST_FILTER"], n) for n in names)
    image_env = ("PATH", "HOME", "HOSTNAME", "NGINX_VERSION", "NJS_VERSION", "PKG_RELEASE", "NGINX_ENVSUBST_FILTER")
    assert not any(re.search(env["NGINX_ENVSUBST_FILTER"], k) for k in image_env)
    values = {k: env[k] for k in names}
    assert values == render_nginx.DEFAULTS
    render_nginx.resolve(values, env={})  # valid values
    # inventory:8000 etc. are the API services' network aliases and ports.
    for api, svc in API_SERVICES.items():
        host, port = env[f"GATEWAY_{svc.upper()}_UPSTREAM"].split(":")
        assert host in services[api]["networks"]["default"]["aliases"]
        assert _env(services[api])["LABSHARE_BIND"].endswith(f":{port}")
    # web:8000 is the web app's service name and port.
    host, port = env["GATEWAY_WEB_UPSTREAM"].split(":")
    assert host in services and _env(services[host])["LABSHARE_BIND"].endswith(f":{port}")
    assert gateway["ports"] == ["${LABSHARE_PORT:-8080}:8080"] and env["GATEWAY_LISTEN"] == "8080"


def _run_healthcheck(code: str, env: dict[str, str], timeout: float = 15) -> int:
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=timeout, capture_output=True).returncode


def test_compose_api_healthcheck_passes_only_on_200(compose):
    code = compose["services"]["booking-api"]["healthcheck"]["test"][-1]
    stub = Stub("booking")
    try:
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{stub.port}")
        assert _run_healthcheck(code, {}) == 0
        stub.health = 503
        assert _run_healthcheck(code, {}) != 0
    finally:
        stub.close()
    assert _run_healthcheck(code, {}) != 0  # nothing listening


def test_compose_web_healthcheck_asks_for_the_stylesheet(compose):
    code = compose["services"]["web"]["healthcheck"]["test"][-1]
    stub = Stub("web")
    try:
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{stub.port}")
        assert _run_healthcheck(code, {}) == 0 and stub.hits("/static/app.css") == 1
        stub.health = 503
        assert _run_healthcheck(code, {}) != 0
    finally:
        stub.close()


def test_compose_worker_healthcheck_reaches_database_and_broker(compose):
    code = compose["services"]["booking-consumer"]["healthcheck"]["test"][-1]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        env = {
            "LABSHARE_BOOKING_DATABASE_URL": f"postgresql://u:p@127.0.0.1:{port}/labshare",
            "LABSHARE_BROKER_URL": f"amqp://u:p@127.0.0.1:{port}/%2F",
        }
        assert _run_healthcheck(code, env) == 0
    closed = _free_port()
    assert _run_healthcheck(code, {**env, "LABSHARE_BROKER_URL": f"amqp://u:p@127.0.0.1:{closed}/%2F"}) != 0


# ==== deploy/Dockerfile ====================================================================


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_pinned_and_unprivileged():
    instructions = _dockerfile_instructions()
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    runtime_at = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    builder, runtime = instructions[:runtime_at], instructions[runtime_at:]
    assert any(word == "RUN" and "pip wheel" in rest for word, rest in builder)
    assert any(word == "RUN" and "pip install --no-index" in rest and "/wheels" in rest for word, rest in runtime)
    assert not any(word == "RUN" and "pip wheel" in rest for word, rest in runtime)
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    workdir = [rest for word, rest in runtime if word == "WORKDIR"][-1]
    assert workdir == "/app"
    assert ("COPY", "deploy/gunicorn.conf.py deploy/gunicorn.conf.py") in runtime
    cmd = [rest for word, rest in instructions if word == "CMD"]
    assert len(cmd) == 1 and json.loads(cmd[0]) == EXPECTED_COMMANDS["inventory-api"]
    assert not [rest for word, rest in instructions if word in {"ADD", "ENTRYPOINT"}]


def test_dockerfile_copies_only_what_exists_and_is_not_ignored():
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv", "var"} <= set(ignored)
    for word, rest in _dockerfile_instructions():
        if word == "COPY" and "--from" not in rest:
            *sources, _target = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
                top = source.strip("/").split("/")[0]
                assert top not in ignored, f"COPY {source}: excluded by .dockerignore"


# ==== deploy/gunicorn.conf.py ============================================================

GUNICORN_CONF = DEPLOY / "gunicorn.conf.py"


def _gunicorn_config(monkeypatch, **env: str):
    from gunicorn.config import Config

    for key in [k for k in os.environ if k.startswith("LABSHARE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    namespace = {"__file__": str(GUNICORN_CONF), "__name__": "__config__"}
    exec(compile(GUNICORN_CONF.read_text(encoding="utf-8"), str(GUNICORN_CONF), "exec"), namespace)  # noqa: S102
    cfg = Config()
    for key, value in namespace.items():
        if key in cfg.settings:
            cfg.set(key, value)
    return cfg, namespace


def test_gunicorn_defaults(monkeypatch):
    cfg, ns = _gunicorn_config(monkeypatch)
    assert cfg.bind == ["0.0.0.0:8000"]
    assert cfg.worker_class_str == "sync"
    assert cfg.workers == min(2 * ns["available_cpus"]() + 1, 12) >= 3
    assert cfg.timeout == 30 and cfg.graceful_timeout == 30 and cfg.keepalive == 5
    assert cfg.max_requests == 100_000 and cfg.max_requests_jitter == 10_000
    assert cfg.accesslog == "-" and cfg.errorlog == "-"
    assert cfg.preload_app is False
    assert cfg.logger_class is ns["JsonAccessLogger"]
    assert callable(cfg.post_fork)


def test_gunicorn_workers_freeze_their_start_up_heap():
    """post_worker_init moves what start-up made out of the collector's way (gc.freeze)."""
    script = ("import gc, runpy; ns = runpy.run_path('deploy/gunicorn.conf.py'); before = gc.get_freeze_count(); "
              "ns['post_worker_init'](None); print(before, gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, after = map(int, out.stdout.split())
    assert before == 0 and after > 10_000


def test_gunicorn_environment_overrides(monkeypatch):
    cfg, _ = _gunicorn_config(
        monkeypatch,
        LABSHARE_BIND="127.0.0.1:9100",
        LABSHARE_WORKERS="3",
        LABSHARE_WORKER_CLASS="gthread",
        LABSHARE_THREADS="4",
        LABSHARE_TIMEOUT="45",
        LABSHARE_LOG_LEVEL="WARNING",
    )
    assert cfg.bind == ["127.0.0.1:9100"]
    assert (cfg.workers, cfg.worker_class_str, cfg.threads, cfg.timeout) == (3, "gthread", 4, 45)
    assert cfg.loglevel == "warning"
    with pytest.raises(ValueError, match="LABSHARE_WORKERS"):
        _gunicorn_config(monkeypatch, LABSHARE_WORKERS="many")


STUB_WSGI_APP = """
import json


def create_app():
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/healthz":
            body = json.dumps({"status": "ok"}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                      ("X-Request-Id", "made-up-by-the-app")])
            return [body]
        start_response("404 NOT FOUND", [("Content-Type", "application/problem+json")])
        return [b'{"status": 404}']
    return app
"""


def test_gunicorn_serves_an_app_factory_and_logs_json_lines(tmp_path):
    (tmp_path / "stubapp.py").write_text(STUB_WSGI_APP, encoding="utf-8")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABSHARE_")}
    env.update(LABSHARE_BIND=f"127.0.0.1:{port}", LABSHARE_WORKERS="1", LABSHARE_MAX_REQUESTS="0")
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "stubapp:create_app()"],
            cwd=tmp_path,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            assert _wait_for_port(port, proc), err.read_text()
            assert _get(port, "/healthz")[0] == 200
            status, _, _ = _get(port, '/odd"path\\x?q="v"', headers={"X-Request-Id": "req-42", "User-Agent": 'a"b\tc'})
            assert status == 404
        finally:
            _stop(proc)
    lines = [line for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every stdout line is JSON
    assert len(records) == 2, lines
    health, odd = records
    assert health["path"] == "/healthz" and health["status"] == 200 and health["bytes"] > 0
    assert health["request_id"] == "made-up-by-the-app"  # none came in: the one the app returned
    assert health["remote_addr"] == "127.0.0.1" and health["protocol"] == "HTTP/1.1"
    assert odd["path"] == '/odd"path\\x' and odd["query"] == 'q="v"' and odd["status"] == 404
    assert odd["request_id"] == "req-42" and odd["user_agent"] == 'a"b\tc' and odd["method"] == "GET"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", odd["time"])
    assert isinstance(odd["duration_ms"], int) and isinstance(odd["pid"], int)


# ==== deploy/rabbitmq ======================================================================

QUEUE_ARGUMENTS = {
    "labshare.booking": {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "labshare.dead",
        "x-dead-letter-routing-key": "labshare.booking",
        "x-delivery-limit": 20,
    },
    "labshare.notify": {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "labshare.dead",
        "x-dead-letter-routing-key": "labshare.notify",
        "x-delivery-limit": 20,
    },
}
BINDINGS = {
    "labshare.booking": {"lab.*", "resource.*", "outage.*", "qualification.*"},
    "labshare.notify": {"booking.*", "waitlist.*", "lab.*", "resource.*", "outage.*"},
}


@pytest.fixture(scope="module")
def definitions() -> dict:
    return json.loads(DEFINITIONS_FILE.read_text(encoding="utf-8"))


def test_definitions_topology(definitions):
    assert [v["name"] for v in definitions["vhosts"]] == ["/"]
    exchanges = {e["name"]: e for e in definitions["exchanges"]}
    assert set(exchanges) == {"labshare.events", "labshare.dead"}
    for name, kind in (("labshare.events", "topic"), ("labshare.dead", "direct")):
        e = exchanges[name]
        assert (e["vhost"], e["type"], e["durable"], e["auto_delete"], e["internal"], e["arguments"]) == (
            "/",
            kind,
            True,
            False,
            False,
            {},
        )
    queues = {q["name"]: q for q in definitions["queues"]}
    assert set(queues) == {"labshare.booking", "labshare.notify", "labshare.booking.dead", "labshare.notify.dead"}
    for name, arguments in QUEUE_ARGUMENTS.items():
        q = queues[name]
        assert (q["vhost"], q["durable"], q["auto_delete"]) == ("/", True, False)
        assert q["arguments"] == arguments
        assert type(q["arguments"]["x-delivery-limit"]) is int
        dead = queues[f"{name}.dead"]
        assert (dead["durable"], dead["auto_delete"], dead["arguments"]) == (True, False, {})
    bound: dict[tuple[str, str], set[str]] = {}
    for b in definitions["bindings"]:
        assert b["vhost"] == "/" and b["destination_type"] == "queue" and b["arguments"] == {}
        bound.setdefault((b["source"], b["destination"]), set()).add(b["routing_key"])
    assert bound == {
        ("labshare.events", "labshare.booking"): BINDINGS["labshare.booking"],
        ("labshare.events", "labshare.notify"): BINDINGS["labshare.notify"],
        ("labshare.dead", "labshare.booking.dead"): {"labshare.booking"},
        ("labshare.dead", "labshare.notify.dead"): {"labshare.notify"},
    }
    assert len(definitions["bindings"]) == sum(len(v) for v in bound.values())
    policies = definitions["policies"]
    assert len(policies) >= 1
    for policy in policies:
        assert policy["vhost"] == "/" and policy["apply-to"] in {"queues", "all", "exchanges"} and policy["definition"]
        matched = {q for q in queues if re.search(policy["pattern"], q)}
        assert matched, policy
    dead_policy = next(p for p in policies if re.search(p["pattern"], "labshare.booking.dead"))
    assert not re.search(dead_policy["pattern"], "labshare.booking")


def test_definitions_match_what_the_services_declare(definitions):
    """The services declare the same topology at run time; RabbitMQ refuses a mismatch."""
    from shared import messaging
    from shared.config import Settings

    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    queues = {q["name"]: q for q in definitions["queues"]}
    assert settings.exchange == "labshare.events" and settings.queue_prefix == "labshare"
    assert messaging.DEAD_EXCHANGE == "labshare.dead"
    assert {f"labshare.{s}" for s in messaging.SUBSCRIPTIONS} == set(QUEUE_ARGUMENTS)
    events = messaging.events_exchange(settings)
    assert (events.name, events.type, events.durable, events.auto_delete) == ("labshare.events", "topic", True, False)
    dead = messaging.dead_exchange()
    assert (dead.name, dead.type, dead.durable, dead.auto_delete) == ("labshare.dead", "direct", True, False)
    for service in messaging.SUBSCRIPTIONS:
        queue = messaging.service_queue(settings, service)
        assert queues[queue.name]["arguments"] == queue.queue_arguments
        assert queue.durable and not queue.auto_delete and not queue.exclusive
        assert {b.routing_key for b in queue.bindings} == BINDINGS[queue.name]
        assert {b.exchange.name for b in queue.bindings} == {"labshare.events"}
        parked = messaging.dead_queue(settings, service)
        assert parked.name == f"{queue.name}.dead"
        assert queues[parked.name]["arguments"] == (parked.queue_arguments or {})
        assert (parked.exchange.name, parked.routing_key) == ("labshare.dead", queue.name)


# What each service's processes do on the broker (shared.messaging):
# - every relay and consumer declares both exchanges, all four queues and their bindings;
# - relays publish to labshare.events;
# - consumers read their queue, republish a failed message to it through the default
#   exchange, and park it in labshare.dead.
_ALL_DECLARED = ["labshare.events", "labshare.dead", *QUEUE_ARGUMENTS, *(f"{q}.dead" for q in QUEUE_ARGUMENTS)]


def _needed(service: str) -> dict[str, set[str]]:
    queues = {*QUEUE_ARGUMENTS, *(f"{q}.dead" for q in QUEUE_ARGUMENTS)}
    needed = {
        "configure": {"labshare.events", "labshare.dead", *queues},
        "write": {"labshare.events", *queues},  # publish; queue.bind needs write on the queue
        "read": {"labshare.events", "labshare.dead"},  # queue.bind needs read on the exchange
    }
    if service != "inventory":
        needed["write"] |= {"amq.default", "labshare.dead"}
        needed["read"].add(f"labshare.{service}")
    return needed


def test_definitions_give_each_service_only_the_permissions_it_needs(definitions):
    perms = {p["user"]: p for p in definitions["permissions"]}
    users = {u["name"]: u for u in definitions["users"]}
    assert set(perms) == set(users) == {"labshare-admin", "labshare-inventory", "labshare-booking", "labshare-notify"}
    assert users["labshare-admin"]["tags"] == ["administrator"]
    everything = {"labshare.events", "labshare.dead", "amq.default", "amq.topic", "other", *_ALL_DECLARED}
    for service in ("inventory", "booking", "notify"):
        user = f"labshare-{service}"
        assert users[user]["tags"] == [], user
        assert perms[user]["vhost"] == "/"
        for kind, names in _needed(service).items():
            pattern = perms[user][kind]
            granted = {n for n in everything if re.search(pattern, n)}
            assert granted == names, f"{user} {kind}: granted {sorted(granted)}, needs {sorted(names)}"


def test_render_definitions_sets_password_hashes(monkeypatch):
    env = {v: f"pw-{k}" for k, v in render_definitions.PASSWORD_VARIABLES.items()}
    rendered = render_definitions.render(env)
    for user in rendered["users"]:
        assert render_definitions.check_password(f"pw-{user['name']}", user["password_hash"])
        assert not render_definitions.check_password("wrong", user["password_hash"])
    with pytest.raises(ValueError, match="LABSHARE_NOTIFY_AMQP_PASSWORD"):
        render_definitions.render({k: v for k, v in env.items() if "NOTIFY" not in k})
    # the documented example hash of guest/guest
    assert render_definitions.check_password("guest", "9/1i+jKFRpbTRV1PtRnzFFYibT3cEpP92JeZ8YKGtflf4e/u")


def _rabbitmqctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_definitions_import_into_rabbitmq_and_serve_the_services(definitions):
    if not shutil.which("rabbitmqctl"):
        unavailable("rabbitmqctl is not installed")
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        unavailable("no RabbitMQ on 127.0.0.1:5672")
    from kombu import Connection, Producer

    from shared import messaging
    from shared.config import Settings

    token = uuid.uuid4().hex[:10]
    vhost = f"labshare-deploy-test-{token}"
    defs = json.loads(json.dumps(definitions))
    defs["users"] = [u for u in defs["users"] if u["name"] != "labshare-admin"]
    defs["permissions"] = [p for p in defs["permissions"] if p["user"] != "labshare-admin"]
    passwords, rename = {}, {}
    for user in defs["users"]:
        rename[user["name"]] = f"{user['name']}-{token}"
        passwords[rename[user["name"]]] = uuid.uuid4().hex
        user["name"] = rename[user["name"]]
        user["password_hash"] = render_definitions.password_hash(passwords[user["name"]])
    for p in defs["permissions"]:
        p["user"] = rename[p["user"]]
    defs["vhosts"] = [{"name": vhost}]
    for section in ("permissions", "policies", "exchanges", "queues", "bindings"):
        for item in defs[section]:
            item["vhost"] = vhost
    # rabbitmqctl may run as the broker's user, who cannot read pytest's tmp_path.
    readable = Path(tempfile.mkdtemp(prefix="labshare-definitions-"))
    readable.chmod(0o755)
    (readable / "definitions.json").write_text(json.dumps(defs), encoding="utf-8")
    (readable / "definitions.json").chmod(0o644)
    try:
        result = _rabbitmqctl("import_definitions", str(readable / "definitions.json"))
    finally:
        shutil.rmtree(readable)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        settings = Settings(broker_url="amqp://unused@127.0.0.1//")

        def connect(service: str) -> Connection:
            user = rename[f"labshare-{service}"]
            return Connection(
                f"amqp://{user}:{passwords[user]}@127.0.0.1:5672/{vhost}",
                connect_timeout=5,
                transport_options={"confirm_publish": True},
            )

        # Every service declares the whole topology exactly as it runs: accepted as equivalent.
        for service in ("inventory", "booking", "notify"):
            with connect(service) as conn:
                messaging.declare_topology(settings, conn.channel())

        with connect("inventory") as conn:
            Producer(conn.channel()).publish(
                {"id": "e-1", "type": "lab.created"},
                exchange=messaging.events_exchange(settings),
                routing_key="lab.created",
                retry=False,
            )
            with pytest.raises(conn.channel_errors, match="ACCESS_REFUSED"):
                conn.channel().basic_get(queue="labshare.booking")  # not inventory's queue
        for service in ("booking", "notify"):
            with connect(service) as conn:
                channel = conn.channel()
                message = None
                for _ in range(50):
                    message = channel.basic_get(queue=f"labshare.{service}", no_ack=True)
                    if message:
                        break
                    time.sleep(0.05)
                assert message is not None and json.loads(message.body)["id"] == "e-1", service
                # a consumer's retry (default exchange) and parking (labshare.dead)
                producer = Producer(conn.channel())
                producer.publish({"id": "e-2"}, exchange="", routing_key=f"labshare.{service}", retry=False)
                producer.publish(
                    {"id": "e-3"}, exchange=messaging.dead_exchange(), routing_key=f"labshare.{service}", retry=False
                )
                with pytest.raises(conn.channel_errors, match="ACCESS_REFUSED"):
                    other = "notify" if service == "booking" else "booking"
                    conn.channel().basic_get(queue=f"labshare.{other}")
        listing = _rabbitmqctl("list_queues", "-p", vhost, "name", "messages", "type")
        counts = {line.split()[0]: (int(line.split()[1]), line.split()[2]) for line in listing.stdout.splitlines()[1:]}
        assert counts["labshare.booking"][1] == counts["labshare.notify"][1] == "quorum"
        assert counts["labshare.booking.dead"][0] == counts["labshare.notify.dead"][0] == 1
    finally:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        cleanups = [subprocess.Popen(["rabbitmqctl", "-q", "delete_vhost", vhost], **quiet)]
        cleanups += [subprocess.Popen(["rabbitmqctl", "-q", "delete_user", user], **quiet) for user in rename.values()]
        for proc in cleanups:
            proc.wait(timeout=60)


# ==== deploy/postgres/init.sql ===============================================================

INIT_SQL = DEPLOY / "postgres" / "init.sql"


def test_init_sql_reads_the_passwords_compose_passes(compose):
    text = INIT_SQL.read_text(encoding="utf-8")
    pg_env = _env(compose["services"]["postgres"])
    used = set(re.findall(r"\\getenv\s+\w+\s+(\w+)", text))
    assert used == {"LABSHARE_INVENTORY_DB_PASSWORD", "LABSHARE_BOOKING_DB_PASSWORD", "LABSHARE_NOTIFY_DB_PASSWORD"}
    assert used <= set(pg_env)
    assert pg_env["POSTGRES_DB"] == "labshare"


def _psql(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


@pytest.mark.integration
def test_init_sql_on_postgresql():
    if not shutil.which("psql"):
        unavailable("psql is not installed")
    if _psql("-d", "postgres", "-Atc", "SELECT 1").returncode != 0:
        unavailable("no PostgreSQL reachable with psql's defaults")
    count_roles = (
        "SELECT count(*) FROM pg_roles WHERE rolname IN ('labshare_inventory', 'labshare_booking', 'labshare_notify')"
    )
    roles_before = _psql("-d", "postgres", "-Atc", count_roles).stdout
    database = f"labshare_deploy_test_{uuid.uuid4().hex[:10]}"
    created = _psql("-d", "postgres", "-c", f'CREATE DATABASE "{database}"')
    assert created.returncode == 0, created.stderr
    passwords = {
        "LABSHARE_INVENTORY_DB_PASSWORD": "inv'pw",
        "LABSHARE_BOOKING_DB_PASSWORD": "book pw",
        "LABSHARE_NOTIFY_DB_PASSWORD": "notify-pw",
    }
    # Everything, roles included, happens in one transaction that is rolled back.
    script = f"""
BEGIN;
\\i {INIT_SQL}
\\i {INIT_SQL}
DO $$ BEGIN
  IF (SELECT count(*) FROM pg_roles WHERE rolname IN ('labshare_inventory', 'labshare_booking', 'labshare_notify')
      AND rolcanlogin AND NOT rolsuper AND NOT rolcreatedb AND NOT rolcreaterole) <> 3 THEN
    RAISE EXCEPTION 'roles missing or too powerful';
  END IF;
END $$;
SET ROLE labshare_booking;
CREATE SCHEMA IF NOT EXISTS booking;
CREATE TABLE booking.bookings (resource_id text, during tstzrange,
  EXCLUDE USING gist (resource_id WITH =, during WITH &&));
RESET ROLE;
SET ROLE labshare_inventory;
CREATE SCHEMA IF NOT EXISTS inventory;
DO $$ BEGIN
  PERFORM * FROM booking.bookings;
  RAISE EXCEPTION 'inventory can read booking''s schema';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END $$;
RESET ROLE;
SELECT 'labshare-init-ok';
ROLLBACK;
"""
    try:
        result = _psql("-d", database, "-At", env=passwords, stdin=script)
        assert result.returncode == 0, result.stderr
        assert "labshare-init-ok" in result.stdout
        missing = _psql(
            "-d",
            database,
            env={k: v for k, v in passwords.items() if "BOOKING" not in k},
            stdin=f"BEGIN;\n\\i {INIT_SQL}\nROLLBACK;\n",
        )
        assert missing.returncode != 0 and "LABSHARE_BOOKING_DB_PASSWORD is not set" in missing.stderr
        assert _psql("-d", "postgres", "-Atc", count_roles).stdout == roles_before, "roles must be rolled back"
    finally:
        _psql("-d", "postgres", "-c", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# ==== deploy/nginx.conf: rendering ===========================================================


def test_nginx_template_placeholders_and_rendering():
    template = render_nginx.TEMPLATE.read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{([^}]*)\}", template)) == set(render_nginx.DEFAULTS)
    assert not re.search(r"\$GATEWAY_", template), "write placeholders with braces"
    compose_text = render_nginx.render(env={})
    assert "${" not in compose_text
    for host in ("inventory:8000", "booking:8000", "notify:8000"):
        assert f"server {host};" in compose_text
    local = render_nginx.render(render_nginx.LOCAL, env={})
    for port in (8001, 8002, 8003):
        assert f"server 127.0.0.1:{port};" in local
    assert "listen 127.0.0.1:8080 default_server;" in local
    env_rendered = render_nginx.render(env={"GATEWAY_BOOKING_UPSTREAM": "10.0.0.5:9000", "UNRELATED": "x"})
    assert "server 10.0.0.5:9000;" in env_rendered
    # Whose X-Forwarded-For is believed: the web app (compose), this machine (local), or a list, one line each.
    assert "\n    set_real_ip_from web;\n    real_ip_header X-Forwarded-For;\n" in compose_text
    assert "set_real_ip_from 127.0.0.1;" in local
    several = render_nginx.render({"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8,fd00::/8,lb.internal"}, env={})
    assert "set_real_ip_from 10.0.0.0/8;\n    set_real_ip_from fd00::/8;\n    set_real_ip_from lb.internal;" in several
    for bad in ({"GATEWAY_BOOKING_UPSTREAM": "booking:8000; evil"}, {"GATEWAY_API_RATE": "fast"},
                {"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8; evil"}, {"GATEWAY_TRUSTED_PROXIES": ""}):
        with pytest.raises(ValueError):
            render_nginx.render(bad, env={})


def test_nginx_template_renders_the_same_with_envsubst():
    """What the nginx image does with the template equals what render_nginx.py does."""
    envsubst = shutil.which("envsubst")
    if not envsubst:
        pytest.skip("envsubst (gettext) is not installed")
    values = dict(render_nginx.DEFAULTS)
    names = " ".join(f"${{{k}}}" for k in values)
    result = subprocess.run(
        [envsubst, names],
        input=render_nginx.TEMPLATE.read_text(encoding="utf-8"),
        capture_output=True,
        text=True,
        env={**values, "PATH": os.environ.get("PATH", "")},
        timeout=10,
    )
    assert result.returncode == 0
    assert result.stdout == render_nginx.render(values, env={})


def test_render_nginx_command_line(tmp_path):
    out = tmp_path / "gw" / "nginx.conf"
    script = DEPLOY / "render_nginx.py"
    args = ["--local", "--state-dir", str(tmp_path / "gw"), "--out", str(out), "--booking", "127.0.0.1:9002"]
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    assert "server 127.0.0.1:9002;" in text and "server 127.0.0.1:8001;" in text
    assert f"pid {tmp_path / 'gw'}/nginx.pid;" in text
    bad = subprocess.run(
        [sys.executable, str(script), "--listen", "80; evil"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode != 0


def test_nginx_accepts_the_rendered_config(tmp_path):
    binary = nginx_binary()
    conf = render_nginx.write_local_config(tmp_path / "gw", listen=f"127.0.0.1:{_free_port()}")
    result = subprocess.run(
        render_nginx.nginx_command(conf, nginx=binary, test=True), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr
    # Trusted proxies as addresses, networks of either family, and host names (resolved when nginx starts).
    conf = render_nginx.write_local_config(tmp_path / "gw", listen=f"127.0.0.1:{_free_port()}",
                                           trusted_proxies=["127.0.0.1", "10.0.0.0/8", "fd00::/8", "localhost"])
    result = subprocess.run(
        render_nginx.nginx_command(conf, nginx=binary, test=True), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


# ==== deploy/nginx.conf: the gateway in front of stand-in services ==========================


class _QuietServer(ThreadingHTTPServer):
    """Says nothing when nginx drops an idle keep-alive connection (a gateway of a test stops)."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionResetError):
            super().handle_error(request, client_address)


class Stub:
    """A stand-in service on 127.0.0.1: records requests, answers JSON naming itself.

    The one named "web" stands in for the web app: HTML pages, its stylesheet under /static/
    (with the status in ``health``), a redirect to /login for /, and its own HTML 404 page.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = 200
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                record = {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body_bytes": len(body),
                }
                with stub.lock:
                    stub.requests.append(record)
                status, headers, payload = stub.respond(record)
                self.send_response(status)
                self.send_header("X-Stub-Service", stub.name)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def hits(self, path: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r["path"] == path)

    def respond(self, record: dict) -> tuple[int, dict[str, str], bytes]:
        path = record["path"]
        if self.name == "web":
            return self.respond_as_web_app(path)
        if path == "/healthz":
            body = {"service": self.name, "status": "ok" if self.health == 200 else "down"}
            return self.health, {"Content-Type": "application/json"}, json.dumps(body).encode()
        if path.startswith("/feeds/"):
            etag = f'"{self.name}-{abs(hash(path)) % 10**8}-v1"'
            headers = {
                "Content-Type": "text/calendar; charset=utf-8",
                "ETag": etag,
                "Last-Modified": "Tue, 01 Dec 2026 08:00:00 GMT",
            }
            headers["Cache-Control"] = "public, max-age=300"  # for calendar clients, not the gateway
            if "cached" in path or path.startswith("/feeds/users/"):
                headers["X-Accel-Expires"] = "60"  # the gateway may keep it 60 s
            if record["headers"].get("if-none-match") == etag:
                return 304, headers, b""
            lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//labshare//stub//EN", "METHOD:PUBLISH"]
            lines += [f"X-PADDING-{i}:{'x' * 60}" for i in range(60)]
            lines += ["END:VCALENDAR", ""]
            return 200, headers, "\r\n".join(lines).encode()
        if path.startswith("/api/v1/bookings/conflict"):
            body = {"type": "about:blank", "title": "Conflict", "status": 409, "conflicts": [], "service": self.name}
            return 409, {"Content-Type": "application/problem+json"}, json.dumps(body).encode()
        if "fail=503" in path:
            body = {"type": "about:blank", "title": "Service Unavailable", "status": 503, "service": self.name}
            return 503, {"Content-Type": "application/problem+json"}, json.dumps(body).encode()
        body = {
            "service": self.name,
            "method": record["method"],
            "path": path,
            "body_bytes": record["body_bytes"],
            "request_id": record["headers"].get("x-request-id"),
        }
        if "big=1" in path:
            body["items"] = [{"id": i, "name": f"resource {i}"} for i in range(200)]
        return 200, {"Content-Type": "application/json", "X-Request-Id": "from-upstream"}, json.dumps(body).encode()

    WEB_PAGES = ("/login", "/find", "/resources/r-1", "/manage/labs/new", "/bookings/b-1", "/healthzx", "/feedsx",
                 "/openapi.json", "/apixyz", "/index.html")

    def respond_as_web_app(self, path: str) -> tuple[int, dict[str, str], bytes]:
        html = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}
        if path.startswith("/static/"):
            css = "".join(f".rule-{i} {{ margin: {i}px; }}\n" for i in range(100)).encode()
            return self.health, {"Content-Type": "text/css; charset=utf-8", "ETag": '"css-v1"'}, css
        if path == "/":
            return 302, {**html, "Location": "/login?next=%2F"}, b""
        if path.split("?")[0] in self.WEB_PAGES:
            return 200, html, f"<!doctype html><title>labshare</title><main>{path}</main>".encode()
        return 404, html, b"<!doctype html><title>labshare</title><p>There is no page here.</p>"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload
    finally:
        conn.close()


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return _request(port, "GET", path, headers=headers)


class Gateway:
    """nginx on a free 127.0.0.1 port, configured by render_nginx.write_local_config."""

    def __init__(self, state_dir: Path, inventory: str, booking: str, notify: str, web: str, **rates: str) -> None:
        binary = nginx_binary()
        self.access_log = state_dir / "access.log"
        self.error_log = state_dir / "error.log"
        for _attempt in range(3):
            self.port = _free_port()
            conf = render_nginx.write_local_config(
                state_dir,
                listen=f"127.0.0.1:{self.port}",
                inventory=inventory,
                booking=booking,
                notify=notify,
                web=web,
                **rates,
            )
            with self.access_log.open("ab") as out, self.error_log.open("ab") as err:
                self.proc = subprocess.Popen(render_nginx.nginx_command(conf, nginx=binary), stdout=out, stderr=err)
            if _wait_for_port(self.port, self.proc):
                return
            _stop(self.proc)
        pytest.fail(f"nginx did not start: {self.error_log.read_text()}")

    def access_records(self) -> list[dict]:
        return [json.loads(line) for line in self.access_log.read_text(encoding="utf-8").splitlines() if line]

    def stop(self) -> None:
        _stop(self.proc, signal.SIGQUIT)


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, Stub]]:
    services = {name: Stub(name) for name in ("inventory", "booking", "notify", "web")}
    yield services
    for stub in services.values():
        stub.close()


@pytest.fixture(scope="module")
def gateway(stubs, tmp_path_factory) -> Iterator[Gateway]:
    gw = Gateway(
        tmp_path_factory.mktemp("gateway"),
        inventory=stubs["inventory"].address,
        booking=stubs["booking"].address,
        notify=stubs["notify"].address,
        web=stubs["web"].address,
    )
    yield gw
    gw.stop()


ROUTES = [
    ("GET", "/api/v1/labs", "inventory", "/api/v1/labs"),
    ("POST", "/api/v1/labs", "inventory", "/api/v1/labs"),
    ("PATCH", "/api/v1/labs/l-1", "inventory", "/api/v1/labs/l-1"),
    ("GET", "/api/v1/resources?lab_id=l-1&q=confocal", "inventory", "/api/v1/resources?lab_id=l-1&q=confocal"),
    ("DELETE", "/api/v1/resources/r-1/outages/o-1", "inventory", "/api/v1/resources/r-1/outages/o-1"),
    ("POST", "/api/v1/bookings", "booking", "/api/v1/bookings"),
    ("POST", "/api/v1/bookings/b-1/cancel", "booking", "/api/v1/bookings/b-1/cancel"),
    ("GET", "/api/v1/availability?resource_id=r-1", "booking", "/api/v1/availability?resource_id=r-1"),
    ("GET", "/api/v1/slots?category=a%2Fb", "booking", "/api/v1/slots?category=a%2Fb"),
    ("POST", "/api/v1/waitlist", "booking", "/api/v1/waitlist"),
    ("DELETE", "/api/v1/waitlist/w-1", "booking", "/api/v1/waitlist/w-1"),
    ("GET", "/api/v1/usage?format=csv", "booking", "/api/v1/usage?format=csv"),
    ("GET", "/api/v1/utilisation", "booking", "/api/v1/utilisation"),
    ("POST", "/api/v1/feeds/token", "booking", "/api/v1/feeds/token"),
    ("POST", "/api/v1/webhooks", "notify", "/api/v1/webhooks"),
    ("GET", "/api/v1/webhooks/h-1/deliveries", "notify", "/api/v1/webhooks/h-1/deliveries"),
    ("GET", "/api/v1/notifications?mine=true", "notify", "/api/v1/notifications?mine=true"),
    ("GET", "/api/v1/openapi/inventory.json", "inventory", "/openapi.json"),
    ("GET", "/api/v1/openapi/booking.json", "booking", "/openapi.json"),
    ("GET", "/api/v1/openapi/notify.json", "notify", "/openapi.json"),
]


@pytest.mark.parametrize(("method", "path", "service", "upstream_path"), ROUTES)
def test_gateway_routes_each_prefix_to_its_service(gateway, method, path, service, upstream_path):
    body = b'{"x": 1}' if method in {"POST", "PATCH"} else None
    status, headers, payload = _request(gateway.port, method, path, body=body)
    assert status == 200, payload
    answer = json.loads(payload)
    assert (answer["service"], answer["method"], answer["path"]) == (service, method, upstream_path)
    if body:
        assert answer["body_bytes"] == len(body)


def test_gateway_routes_as_the_in_process_gateway_of_make_run(gateway):
    """services/gateway.py (make run) and nginx route every prefix to the same service."""
    from services.gateway import ROUTES

    for prefix, service in ROUTES:
        paths = [prefix + "x.ics"] if prefix.endswith("/") else [prefix, prefix + "/some-id"]
        for path in paths:
            status, headers, _ = _get(gateway.port, path)
            if prefix.startswith("/api/v1/dev/"):
                assert status == 404 and "x-stub-service" not in headers, "dev mode is never on behind nginx"
            else:
                assert status == 200 and headers["x-stub-service"] == service, path


def test_gateway_feed_paths_go_to_booking(gateway, stubs):
    status, headers, payload = _get(gateway.port, "/feeds/labs/l-1.ics")
    assert status == 200 and headers["content-type"] == "text/calendar; charset=utf-8"
    assert payload.startswith(b"BEGIN:VCALENDAR") and stubs["booking"].hits("/feeds/labs/l-1.ics") == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/dev/token"),
        ("GET", "/api/v1/dev/token"),
        ("GET", "/api"),
        ("GET", "/api/"),
        ("GET", "/api/v1/unknown"),
        ("GET", "/api/v1/labsx"),
        ("GET", "/api/v2/labs"),
        ("DELETE", "/api/v1"),
        ("GET", "/api/v1/openapi/other.json"),
        ("GET", "/_labshare/health/inventory"),
        ("GET", "/_problem/502"),
    ],
)
def test_gateway_api_paths_no_service_claims_are_404_problems(gateway, stubs, method, path):
    before = sum(len(s.requests) for s in stubs.values())
    status, headers, payload = _request(gateway.port, method, path, body=b"{}" if method == "POST" else None)
    assert status == 404
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(payload)
    assert problem["status"] == 404 and problem["title"] == "Not Found" and problem["type"]
    assert sum(len(s.requests) for s in stubs.values()) == before, "must not reach a service"


def test_gateway_serves_the_web_app_at_the_root(gateway, stubs):
    web = stubs["web"]
    before = web.hits("/")
    status, headers, payload = _get(gateway.port, "/", headers={"X-Request-Id": "page-1"})
    assert status == 302 and headers["location"] == "/login?next=%2F" and payload == b""
    assert headers["x-stub-service"] == "web" and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-request-id"] == "page-1"
    assert web.hits("/") == before + 1
    forwarded = web.requests[-1]["headers"]
    assert forwarded["x-request-id"] == "page-1" and forwarded["host"] == f"127.0.0.1:{gateway.port}"
    assert forwarded["x-forwarded-for"] == "127.0.0.1" and forwarded["x-forwarded-proto"] == "http"


@pytest.mark.parametrize("path", [*Stub.WEB_PAGES, "/find?q=confocal&lab=l-1", "/static/app.css"])
def test_gateway_sends_every_path_no_api_claims_to_the_web_app(gateway, stubs, path):
    others = sum(len(s.requests) for name, s in stubs.items() if name != "web")
    status, headers, payload = _get(gateway.port, path)
    assert status == 200 and headers["x-stub-service"] == "web", path
    assert headers["content-type"].startswith(("text/html", "text/css"))
    assert stubs["web"].requests[-1]["path"] == path
    assert sum(len(s.requests) for name, s in stubs.items() if name != "web") == others


def test_gateway_passes_the_web_apps_own_answers_through(gateway, stubs):
    """Its 404 page and its forms' POSTs reach the browser as the web app made them; pages compress."""
    status, headers, payload = _request(gateway.port, "DELETE", "/nowhere")
    assert status == 404 and headers["content-type"] == "text/html; charset=utf-8"
    assert b"There is no page here." in payload
    status, _, _ = _request(gateway.port, "POST", "/login", body=b"csrf_token=x&user=ada",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and stubs["web"].requests[-1]["body_bytes"] == len(b"csrf_token=x&user=ada")
    status, headers, payload = _get(gateway.port, "/static/app.css", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert gzip.decompress(payload).startswith(b".rule-0 ")
    assert headers["etag"] == 'W/"css-v1"', "gzip weakens an ETag (only feeds must keep theirs strong)"


def test_gateway_pages_are_502_problems_while_the_web_app_is_down(stubs, tmp_path):
    gw = Gateway(
        tmp_path,
        inventory=stubs["inventory"].address,
        booking=stubs["booking"].address,
        notify=stubs["notify"].address,
        web=f"127.0.0.1:{_free_port()}",  # nothing listens there
    )
    try:
        status, headers, payload = _get(gw.port, "/login")
        assert status == 502 and headers["content-type"] == "application/problem+json"
        assert json.loads(payload)["status"] == 502
        assert _get(gw.port, "/api/v1/labs")[0] == 200
        assert _get(gw.port, "/healthz")[0] == 200, "the gateway's health is the three services'"
    finally:
        gw.stop()


def test_gateway_healthz_is_200_only_when_all_three_are(gateway, stubs):
    apis = {name: stubs[name] for name in ("inventory", "booking", "notify")}
    before = {name: stub.hits("/healthz") for name, stub in apis.items()}
    status, headers, payload = _get(gateway.port, "/healthz")
    assert status == 200, payload
    assert headers["content-type"] == "application/json"
    assert json.loads(payload)["status"] == "ok"
    assert all(stub.hits("/healthz") == before[name] + 1 for name, stub in apis.items())
    assert {stub.requests[-1]["headers"].get("x-request-id") for stub in apis.values()} == {headers["x-request-id"]}
    for name in ("inventory", "booking", "notify"):
        stubs[name].health = 503
        try:
            status, headers, payload = _get(gateway.port, "/healthz")
        finally:
            stubs[name].health = 200
        assert status == 503, name
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(payload)["status"] == 503
    assert _get(gateway.port, "/healthz")[0] == 200
    assert _request(gateway.port, "HEAD", "/healthz")[0] == 200


def test_gateway_healthz_is_503_and_routes_502_when_a_service_is_down(stubs, tmp_path):
    gw = Gateway(
        tmp_path,
        inventory=stubs["inventory"].address,
        booking=stubs["booking"].address,
        notify=f"127.0.0.1:{_free_port()}",  # nothing listens there
        web=stubs["web"].address,
    )
    try:
        status, headers, payload = _get(gw.port, "/healthz")
        assert status == 503
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(payload)["status"] == 503
        status, headers, payload = _get(gw.port, "/api/v1/notifications")
        assert status == 502
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(payload)["status"] == 502
        assert _get(gw.port, "/api/v1/labs")[0] == 200
    finally:
        gw.stop()


def test_gateway_limits_bodies_to_one_mebibyte(gateway, stubs):
    status, _, payload = _request(gateway.port, "POST", "/api/v1/bookings", body=b"x" * (1024 * 1024))
    assert status == 200 and json.loads(payload)["body_bytes"] == 1024 * 1024
    before = len(stubs["booking"].requests)
    status, headers, payload = _request(gateway.port, "POST", "/api/v1/bookings", body=b"x" * (1024 * 1024 + 1))
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(payload)["status"] == 413
    assert len(stubs["booking"].requests) == before


def test_gateway_passes_service_errors_through_untouched(gateway):
    status, headers, payload = _request(gateway.port, "POST", "/api/v1/bookings/conflict", body=b"{}")
    assert status == 409 and headers["content-type"] == "application/problem+json"
    assert json.loads(payload) == {
        "type": "about:blank",
        "title": "Conflict",
        "status": 409,
        "conflicts": [],
        "service": "booking",
    }
    status, _, payload = _get(gateway.port, "/api/v1/slots?fail=503")
    assert status == 503 and json.loads(payload)["service"] == "booking"


def test_gateway_request_ids(gateway, stubs):
    status, headers, payload = _get(gateway.port, "/api/v1/labs", headers={"X-Request-Id": "client-id-1"})
    assert status == 200
    assert json.loads(payload)["request_id"] == "client-id-1" == headers["x-request-id"]
    status, headers, payload = _get(gateway.port, "/api/v1/labs")
    generated = headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated) and json.loads(payload)["request_id"] == generated
    status, headers, payload = _get(gateway.port, "/api/v1/labs", headers={"X-Request-Id": 'bad id "quoted"'})
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    assert json.loads(payload)["request_id"] == headers["x-request-id"]
    status, headers, payload = _get(gateway.port, "/api/nowhere", headers={"X-Request-Id": "client-id-2"})
    assert headers["x-request-id"] == "client-id-2" and json.loads(payload)["request_id"] == "client-id-2"
    forwarded = stubs["inventory"].requests[-1]["headers"]
    assert forwarded["x-forwarded-for"] == "127.0.0.1" and forwarded["x-forwarded-proto"] == "http"
    assert forwarded["host"] == f"127.0.0.1:{gateway.port}"


def test_gateway_access_log_is_json_lines(gateway):
    _get(gateway.port, "/api/v1/resources?q=%22x%22", headers={"X-Request-Id": "log-check-1", "User-Agent": 'ua "q"'})
    deadline = time.monotonic() + 5
    record = None
    while record is None and time.monotonic() < deadline:
        record = next((r for r in gateway.access_records() if r["request_id"] == "log-check-1"), None)
        time.sleep(0.02)
    assert record is not None
    assert record["status"] == 200 and record["method"] == "GET"
    assert record["uri"] == "/api/v1/resources?q=%22x%22" and record["user_agent"] == 'ua "q"'
    assert record["upstream_status"] == "200" and record["upstream"].startswith("127.0.0.1:")


def test_gateway_compresses_json(gateway):
    status, headers, payload = _get(gateway.port, "/api/v1/labs?big=1", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert "accept-encoding" in headers.get("vary", "").lower()
    assert len(json.loads(gzip.decompress(payload))["items"]) == 200
    status, headers, payload = _get(gateway.port, "/api/v1/labs?big=1")
    assert "content-encoding" not in headers and json.loads(payload)["items"]


def test_gateway_caches_cacheable_feeds_and_answers_conditional_requests(gateway, stubs):
    booking = stubs["booking"]
    path = "/feeds/resources/cached-r1.ics"
    first = _get(gateway.port, path, headers={"Accept-Encoding": "gzip"})
    second = _get(gateway.port, path, headers={"Accept-Encoding": "gzip"})
    assert first[0] == second[0] == 200 and first[2] == second[2]
    assert (first[1]["x-cache-status"], second[1]["x-cache-status"]) == ("MISS", "HIT")
    assert booking.hits(path) == 1
    assert "x-accel-expires" not in first[1] and first[1]["cache-control"] == "public, max-age=300"
    etag = first[1]["etag"]
    assert not etag.startswith("W/"), "feeds keep a strong ETag"
    assert "content-encoding" not in first[1]
    status, headers, payload = _get(gateway.port, path, headers={"If-None-Match": etag})
    assert status == 304 and payload == b"" and headers["etag"] == etag
    assert _get(gateway.port, path, headers={"If-None-Match": '"other"'})[0] == 200
    assert booking.hits(path) == 1


def test_gateway_does_not_cache_what_the_service_does_not_allow(gateway, stubs):
    """Only X-Accel-Expires opts in, and never for a user's (secret, revocable) feed."""
    booking = stubs["booking"]
    for path in ("/feeds/labs/plain-l1.ics", "/feeds/users/token-abc.ics"):
        first = _get(gateway.port, path)
        second = _get(gateway.port, path)
        assert first[0] == second[0] == 200
        assert booking.hits(path) == 2, path
        status, _, payload = _get(gateway.port, path, headers={"If-None-Match": first[1]["etag"]})
        assert status == 304 and payload == b"", path


def _slow_gateway(stubs, tmp_path) -> Gateway:
    """A gateway in front of the stubs whose allowances run out after the burst (1 request a minute)."""
    return Gateway(
        tmp_path,
        inventory=stubs["inventory"].address,
        booking=stubs["booking"].address,
        notify=stubs["notify"].address,
        web=stubs["web"].address,
        api_rate="1r/m",
        feeds_rate="1r/m",
    )


def test_gateway_rate_limits_with_problem_json(stubs, tmp_path):
    gw = _slow_gateway(stubs, tmp_path)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        statuses = []
        for _ in range(110):
            conn.request("GET", "/api/v1/labs")
            resp = conn.getresponse()
            payload = resp.read()
            statuses.append(resp.status)
            if resp.status == 429:
                assert resp.getheader("Content-Type") == "application/problem+json"
                assert json.loads(payload)["status"] == 429 and resp.getheader("Retry-After")
                break
        conn.close()
        assert statuses[-1] == 429 and set(statuses[:-1]) == {200} and 100 <= len(statuses) <= 102
        assert _get(gw.port, "/feeds/labs/rate-l1.ics")[0] == 200, "feeds have their own allowance"
    finally:
        gw.stop()


def test_gateway_rate_limits_each_user_a_trusted_proxy_names(stubs, tmp_path):
    """The web app calls the API for everyone from one address, naming each user in X-Forwarded-For.

    From a trusted proxy (127.0.0.1 here, as in make stack) each forwarded address has an allowance of its
    own; from anyone else (127.0.0.2, the same machine but not trusted) X-Forwarded-For changes nothing.
    """
    gw = _slow_gateway(stubs, tmp_path)
    inventory = stubs["inventory"]

    def until_refused(source: str, forwarded) -> int:
        """Requests from ``source`` (X-Forwarded-For: ``forwarded(i)``) up to and with the first 429."""
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10, source_address=(source, 0))
        try:
            for i in range(1, 120):
                conn.request("GET", "/api/v1/labs", headers={"X-Forwarded-For": forwarded(i)})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 429:
                    return i
                assert resp.status == 200
            return 0
        finally:
            conn.close()

    def seen_as(source: str, forwarded: str | None) -> tuple[int, str]:
        """One request's status and the client address the gateway passed on (X-Real-IP)."""
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10, source_address=(source, 0))
        try:
            conn.request("GET", "/api/v1/labs?who", headers={"X-Forwarded-For": forwarded} if forwarded else {})
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            return resp.status, ""
        record = next(r for r in reversed(inventory.requests) if r["path"] == "/api/v1/labs?who")
        return resp.status, record["headers"]["x-real-ip"]

    try:
        # One user spends their allowance (burst 100, then one a minute)...
        assert 100 <= until_refused("127.0.0.1", lambda i: "203.0.113.1") <= 102
        assert seen_as("127.0.0.1", "203.0.113.1")[0] == 429
        # ... and another user of the same proxy still has theirs, as has the proxy itself.
        assert seen_as("127.0.0.1", "203.0.113.2") == (200, "203.0.113.2")
        assert seen_as("127.0.0.1", None) == (200, "127.0.0.1")
        # The rightmost address the trusted proxy did not vouch for counts: what a browser put in front does not.
        assert seen_as("127.0.0.1", "203.0.113.1, 203.0.113.3") == (200, "203.0.113.3")
        # An untrusted peer's X-Forwarded-For is ignored: not the spent address, nor a new one each time.
        assert seen_as("127.0.0.2", "203.0.113.2") == (200, "127.0.0.2")
        assert 99 <= until_refused("127.0.0.2", lambda i: f"198.51.100.{i % 250 + 1}") <= 101
        assert seen_as("127.0.0.2", "198.51.100.251")[0] == 429
        # The access log names the users, not the proxy.
        addresses = {r["remote_addr"] for r in gw.access_records()}
        assert {"203.0.113.1", "203.0.113.2", "203.0.113.3", "127.0.0.2"} <= addresses
        assert not addresses & {f"198.51.100.{i}" for i in range(1, 252)}
    finally:
        gw.stop()


@pytest.mark.e2e
def test_gateway_in_front_of_the_web_app_as_compose_runs_it(compose, stubs, tmp_path):
    """The compose web service's command and environment (production: dev mode off), behind nginx."""
    web = compose["services"]["web"]
    web_port = _free_port()
    gw = Gateway(
        tmp_path / "gateway",
        inventory=stubs["inventory"].address,
        booking=stubs["booking"].address,
        notify=stubs["notify"].address,
        web=f"127.0.0.1:{web_port}",
    )
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABSHARE_", "PROMETHEUS_"))}
    env.update(_env(web))
    # On this machine: a loopback port, the gateway above, a data directory of the test's own.
    env.update(LABSHARE_BIND=f"127.0.0.1:{web_port}", LABSHARE_API_URL=f"http://127.0.0.1:{gw.port}",
               LABSHARE_DATA_DIR=str(data), LABSHARE_WORKERS="1")
    command = web["command"]
    assert command[0] == "gunicorn"
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", *command], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        assert _wait_for_port(web_port, proc, timeout=30), log.read_text()
        healthcheck = web["healthcheck"]["test"][-1].replace("127.0.0.1:8000", f"127.0.0.1:{web_port}")
        assert _run_healthcheck(healthcheck, {}) == 0, log.read_text()

        status, headers, _ = _get(gw.port, "/")
        assert status == 302 and headers["location"].startswith("/login?next=")
        status, headers, payload = _get(gw.port, "/login", headers={"Accept-Encoding": "gzip"})
        assert status == 200, log.read_text()
        assert headers["content-type"].startswith("text/html") and headers["content-encoding"] == "gzip"
        assert headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in headers["content-security-policy"]
        assert b"<html" in gzip.decompress(payload)
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
        status, headers, payload = _get(gw.port, "/static/app.css")
        assert status == 200 and headers["content-type"].startswith("text/css") and payload
        status, headers, _ = _get(gw.port, "/no-such-page")
        assert status == 404 and headers["content-type"].startswith("text/html")
        # Dev mode is off: no development login, and the API's token endpoint is closed.
        assert _request(gw.port, "POST", "/login/dev", body=b"")[0] in (400, 404)
        assert _request(gw.port, "POST", "/api/v1/dev/token", body=b"{}")[0] == 404
        # The API still goes to the services.
        status, headers, _ = _get(gw.port, "/api/v1/labs")
        assert status == 200 and headers["x-stub-service"] == "inventory"
        # No LABSHARE_WEB_SECRET_KEY given: the key is a file in the data directory, for the user alone.
        key = data / "web-secret-key"
        assert key.exists() and (key.stat().st_mode & 0o777) == 0o600 and len(key.read_text().strip()) >= 32
    finally:
        _stop(proc)
        gw.stop()
