"""deploy/k8s: the kustomizations render, and what they render is valid and means what the docs say.

- Rendering: tests/deploy/k8s_render.py (no kubectl needed); where kubectl exists its
  ``kubectl kustomize`` must render the very same resources.
- Kubernetes' own kinds: the schemas kubernetes-validate ships (strict: no unknown field).
- The operators' kinds (CloudNativePG Cluster, RabbitmqCluster, the topology operator's
  Exchange/Queue/Binding/Policy/User/Permission): no offline schema exists, so they are checked
  against the small schemas of tests/deploy/k8s_crd_schemas.py, derived from the operators'
  API documentation.
- Then what no schema knows: commands equal docker-compose.yml's, probes and resources on
  every container, autoscalers and disruption budgets for the workloads, the Ingress routes
  the contract's path table as the gateways do, network policies let each workload reach only
  what it needs, the RabbitMQ topology equals deploy/rabbitmq/definitions.json, the gateway's
  template equals deploy/nginx.conf, and every referenced Secret and ConfigMap key exists.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from tests.deploy import k8s_render
from tests.deploy.k8s_crd_schemas import SCHEMAS
from tests.infra import deploy_script

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["production", "managed", "dev"]
KUBERNETES_VERSION = "1.30"
NAMESPACE = "labshare"
SERVICES = ("inventory", "booking", "notify")


render_nginx = deploy_script("render_nginx.py")
gateway_config = deploy_script("k8s/gateway_config.py")


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: k8s_render.build(K8S / "overlays" / name) for name in OVERLAYS}


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions In/NotIn/Exists) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        value = labels.get(e["key"])
        if e["operator"] == "In" and value not in e["values"]:
            return False
        if e["operator"] == "NotIn" and value in e["values"]:
            return False
        if e["operator"] == "Exists" and e["key"] not in labels:
            return False
        if e["operator"] == "DoesNotExist" and e["key"] in labels:
            return False
    return True


# ---- files and rendering ----------------------------------------------------------------------------


def test_every_file_a_kustomization_names_exists():
    for directory in kustomization_dirs():
        k = k8s_render.kustomization(directory)
        for entry in k.get("resources", []):
            target = directory / entry
            assert target.exists(), f"{directory}: {entry} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), f"{directory}: {entry} has no kustomization"
        for patch in k.get("patches", []):
            if "path" in patch:
                assert (directory / patch["path"]).is_file(), f"{directory}: patch {patch['path']} missing"
        yaml_files = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        used = {Path(e).name for e in k.get("resources", [])} | {Path(p["path"]).name for p in k.get("patches", [])
                                                                 if "path" in p}
        assert yaml_files <= used, f"{directory}: not in the kustomization: {sorted(yaml_files - used)}"


def test_every_manifest_parses_and_names_its_kind():
    for path in K8S.rglob("*.yaml"):
        for document in k8s_render.load_documents(path):
            assert document.get("apiVersion") and document.get("kind"), path
            if document["kind"] != "Kustomization":
                assert document["metadata"]["name"], path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_into_the_labshare_namespace(rendered, overlay):
    resources = rendered[overlay]
    ids = [k8s_render.resource_id(r) for r in resources]
    assert len(ids) == len(set(ids))
    for r in resources:
        if r["kind"] in k8s_render.CLUSTER_SCOPED:
            assert "namespace" not in r["metadata"]
        else:
            assert r["metadata"]["namespace"] == NAMESPACE, k8s_render.resource_id(r)
    images = {c["image"] for r in resources for c in k8s_render.containers(r)}
    app = "labshare:local" if overlay == "dev" else "registry.example.org/labshare/labshare:0.1.0"
    assert app in images and "labshare" not in images, images
    for image in images:
        assert re.search(r":[0-9][0-9a-z.-]*$", image) or image == app, f"pin a version: {image}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_kustomize_renders_the_same(rendered, overlay):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed: rendered by tests/deploy/k8s_render.py only")
    result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    theirs = {k8s_render.resource_id(r): r for r in yaml.safe_load_all(result.stdout) if r}
    mine = {k8s_render.resource_id(r): r for r in rendered[overlay]}
    assert set(mine) == set(theirs)
    for key, resource in mine.items():
        assert resource == theirs[key], key


# ---- schemas ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_kinds_validate_against_the_kubernetes_schemas(rendered, overlay):
    import kubernetes_validate

    checked = 0
    for r in rendered[overlay]:
        if (r["apiVersion"], r["kind"]) in SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(r, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{k8s_render.resource_id(r)}: {'.'.join(map(str, exc.path))}: {exc.message}")
        checked += 1
    assert checked >= 40


def _crd_registry() -> Registry:
    import kubernetes_validate

    version = next(v for v in reversed(kubernetes_validate.utils.all_versions())
                   if kubernetes_validate.utils.major_minor(v) <= KUBERNETES_VERSION)
    definitions = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    return Resource.from_contents(definitions) @ Registry()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_schemas_derived_from_the_operators_docs(rendered, overlay):
    registry = _crd_registry()
    seen = set()
    for r in rendered[overlay]:
        schema = SCHEMAS.get((r["apiVersion"], r["kind"]))
        if schema is None:
            assert r["apiVersion"] in k8s_render.BUILTIN_GROUPS, f"no schema for {r['apiVersion']} {r['kind']}"
            continue
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        errors = sorted(validator.iter_errors(r), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{k8s_render.resource_id(r)}: {list(e.path)}: {e.message}" for e in errors)
        seen.add(r["kind"])
    if overlay != "managed":
        assert seen == {"Cluster", "RabbitmqCluster", "Exchange", "Queue", "Binding", "Policy", "User", "Permission"}
    else:
        assert not seen, "the managed overlay runs no PostgreSQL or RabbitMQ of its own"


def test_the_derived_schemas_catch_mistakes():
    registry = _crd_registry()
    cluster = next(r for r in k8s_render.build(K8S / "backing") if r["kind"] == "Cluster")
    validator = jsonschema.Draft202012Validator(SCHEMAS[("postgresql.cnpg.io/v1", "Cluster")], registry=registry)
    assert not list(validator.iter_errors(cluster))
    for broken in ({"instance": 3}, {"primaryUpdateStrategy": "automatic"}, {"storage": {"size": "20 GB"}},
                   {"resources": {"requests": {"cpu": "1"}, "limit": {}}}):
        spec = {**cluster["spec"], **broken}
        assert list(validator.iter_errors({**cluster, "spec": spec})), broken


# ---- the workloads -------------------------------------------------------------------------------------------


def _compose_commands() -> dict[str, list[str]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return {name: s["command"] for name, s in compose["services"].items() if "command" in s}


def test_workloads_run_the_commands_of_docker_compose(rendered):
    compose = _compose_commands()
    deployments = by_kind(rendered["production"], "Deployment")
    for svc in SERVICES:
        assert deployments[f"labshare-{svc}-api"]["spec"]["template"]["spec"]["containers"][0]["command"] == \
            compose[f"{svc}-api"]
        relay = deployments[f"labshare-{svc}-relay"]["spec"]["template"]["spec"]["containers"][0]
        assert relay["command"] == [*compose[f"{svc}-relay"], "--metrics-port", "9100"]
    for svc in ("booking", "notify"):
        consumer = deployments[f"labshare-{svc}-consumer"]["spec"]["template"]["spec"]["containers"][0]
        assert consumer["command"] == [*compose[f"{svc}-consumer"], "--metrics-port", "9100"]
    web = deployments["labshare-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["command"] == ["gunicorn", "-c", "deploy/gunicorn.conf.py", "services.web.app:create_app()"]
    jobs = by_kind(rendered["production"], "Job")
    (job,) = jobs.values()
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == compose["migrate"]
    assert set(deployments) == {f"labshare-{s}-{r}" for s in SERVICES for r in ("api", "relay")} | {
        "labshare-booking-consumer", "labshare-notify-consumer", "labshare-web", "labshare-gateway"}


def test_every_container_has_probes_resources_and_no_privileges(rendered):
    for r in rendered["production"]:
        spec = k8s_render.pod_spec(r)
        if spec is None:
            continue
        name = r["metadata"]["name"]
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True and security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: {kind}"
            if r["kind"] == "Deployment":
                assert c.get("readinessProbe") and c.get("livenessProbe"), name
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    if probe in c:
                        action = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                        assert action["port"] in ports, f"{name}: {probe} on an undeclared port"


def test_probes_ask_what_each_process_serves(rendered):
    deployments = by_kind(rendered["production"], "Deployment")
    for d in deployments.values():
        c = d["spec"]["template"]["spec"]["containers"][0]
        role = d["metadata"]["labels"]["labshare.dev/role"]
        if role == "api":
            # readiness: /healthz (503 only when its database is down); liveness never asks the database
            assert c["readinessProbe"]["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"] == "/healthz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/openapi.json"
            assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30 + 5  # gunicorn + preStop
        elif role in ("relay", "consumer"):
            port = c["command"][c["command"].index("--metrics-port") + 1]
            assert {p["name"]: str(p["containerPort"]) for p in c["ports"]} == {"metrics": port}
            assert c["readinessProbe"]["httpGet"] == c["livenessProbe"]["httpGet"] == {"path": "/metrics",
                                                                                       "port": "metrics"}


def test_autoscalers_and_disruption_budgets_cover_the_workloads(rendered):
    resources = rendered["production"]
    deployments = by_kind(resources, "Deployment")
    hpas = by_kind(resources, "HorizontalPodAutoscaler")
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()}
    assert scaled == {f"labshare-{s}-api" for s in SERVICES} | {"labshare-web", "labshare-booking-consumer",
                                                                "labshare-notify-consumer"}
    for h in hpas.values():
        target = deployments[h["spec"]["scaleTargetRef"]["name"]]
        assert h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert "replicas" not in target["spec"], "the autoscaler owns replicas"
        assert 2 <= h["spec"]["minReplicas"] < h["spec"]["maxReplicas"]
    pdbs = list(by_kind(resources, "PodDisruptionBudget").values())
    for name, d in deployments.items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selects(d["spec"]["selector"], labels), name
        budgets = [p for p in pdbs if selects(p["spec"]["selector"], labels)]
        assert len(budgets) == 1 and budgets[0]["spec"]["maxUnavailable"] == 1, name
        if name not in scaled:
            assert d["spec"]["replicas"] >= 2, f"{name}: one replica is no availability"


def test_env_references_resolve(rendered):
    """$(VAR) only names variables defined before it; every ConfigMap key and Secret referenced exists."""
    resources = rendered["dev"]
    config_maps = by_kind(resources, "ConfigMap")
    secrets = by_kind(resources, "Secret")
    documented = set(re.findall(r"^\| `(labshare-[a-z-]+)` \|", (K8S / "base" / "secrets.md").read_text(), re.M))
    for r in resources:
        for c in k8s_render.containers(r):
            defined = {key for source in c.get("envFrom", [])
                       for key in config_maps[source["configMapRef"]["name"]]["data"]}
            for var in c.get("env", []):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", var.get("value", "")):
                    assert ref in defined, f"{r['metadata']['name']}: {var['name']} uses $({ref}) before it exists"
                source = var.get("valueFrom", {})
                if "configMapKeyRef" in source:
                    assert source["configMapKeyRef"]["key"] in config_maps[source["configMapKeyRef"]["name"]]["data"]
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    assert ref["name"] in documented, f"{ref['name']} is not in base/secrets.md"
                    assert ref["key"] in secrets[ref["name"]]["data"], ref
                defined.add(var["name"])
    for name in documented - {"labshare-tls"}:
        assert name in secrets, f"the dev overlay does not generate {name}"
    # Production and managed deployments keep no Secret in the repository.
    for overlay in ("production", "managed"):
        assert not by_kind(rendered[overlay], "Secret")


def _env_values(container: dict[str, Any], secrets: dict[str, dict], config: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet computes it (envFrom, then env with $(VAR) expansion)."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], var["value"])
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
        else:
            env[var["name"]] = config[var["valueFrom"]["configMapKeyRef"]["key"]]
    return env


def test_each_service_connects_with_its_own_credentials(rendered):
    """Computed URLs as in docker-compose.yml: a role per service, a broker user per service."""
    resources = rendered["dev"]
    secrets = by_kind(resources, "Secret")
    backing = {**by_kind(resources, "ConfigMap")["labshare-backing"]["data"],
               **by_kind(resources, "ConfigMap")["labshare-config"]["data"]}
    for name, d in by_kind(resources, "Deployment").items():
        service, role = d["metadata"]["labels"]["labshare.dev/service"], d["metadata"]["labels"]["labshare.dev/role"]
        env = _env_values(d["spec"]["template"]["spec"]["containers"][0], secrets, backing)
        urls = {k: v for k, v in env.items() if k.endswith("_DATABASE_URL")}
        if role in ("web", "gateway"):
            assert not urls and "LABSHARE_BROKER_URL" not in env, name
            continue
        assert list(urls) == [f"LABSHARE_{service.upper()}_DATABASE_URL"], name
        assert urls[f"LABSHARE_{service.upper()}_DATABASE_URL"] == (
            f"postgresql://labshare_{service}:{service}-db-dev@labshare-db-rw:5432/labshare?sslmode=require")
        assert env["LABSHARE_BROKER_URL"] == f"amqp://labshare-{service}:{service}-amqp-dev@labshare-rabbitmq:5672/%2F"
    job = next(iter(by_kind(resources, "Job").values()))
    env = _env_values(job["spec"]["template"]["spec"]["containers"][0], secrets, backing)
    for service in SERVICES:
        assert env[f"LABSHARE_{service.upper()}_DATABASE_URL"].startswith(f"postgresql://labshare_{service}:")


# ---- routing ------------------------------------------------------------------------------------------------


def _ingress_route(ingresses: list[dict[str, Any]], host: str, path: str) -> str | None:
    """The backend Service of ``path``: an Exact match first, then the longest Prefix (element-wise)."""
    best, best_len = None, -1
    for ingress in ingresses:
        for rule in ingress["spec"]["rules"]:
            if rule["host"] != host:
                continue
            for p in rule["http"]["paths"]:
                service = p["backend"]["service"]["name"]
                if p["pathType"] == "Exact" and p["path"] == path:
                    return service
                prefix = p["path"].rstrip("/")
                matches = prefix == "" or path == prefix or path.startswith(prefix + "/")
                if p["pathType"] == "Prefix" and matches and len(prefix) > best_len:
                    best, best_len = service, len(prefix)
    return best


def test_ingress_routes_the_contracts_path_table_over_tls(rendered):
    from services.gateway import ROUTES

    resources = rendered["production"]
    ingresses = list(by_kind(resources, "Ingress").values())
    services = by_kind(resources, "Service")
    host = ingresses[0]["spec"]["rules"][0]["host"]
    for ingress in ingresses:
        assert ingress["spec"]["tls"] == [{"hosts": [host], "secretName": "labshare-tls"}]
        for rule in ingress["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                backend = p["backend"]["service"]
                assert backend["name"] in services, backend
                assert backend["port"]["name"] in {port["name"] for port in services[backend["name"]]["spec"]["ports"]}
    for prefix, service in ROUTES:
        for path in ([prefix + "x.ics"] if prefix.endswith("/") else [prefix, prefix + "/some-id"]):
            expected = "labshare-gateway" if prefix.startswith("/api/v1/dev/") else f"labshare-{service}"
            assert _ingress_route(ingresses, host, path) == expected, path
    for path in ("/api/v1/openapi/booking.json", "/api/v1/unknown", "/api", "/healthz"):
        assert _ingress_route(ingresses, host, path) == "labshare-gateway", path
    for path in ("/", "/find", "/resources/r-1", "/static/app.css", "/login", "/healthzx", "/feedsx"):
        assert _ingress_route(ingresses, host, path) == "labshare-web", path
    # The in-cluster gateway talks to the same Services.
    gateway = by_kind(resources, "Deployment")["labshare-gateway"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in gateway["env"]}
    assert {k for k in env if k.startswith("GATEWAY_")} == set(render_nginx.DEFAULTS)
    render_nginx.resolve({k: env[k] for k in render_nginx.DEFAULTS}, env={})
    for svc in (*SERVICES, "web"):
        host_, port = env[f"GATEWAY_{svc.upper()}_UPSTREAM"].split(":")
        assert host_ in services and int(port) in {p["port"] for p in services[host_]["spec"]["ports"]}
    assert env["GATEWAY_WEB_UPSTREAM"].startswith("labshare-web:")


def test_services_select_the_pods_of_one_workload(rendered):
    resources = rendered["production"]
    deployments = by_kind(resources, "Deployment")
    for name, service in by_kind(resources, "Service").items():
        selector = {"matchLabels": service["spec"]["selector"]}
        matched = [d for d in deployments.values() if selects(selector, d["spec"]["template"]["metadata"]["labels"])]
        assert len(matched) == 1, name
        ports = {p["name"] for c in matched[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name


def test_gateway_template_is_deploy_nginx_conf(rendered):
    config = by_kind(rendered["production"], "ConfigMap")["labshare-gateway-template"]
    assert config["data"]["nginx.conf.template"] == render_nginx.TEMPLATE.read_text(encoding="utf-8"), (
        "deploy/nginx.conf changed: run python deploy/k8s/gateway_config.py")
    assert (K8S / "base" / "gateway-config.yaml").read_text() == gateway_config.render(
        render_nginx.TEMPLATE.read_text(encoding="utf-8"))


# ---- network policies -----------------------------------------------------------------------------------------


def _allowed(policies: list[dict[str, Any]], labels: dict[str, str], direction: str) -> list[dict[str, Any]]:
    """Every rule of ``direction`` ('egress' or 'ingress') that applies to pods with ``labels``."""
    rules = []
    for p in policies:
        if selects(p["spec"]["podSelector"], labels) and direction.capitalize() in p["spec"]["policyTypes"]:
            rules += p["spec"].get(direction, [])
    return rules


def _peers(rules: list[dict[str, Any]], key: str) -> set[str]:
    """A readable summary of the peers the rules allow."""
    out = set()
    for rule in rules:
        ports = ",".join(sorted(str(p["port"]) for p in rule.get("ports", []))) or "any"
        for peer in rule.get(key, [{"ipBlock": {"cidr": "anywhere"}}]):
            if "ipBlock" in peer:
                what = "internet" if peer["ipBlock"].get("except") else peer["ipBlock"]["cidr"]
            elif "namespaceSelector" in peer and "podSelector" in peer:
                what = "dns"
            elif "namespaceSelector" in peer:
                what = "ns:" + peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            else:
                what = ",".join(f"{v}" for v in peer["podSelector"]["matchLabels"].values())
            out.add(f"{what}:{ports}")
    return out


EXPECTED_EGRESS = {
    "relay": {"dns:53", "labshare-db:5432", "labshare-rabbitmq:5672"},
    "consumer": {"dns:53", "labshare-db:5432", "labshare-rabbitmq:5672"},
    "api": {"dns:53", "labshare-db:5432", "labshare-rabbitmq:5672", "internet:443"},
    "migrate": {"dns:53", "labshare-db:5432"},
    "backup": {"dns:53", "labshare-db:5432"},
    "web": {"dns:53", "labshare-gateway:8080", "internet:443"},
    "gateway": {"dns:53", "api:8000"},
}


def test_network_policies_let_each_workload_reach_only_what_it_needs(rendered):
    resources = rendered["production"]
    policies = list(by_kind(resources, "NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
            and not p["spec"].get("egress")]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}, "no default deny"
    for r in resources:
        if k8s_render.pod_spec(r) is None:
            continue
        labels = k8s_render.pod_labels(r)
        name, role = r["metadata"]["name"], labels["labshare.dev/role"]
        egress = {e.replace("53,53", "53") for e in _peers(_allowed(policies, labels, "egress"), "to")}
        expected = set(EXPECTED_EGRESS[role])
        if name == "labshare-notify-consumer":
            expected.add("internet:25,443,465,587,80")
        assert egress == expected, name
    # Who may reach the APIs, workers, web app and gateway.
    def ingress(name: str) -> set[str]:
        d = by_kind(resources, "Deployment")[name]
        return _peers(_allowed(policies, d["spec"]["template"]["metadata"]["labels"], "ingress"), "from")

    for svc in SERVICES:
        assert ingress(f"labshare-{svc}-api") == {"ns:ingress-nginx:8000", "labshare-gateway:8000",
                                                  "ns:monitoring:8000"}
        assert ingress(f"labshare-{svc}-relay") == {"ns:monitoring:9100"}
    assert ingress("labshare-web") == {"ns:ingress-nginx:8000"}
    assert ingress("labshare-gateway") == {"ns:ingress-nginx:8080", "labshare-web:8080"}
    # The database and broker accept the pods that declare themselves their clients.
    db = _allowed(policies, {"cnpg.io/cluster": "labshare-db"}, "ingress")
    assert any(p.get("podSelector") == {"matchLabels": {"labshare.dev/db-client": "true"}}
               for rule in db for p in rule.get("from", []))
    broker = _allowed(policies, {"app.kubernetes.io/name": "labshare-rabbitmq"}, "ingress")
    assert any(p.get("podSelector") == {"matchLabels": {"labshare.dev/amqp-client": "true"}}
               for rule in broker for p in rule.get("from", []))


def test_managed_overlay_points_at_the_managed_endpoints(rendered):
    resources = rendered["managed"]
    backing = by_kind(resources, "ConfigMap")["labshare-backing"]["data"]
    assert backing["DATABASE_HOST"] != "labshare-db-rw" and backing["AMQP_SCHEME"] == "amqps"
    policies = by_kind(resources, "NetworkPolicy")
    for name, port in (("labshare-to-postgres", int(backing["DATABASE_PORT"])),
                       ("labshare-to-rabbitmq", int(backing["AMQP_PORT"]))):
        (rule,) = policies[name]["spec"]["egress"]
        assert [p["port"] for p in rule["ports"]] == [port]
        assert all("ipBlock" in peer for peer in rule["to"])
    assert not {"labshare-postgres", "labshare-rabbitmq"} & set(policies)


# ---- PostgreSQL and RabbitMQ --------------------------------------------------------------------------------------


def test_postgres_cluster_is_a_primary_and_two_replicas_with_a_role_per_service(rendered):
    (cluster,) = by_kind(rendered["production"], "Cluster").values()
    spec = cluster["spec"]
    assert spec["instances"] == 3 and spec["affinity"]["podAntiAffinityType"] == "required"
    assert spec["postgresql"]["synchronous"]["number"] >= 1
    roles = {r["name"]: r for r in spec["managed"]["roles"]}
    assert set(roles) == {f"labshare_{s}" for s in SERVICES}
    sql = "\n".join(spec["bootstrap"]["initdb"]["postInitApplicationSQL"])
    assert "btree_gist" in sql and "REVOKE ALL ON DATABASE labshare FROM PUBLIC" in sql
    for svc in SERVICES:
        role = roles[f"labshare_{svc}"]
        assert role["login"] and not role["superuser"] and not role["createdb"] and not role["createrole"]
        assert role["passwordSecret"]["name"] == f"labshare-{svc}-db"
        assert f"CREATE ROLE labshare_{svc} NOLOGIN" in sql
        assert f"ALTER ROLE labshare_{svc} SET search_path = {svc}, public" in sql
    init_sql = (ROOT / "deploy" / "postgres" / "init.sql").read_text()
    assert "GRANT CONNECT, CREATE, TEMPORARY" in init_sql and "GRANT CONNECT, CREATE, TEMPORARY" in sql


def test_rabbitmq_is_three_nodes_and_its_topology_is_definitions_json(rendered):
    resources = rendered["production"]
    (cluster,) = by_kind(resources, "RabbitmqCluster").values()
    assert cluster["spec"]["replicas"] == 3
    assert cluster["spec"]["image"] == yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
        "services"]["rabbitmq"]["image"]
    definitions = json.loads((ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text())
    for r in resources:
        if r["apiVersion"] == "rabbitmq.com/v1beta1" and r["kind"] != "RabbitmqCluster":
            assert r["spec"]["rabbitmqClusterReference"] == {"name": cluster["metadata"]["name"]}, r["metadata"]
    exchanges = {e["spec"]["name"]: e["spec"] for e in by_kind(resources, "Exchange").values()}
    assert exchanges == {e["name"]: {"name": e["name"], "vhost": e["vhost"], "type": e["type"],
                                     "durable": e["durable"], "autoDelete": e["auto_delete"],
                                     "rabbitmqClusterReference": {"name": "labshare-rabbitmq"}}
                         for e in definitions["exchanges"]}
    queues = {q["spec"]["name"]: q["spec"] for q in by_kind(resources, "Queue").values()}
    assert set(queues) == {q["name"] for q in definitions["queues"]}
    for q in definitions["queues"]:
        spec = queues[q["name"]]
        arguments = dict(spec.get("arguments", {}))
        if "type" in spec:  # the operator sends it as x-queue-type
            arguments["x-queue-type"] = spec["type"]
        assert arguments == q["arguments"] and spec["durable"] == q["durable"], q["name"]
        assert spec["autoDelete"] == q["auto_delete"] and spec["vhost"] == q["vhost"]
    bindings = {(b["spec"]["source"], b["spec"]["destination"], b["spec"]["routingKey"], b["spec"]["destinationType"])
                for b in by_kind(resources, "Binding").values()}
    assert bindings == {(b["source"], b["destination"], b["routing_key"], b["destination_type"])
                        for b in definitions["bindings"]}
    policies = {p["spec"]["name"]: p["spec"] for p in by_kind(resources, "Policy").values()}
    assert {n: (p["pattern"], p["applyTo"], p["definition"]) for n, p in policies.items()} == {
        p["name"]: (p["pattern"], p["apply-to"], p["definition"]) for p in definitions["policies"]}
    users = by_kind(resources, "User")
    permissions = {p["spec"]["userReference"]["name"]: p["spec"] for p in by_kind(resources, "Permission").values()}
    for p in definitions["permissions"]:
        if p["user"] == "labshare-admin":
            continue  # the operator makes its own administrator
        service = p["user"].removeprefix("labshare-")
        assert users[p["user"]]["spec"]["importCredentialsSecret"] == {"name": f"labshare-{service}-amqp"}
        assert permissions[p["user"]]["permissions"] == {k: p[k] for k in ("configure", "write", "read")}
        assert permissions[p["user"]]["vhost"] == p["vhost"]


def test_backups_dump_each_schema_with_its_own_role(rendered):
    (cron,) = by_kind(rendered["production"], "CronJob").values()
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    script = container["command"][-1]
    assert "pg_dump --format=custom --schema=\"$service\"" in script
    assert "for service in inventory booking notify" in script
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {f"labshare-{s}-db" for s in SERVICES}
    result = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
