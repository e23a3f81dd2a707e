"""The gateway of ``make stack``: deploy/nginx.conf with several replicas per upstream (render_nginx.py),
the web app's upstream, and the stack's one development route (deploy/stack.py), checked by ``nginx -t``.

The stack itself runs in tests/e2e/test_stack.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra import deploy_script, nginx_binary

ROOT = Path(__file__).resolve().parents[2]


render_nginx = deploy_script("render_nginx.py")
stack = deploy_script("stack.py")


def _upstream(text: str, name: str) -> list[str]:
    block = re.search(rf"upstream {name} \{{(.*?)\}}", text, re.S)
    assert block, name
    return re.findall(r"^\s*server (\S+);", block.group(1), re.M)


def test_an_upstream_lists_every_replica():
    text = render_nginx.render({"GATEWAY_BOOKING_UPSTREAM": "127.0.0.1:9012,127.0.0.1:9022"}, env={})
    assert _upstream(text, "booking") == ["127.0.0.1:9012", "127.0.0.1:9022"]
    assert _upstream(text, "inventory") == ["inventory:8000"]
    for bad in ("127.0.0.1:9012,", "127.0.0.1:9012,evil; x", ",127.0.0.1:1"):
        with pytest.raises(ValueError):
            render_nginx.render({"GATEWAY_BOOKING_UPSTREAM": bad}, env={})
    with pytest.raises(ValueError):
        render_nginx.render({"GATEWAY_LISTEN": "8080,8081"}, env={})


def test_write_local_config_takes_lists_and_nginx_accepts_them(tmp_path):
    conf = render_nginx.write_local_config(
        tmp_path / "gw", listen="127.0.0.1:18080", inventory=["127.0.0.1:18011", "127.0.0.1:18021"],
        booking=["127.0.0.1:18012", "127.0.0.1:18022"], notify="127.0.0.1:18013,127.0.0.1:18023")
    text = conf.read_text()
    assert _upstream(text, "notify") == ["127.0.0.1:18013", "127.0.0.1:18023"]
    result = subprocess.run(render_nginx.nginx_command(conf, nginx=nginx_binary(), test=True), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_render_nginx_command_line_takes_a_list(tmp_path):
    out = tmp_path / "nginx.conf"
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "render_nginx.py"), "--local", "--state-dir",
                             str(tmp_path), "--booking", "127.0.0.1:9012,127.0.0.1:9022", "--out", str(out)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert _upstream(out.read_text(), "booking") == ["127.0.0.1:9012", "127.0.0.1:9022"]


def test_the_stacks_development_route(tmp_path):
    conf = render_nginx.write_local_config(tmp_path, listen="127.0.0.1:18080", booking=["127.0.0.1:1", "127.0.0.1:2"])
    production = conf.read_text()
    text = stack.development_routes(production)
    dev = re.search(r"location \^~ /api/v1/dev/ \{(.*?)\}", text, re.S).group(1)
    assert "proxy_pass http://inventory;" in dev and "return 404" not in dev
    # Everything else is the production configuration, untouched: the web app's route is its own.
    assert text.count("location ") == production.count("location ")
    def without_dev_route(conf: str) -> str:
        conf = re.sub(r"\n *# development stack:[^\n]*", "", conf)
        return re.sub(r"\n *location \^~ /api/v1/dev/ \{.*?\n        \}\n", "\n", conf, flags=re.S)

    assert without_dev_route(text) == without_dev_route(production) != production
    conf.write_text(text)
    result = subprocess.run(render_nginx.nginx_command(conf, nginx=nginx_binary(), test=True), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_the_stacks_gateway_is_the_production_one_with_its_web_app(tmp_path):
    """One source of routes: the stack renders deploy/nginx.conf with its replicas and web app, adds only dev tokens."""
    s = stack.Stack(state_dir=tmp_path, port=18080)
    for c in s.plan():
        s.components[c.name] = c
    text = s.gateway_config().read_text()
    assert _upstream(text, "web") == [s.components["web"].address]
    assert _upstream(text, "booking") == [s.components[f"booking-api-{i}"].address for i in (1, 2)]
    production = render_nginx.render({
        "GATEWAY_LISTEN": f"127.0.0.1:{s.port}", "GATEWAY_STATE_DIR": str(tmp_path / "gateway"),
        "GATEWAY_API_RATE": s.api_rate, "GATEWAY_FEEDS_RATE": s.feeds_rate, "GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
        **{f"GATEWAY_{name.upper()}_UPSTREAM": ",".join(
            c.address for c in s.components.values() if c.service == name and c.kind in ("api", "web"))
           for name in ("inventory", "booking", "notify", "web")},
    }, env={})
    assert text == stack.development_routes(production)
    s.dev_mode = False
    assert s.gateway_config().read_text() == production
    # Without the web app its upstream is a port nothing listens on: pages answer 502, the API works.
    del s.components["web"]
    assert _upstream(s.gateway_config().read_text(), "web")[0].startswith("127.0.0.1:")


def test_the_stack_runs_the_commands_of_the_containers(tmp_path):
    """Same argv as docker-compose.yml (gunicorn for APIs, python -m services.<name> relay|consume)."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    expected = {name: service["command"] for name, service in compose["services"].items() if "command" in service}
    s = stack.Stack(state_dir=tmp_path, port=18080)
    plan = {c.name: c for c in s.plan()}
    assert {c.kind for c in plan.values()} == {"api", "relay", "consumer", "web"}
    counts: dict[str, int] = {}
    for c in plan.values():
        key = f"{c.service}-{c.kind}"
        counts[key] = counts.get(key, 0) + 1
        argv = [Path(c.argv[0]).name if i == 0 else a for i, a in enumerate(c.argv)]
        if c.kind in ("relay", "consumer"):
            assert argv[0].startswith("python")
            assert ["python", *argv[1:4]] == expected[key], c.name
            assert argv[4:6] == ["--metrics-port", str(c.port)]
        elif c.kind == "api":
            assert argv[0] == "gunicorn" and argv[1] == "-c" and Path(argv[2]) == ROOT / "deploy" / "gunicorn.conf.py"
            assert argv[3] == expected[key][3], c.name
            assert c.env["LABSHARE_BIND"] == f"127.0.0.1:{c.port}"
            assert c.env["PROMETHEUS_MULTIPROC_DIR"].endswith(c.name)
        else:
            assert argv[3] == "services.web.app:create_app()" and c.env["LABSHARE_API_URL"] == s.url
    assert counts == {"inventory-api": 2, "booking-api": 2, "notify-api": 2, "inventory-relay": 2,
                      "booking-relay": 2, "notify-relay": 2, "booking-consumer": 2, "notify-consumer": 2,
                      "web-web": 1}
    ports = [c.port for c in plan.values()]
    assert len(set(ports)) == len(ports)
