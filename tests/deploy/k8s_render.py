"""Just enough of kustomize to render deploy/k8s without a kubectl binary.

What the kustomizations there use, with kustomize's semantics:

- ``resources``: files (several YAML documents each) and directories with a kustomization;
- ``namespace``: set on every namespaced resource;
- ``secretGenerator`` / ``configMapGenerator`` with ``literals`` and ``files``; only with
  ``generatorOptions.disableNameSuffixHash: true`` (references by name are not rewritten here);
- ``patches``: strategic merge patches (a file or inline; the target is the patch's own kind
  and name unless ``target`` says otherwise) and JSON 6902 patches (``add``, ``replace``,
  ``remove``) with a ``target``. Merge keys of the built-in kinds' lists (containers, env,
  volumes, ...) as in Kubernetes; for custom resources maps merge and lists are replaced (JSON
  merge patch), and a ``null`` deletes a key, as kustomize does;
- ``images`` (``newName``, ``newTag``, ``digest``) for containers of workloads;
- ``replicas``.

Anything else in a kustomization is an error, so a new feature cannot be silently ignored.
tests/deploy/test_k8s.py compares the result with ``kubectl kustomize`` where kubectl exists.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "patches", "images", "replicas", "secretGenerator",
             "configMapGenerator", "generatorOptions"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
                  "StorageClass", "PriorityClass", "IngressClass", "ValidatingWebhookConfiguration",
                  "MutatingWebhookConfiguration"}
#: patchMergeKey of lists in the built-in kinds (k8s.io/api), by field name.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
              "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
              "tolerations": "key", "hostAliases": "ip", "topologySpreadConstraints": "topologyKey"}
BUILTIN_GROUPS = {"v1", "apps/v1", "batch/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1",
                  "rbac.authorization.k8s.io/v1"}


class KustomizeError(Exception):
    pass


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))


def resource_id(r: dict[str, Any]) -> tuple[str, str, str, str]:
    return (r["apiVersion"], r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"])


def build(directory: Path) -> list[dict[str, Any]]:
    """The resources ``kustomize build directory`` outputs (order aside)."""
    directory = directory.resolve()
    k = kustomization(directory)
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{directory}: this renderer does not know {sorted(unknown)}")
    out: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            out += build(target)
        elif target.is_file():
            out += load_documents(target)
        else:
            raise KustomizeError(f"{directory}: resource {entry} does not exist")
    out += _generated(directory, k)
    ids = [resource_id(r) for r in out]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise KustomizeError(f"{directory}: resources defined twice: {sorted(duplicates)}")
    for patch in k.get("patches", []):
        _apply_patch(directory, out, patch)
    if k.get("namespace"):
        for r in out:
            if r["kind"] not in CLUSTER_SCOPED:
                r["metadata"]["namespace"] = k["namespace"]
    for image in k.get("images", []):
        _set_image(out, image)
    for replicas in k.get("replicas", []):
        found = [r for r in out if r["kind"] in ("Deployment", "StatefulSet", "ReplicaSet")
                 and r["metadata"]["name"] == replicas["name"]]
        if not found:
            raise KustomizeError(f"{directory}: replicas for unknown {replicas['name']}")
        for r in found:
            r["spec"]["replicas"] = replicas["count"]
    return out


def _generated(directory: Path, k: dict[str, Any]) -> list[dict[str, Any]]:
    generators = [("Secret", g) for g in k.get("secretGenerator", [])]
    generators += [("ConfigMap", g) for g in k.get("configMapGenerator", [])]
    if generators and not (k.get("generatorOptions") or {}).get("disableNameSuffixHash"):
        raise KustomizeError(f"{directory}: generated names with a hash suffix are not supported")
    out = []
    for kind, g in generators:
        data: dict[str, str] = {}
        for literal in g.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        for entry in g.get("files", []):
            key, _, source = entry.rpartition("=") if "=" in entry else ("", "", entry)
            data[key or Path(source).name] = (directory / source).read_text(encoding="utf-8")
        resource: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": g["name"]}}
        if kind == "Secret":
            resource["type"] = g.get("type", "Opaque")
            resource["data"] = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
        else:
            resource["data"] = data
        out.append(resource)
    return out


def _matches(r: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = r["apiVersion"].rpartition("/")
    checks = {"kind": r["kind"], "name": r["metadata"]["name"], "group": group, "version": version,
              "namespace": r["metadata"].get("namespace", "")}
    return all(checks[key] == value for key, value in target.items() if key in checks)


def _apply_patch(directory: Path, resources: list[dict[str, Any]], patch: dict[str, Any]) -> None:
    text = (directory / patch["path"]).read_text(encoding="utf-8") if "path" in patch else patch["patch"]
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(documents) == 1 and isinstance(documents[0], list):  # JSON 6902
        if "target" not in patch:
            raise KustomizeError(f"{directory}: a JSON 6902 patch needs a target")
        targets = [r for r in resources if _matches(r, patch["target"])]
        if not targets:
            raise KustomizeError(f"{directory}: no resource matches {patch['target']}")
        for r in targets:
            for op in documents[0]:
                _json6902(r, op)
        return
    for document in documents:
        target = patch.get("target") or {"kind": document["kind"], "name": document["metadata"]["name"]}
        targets = [r for r in resources if _matches(r, target)]
        if not targets:
            raise KustomizeError(f"{directory}: no resource matches the patch of {target}")
        for r in targets:
            merged = strategic_merge(r, document, builtin=r["apiVersion"] in BUILTIN_GROUPS)
            r.clear()
            r.update(merged)


def strategic_merge(base: Any, patch: Any, builtin: bool, key: str = "") -> Any:
    """Kubernetes' strategic merge patch for the built-in kinds, JSON merge patch otherwise."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for name, value in patch.items():
            if value is None:
                out.pop(name, None)
            elif name in out:
                out[name] = strategic_merge(out[name], value, builtin, name)
            else:
                out[name] = _without_nulls(copy.deepcopy(value))
        return out
    merge_key = MERGE_KEYS.get(key) if builtin else None
    if isinstance(base, list) and isinstance(patch, list) and merge_key:
        out = copy.deepcopy(base)
        for item in patch:
            existing = next((i for i, b in enumerate(out) if b.get(merge_key) == item.get(merge_key)), None)
            if existing is None:
                out.append(copy.deepcopy(item))
            else:
                out[existing] = strategic_merge(out[existing], item, builtin)
        return out
    return copy.deepcopy(patch)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _json6902(resource: dict[str, Any], op: dict[str, Any]) -> None:
    *parents, last = _pointer(op["path"])
    node: Any = resource
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if op["op"] in ("add", "replace"):
        if isinstance(node, list):
            if last == "-":
                node.append(copy.deepcopy(op["value"]))
            elif op["op"] == "add":
                node.insert(int(last), copy.deepcopy(op["value"]))
            else:
                node[int(last)] = copy.deepcopy(op["value"])
        else:
            if op["op"] == "replace" and last not in node:
                raise KustomizeError(f"replace of missing {op['path']}")
            node[last] = copy.deepcopy(op["value"])
    elif op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise KustomizeError(f"JSON 6902 op {op['op']} is not supported here")


def pod_spec(r: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template's spec of a workload, or None."""
    if r["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return r["spec"]["template"]["spec"]
    if r["kind"] == "CronJob":
        return r["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def pod_labels(r: dict[str, Any]) -> dict[str, str]:
    if r["kind"] == "CronJob":
        return r["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return r["spec"]["template"]["metadata"].get("labels", {})


def containers(r: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(r)
    return [] if spec is None else [*spec.get("initContainers", []), *spec["containers"]]


def _set_image(resources: list[dict[str, Any]], image: dict[str, Any]) -> None:
    for r in resources:
        for c in containers(r):
            current = c["image"]
            name = current.split("@")[0]
            name = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
            if name != image["name"]:
                continue
            new = image.get("newName", name)
            if image.get("digest"):
                c["image"] = f"{new}@{image['digest']}"
            elif image.get("newTag"):
                c["image"] = f"{new}:{image['newTag']}"
            else:
                c["image"] = new + current[len(name):]
