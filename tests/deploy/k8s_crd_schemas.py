"""JSON schemas for the custom resources of deploy/k8s, derived from their operators' documentation.

kubernetes-validate ships the schemas of Kubernetes' own kinds only. For the operators'
kinds no offline schema is at hand, so these describe the parts of each custom resource's
spec that labshare uses, with the field names, types and enumerations of the operators' API
references (CloudNativePG ``postgresql.cnpg.io/v1``; RabbitMQ Cluster Operator and
messaging-topology operator ``rabbitmq.com/v1beta1``). Every object is closed
(``additionalProperties: false``): a misspelt or unknown field fails, as the API server would
prune or reject it. Nested Kubernetes types (resources, affinity) refer to the Kubernetes
schemas that kubernetes-validate ships.
"""

from __future__ import annotations

from typing import Any

K8S = "https://kubernetes.io/api/_definitions.json#/$defs/"
NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        "maxLength": 253}
QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"}
STRINGS = {"type": "array", "items": {"type": "string"}}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LOCAL_REF = {"type": "object", "additionalProperties": False, "required": ["name"],
             "properties": {"name": NAME}}


def closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": list(required)}


def resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    metadata = closed({"name": NAME, "namespace": NAME, "labels": STRING_MAP, "annotations": STRING_MAP},
                      ("name",))
    return closed({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": metadata,
                   "spec": spec}, ("apiVersion", "kind", "metadata", "spec"))


# ---- CloudNativePG: Cluster ------------------------------------------------------------------------

_ROLE = closed({
    "name": {"type": "string", "minLength": 1},
    "ensure": {"enum": ["present", "absent"]},
    "comment": {"type": "string"},
    "login": {"type": "boolean"},
    "superuser": {"type": "boolean"},
    "createdb": {"type": "boolean"},
    "createrole": {"type": "boolean"},
    "inherit": {"type": "boolean"},
    "replication": {"type": "boolean"},
    "bypassrls": {"type": "boolean"},
    "connectionLimit": {"type": "integer", "minimum": -1},
    "validUntil": {"type": "string"},
    "inRoles": STRINGS,
    "passwordSecret": LOCAL_REF,
    "disablePassword": {"type": "boolean"},
}, ("name",))

_STORAGE = closed({"size": QUANTITY, "storageClass": {"type": "string"}, "resizeInUseVolumes": {"type": "boolean"}})

CNPG_CLUSTER = resource("postgresql.cnpg.io/v1", "Cluster", closed({
    "description": {"type": "string"},
    "instances": {"type": "integer", "minimum": 1},
    "imageName": {"type": "string", "minLength": 1},
    "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
    "primaryUpdateMethod": {"enum": ["switchover", "restart"]},
    "enableSuperuserAccess": {"type": "boolean"},
    "superuserSecret": LOCAL_REF,
    "postgresql": closed({
        "parameters": STRING_MAP,
        "pg_hba": STRINGS,
        "synchronous": closed({"method": {"enum": ["any", "first"]}, "number": {"type": "integer", "minimum": 1},
                               "maxStandbyNamesFromCluster": {"type": "integer"}, "standbyNamesPre": STRINGS,
                               "standbyNamesPost": STRINGS, "dataDurability": {"enum": ["required", "preferred"]}},
                              ("method", "number")),
        "shared_preload_libraries": STRINGS,
    }),
    "bootstrap": closed({
        "initdb": closed({
            "database": {"type": "string"},
            "owner": {"type": "string"},
            "secret": LOCAL_REF,
            "encoding": {"type": "string"},
            "localeCollate": {"type": "string"},
            "localeCType": {"type": "string"},
            "dataChecksums": {"type": "boolean"},
            "postInitSQL": STRINGS,
            "postInitApplicationSQL": STRINGS,
            "postInitTemplateSQL": STRINGS,
        }),
    }),
    "managed": closed({"roles": {"type": "array", "items": _ROLE}}),
    "storage": _STORAGE,
    "walStorage": _STORAGE,
    "resources": {"$ref": K8S + "io.k8s.api.core.v1.ResourceRequirements"},
    "affinity": closed({
        "enablePodAntiAffinity": {"type": "boolean"},
        "podAntiAffinityType": {"enum": ["preferred", "required"]},
        "topologyKey": {"type": "string"},
        "nodeSelector": STRING_MAP,
        "tolerations": {"type": "array", "items": {"$ref": K8S + "io.k8s.api.core.v1.Toleration"}},
    }),
    "monitoring": closed({"enablePodMonitor": {"type": "boolean"}}),
    "minSyncReplicas": {"type": "integer", "minimum": 0},
    "maxSyncReplicas": {"type": "integer", "minimum": 0},
}, ("instances",)))

# ---- RabbitMQ Cluster Operator: RabbitmqCluster ------------------------------------------------------

RABBITMQ_CLUSTER = resource("rabbitmq.com/v1beta1", "RabbitmqCluster", closed({
    "replicas": {"type": "integer", "minimum": 0},
    "image": {"type": "string"},
    "imagePullSecrets": {"type": "array", "items": LOCAL_REF},
    "service": closed({"type": {"enum": ["ClusterIP", "LoadBalancer", "NodePort"]}, "annotations": STRING_MAP,
                       "ipFamilyPolicy": {"type": "string"}}),
    "persistence": closed({"storageClassName": {"type": "string"}, "storage": QUANTITY}),
    "resources": {"$ref": K8S + "io.k8s.api.core.v1.ResourceRequirements"},
    "affinity": {"$ref": K8S + "io.k8s.api.core.v1.Affinity"},
    "tolerations": {"type": "array", "items": {"$ref": K8S + "io.k8s.api.core.v1.Toleration"}},
    "rabbitmq": closed({
        "additionalPlugins": {"type": "array", "items": {"type": "string", "pattern": r"^\w+$"}, "maxItems": 100},
        "additionalConfig": {"type": "string", "maxLength": 100000},
        "advancedConfig": {"type": "string", "maxLength": 100000},
        "envConfig": {"type": "string", "maxLength": 100000},
        "erlangInetConfig": {"type": "string", "maxLength": 2000},
    }),
    "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
    "delayStartSeconds": {"type": "integer", "minimum": 0},
    "skipPostDeployChecks": {"type": "boolean"},
    "tls": {"type": "object"},
    "override": {"type": "object"},
    "secretBackend": {"type": "object"},
}))

# ---- messaging-topology operator -----------------------------------------------------------------------

_CLUSTER_REF = closed({"name": {"type": "string"}, "namespace": {"type": "string"},
                       "connectionSecret": LOCAL_REF})
_ANY_OBJECT = {"type": "object"}


def _topology(kind: str, properties: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    return resource("rabbitmq.com/v1beta1", kind, closed({**properties, "rabbitmqClusterReference": _CLUSTER_REF},
                                                          ("rabbitmqClusterReference", *required)))


TOPOLOGY = {
    "Exchange": _topology("Exchange", {"name": {"type": "string"}, "vhost": {"type": "string"},
                                       "type": {"type": "string"}, "durable": {"type": "boolean"},
                                       "autoDelete": {"type": "boolean"}, "arguments": _ANY_OBJECT}, ("name",)),
    "Queue": _topology("Queue", {"name": {"type": "string"}, "vhost": {"type": "string"},
                                 "type": {"type": "string"}, "durable": {"type": "boolean"},
                                 "autoDelete": {"type": "boolean"}, "deleteIfEmpty": {"type": "boolean"},
                                 "deleteIfUnused": {"type": "boolean"}, "arguments": _ANY_OBJECT}, ("name",)),
    "Binding": _topology("Binding", {"vhost": {"type": "string"}, "source": {"type": "string"},
                                     "destination": {"type": "string"},
                                     "destinationType": {"enum": ["exchange", "queue"]},
                                     "routingKey": {"type": "string"}, "arguments": _ANY_OBJECT}, ()),
    "Policy": _topology("Policy", {"name": {"type": "string"}, "vhost": {"type": "string"},
                                   "pattern": {"type": "string"},
                                   "applyTo": {"enum": ["queues", "classic_queues", "quorum_queues", "exchanges",
                                                        "all"]},
                                   "priority": {"type": "integer"}, "definition": _ANY_OBJECT},
                        ("name", "pattern", "definition")),
    "User": _topology("User", {"tags": {"type": "array", "items": {"enum": ["management", "policymaker", "monitoring",
                                                                            "administrator"]}},
                               "importCredentialsSecret": LOCAL_REF}, ()),
    "Permission": _topology("Permission", {"vhost": {"type": "string"}, "user": {"type": "string"},
                                           "userReference": LOCAL_REF,
                                           "permissions": closed({"configure": {"type": "string"},
                                                                  "write": {"type": "string"},
                                                                  "read": {"type": "string"}})},
                            ("vhost", "permissions")),
}

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("postgresql.cnpg.io/v1", "Cluster"): CNPG_CLUSTER,
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): RABBITMQ_CLUSTER,
    **{("rabbitmq.com/v1beta1", kind): schema for kind, schema in TOPOLOGY.items()},
}
