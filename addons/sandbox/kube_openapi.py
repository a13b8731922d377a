"""`/openapi/v3`: the root index and one OpenAPI 3.0 document per group version.

kubectl reads these documents for two decisions: whether a PATCH endpoint takes the
`fieldValidation` query parameter (then it leaves `--validate=strict` to the server), and how to
build the strategic merge patch of `kubectl apply` (component schemas found by their
`x-kubernetes-group-version-kind`, `x-kubernetes-patch-strategy` and `-merge-key`). The same
schemas drive the simulator's own strategic merge (`SchemaNav`).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any

from holdgate.sandbox.kube_patch import PatchSchema
from holdgate.sandbox.kube_resources import GROUP_VERSIONS, ResourceType, resources_in

Obj = dict[str, Any]

META = "io.k8s.apimachinery.pkg.apis.meta.v1."
CORE = "io.k8s.api.core.v1."
APPS = "io.k8s.api.apps.v1."
AUTOSCALING = "io.k8s.api.autoscaling.v1."
INTSTR = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"

# ---------------------------------------------------------------- schema building blocks


def _ref(name: str) -> Obj:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj_ref(name: str) -> Obj:
    return {"default": {}, "allOf": [_ref(name)]}


def _str(fmt: str = "") -> Obj:
    return {"type": "string", "format": fmt} if fmt else {"type": "string"}


def _int(fmt: str = "int32") -> Obj:
    return {"type": "integer", "format": fmt}


def _bool() -> Obj:
    return {"type": "boolean"}


def _strmap() -> Obj:
    return {"type": "object", "additionalProperties": {"type": "string", "default": ""}}


def _strlist(*, merge: bool = False) -> Obj:
    schema: Obj = {"type": "array", "items": {"type": "string", "default": ""}}
    if merge:
        schema["x-kubernetes-patch-strategy"] = "merge"
        schema["x-kubernetes-list-type"] = "set"
    else:
        schema["x-kubernetes-list-type"] = "atomic"
    return schema


def _list(
    item: str, merge_key: str = "", strategy: str = "merge", map_keys: tuple[str, ...] = ()
) -> Obj:
    schema: Obj = {"type": "array", "items": _obj_ref(item)}
    if merge_key:
        schema["x-kubernetes-patch-merge-key"] = merge_key
        schema["x-kubernetes-patch-strategy"] = strategy
        schema["x-kubernetes-list-type"] = "map"
        schema["x-kubernetes-list-map-keys"] = list(map_keys or (merge_key,))
    else:
        schema["x-kubernetes-list-type"] = "atomic"
    return schema


def _struct(
    props: Obj, *, required: tuple[str, ...] = (), description: str = "", ext: Obj | None = None
) -> Obj:
    schema: Obj = {"type": "object"}
    if description:
        schema["description"] = description
    schema["properties"] = props
    if required:
        schema["required"] = list(required)
    schema.update(ext or {})
    return schema


def _gvk(group: str, version: str, kind: str) -> list[Obj]:
    return [{"group": group, "kind": kind, "version": version}]


def _top(group: str, version: str, kind: str, description: str, props: Obj) -> Obj:
    body = {"apiVersion": _str(), "kind": _str(), "metadata": _obj_ref(META + "ObjectMeta")}
    body.update(props)
    return _struct(
        body,
        description=description,
        ext={"x-kubernetes-group-version-kind": _gvk(group, version, kind)},
    )


def _list_kind(group: str, version: str, kind: str, item: str) -> Obj:
    return _struct(
        {
            "apiVersion": _str(),
            "items": {"type": "array", "items": _obj_ref(item)},
            "kind": _str(),
            "metadata": _obj_ref(META + "ListMeta"),
        },
        required=("items",),
        description=f"{kind} is a list of {kind.removesuffix('List')} objects.",
        ext={"x-kubernetes-group-version-kind": _gvk(group, version, kind)},
    )


_ALL_GVKS = [
    {"group": g, "kind": k, "version": "v1"}
    for g in ("", "apps", "autoscaling", "meta.k8s.io")
    for k in ("DeleteOptions", "WatchEvent")
]


def _handler() -> Obj:
    return _struct(
        {
            "exec": _struct({"command": _strlist()}),
            "httpGet": _obj_ref(CORE + "HTTPGetAction"),
            "tcpSocket": _struct({"host": _str(), "port": _obj_ref(INTSTR)}),
            "sleep": _struct({"seconds": _int("int64")}),
        }
    )


@cache
def component_schemas() -> dict[str, Obj]:
    """Every component schema the simulator publishes, by its Kubernetes name."""
    s: dict[str, Obj] = {}
    # apimachinery
    s[QUANTITY] = {
        "type": "string",
        "description": "Quantity is a fixed-point representation of a number.",
    }
    s[INTSTR] = {"type": "string", "format": "int-or-string", "x-kubernetes-int-or-string": True}
    s[META + "Time"] = {"type": "string", "format": "date-time"}
    s[META + "FieldsV1"] = {"type": "object"}
    s[META + "Patch"] = {
        "type": "object",
        "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.",
    }
    s[META + "OwnerReference"] = _struct(
        {
            "apiVersion": _str(),
            "blockOwnerDeletion": _bool(),
            "controller": _bool(),
            "kind": _str(),
            "name": _str(),
            "uid": _str(),
        },
        required=("apiVersion", "kind", "name", "uid"),
        ext={"x-kubernetes-map-type": "atomic"},
    )
    s[META + "ManagedFieldsEntry"] = _struct(
        {
            "apiVersion": _str(),
            "fieldsType": _str(),
            "fieldsV1": _ref(META + "FieldsV1"),
            "manager": _str(),
            "operation": _str(),
            "subresource": _str(),
            "time": _ref(META + "Time"),
        }
    )
    s[META + "ObjectMeta"] = _struct(
        {
            "annotations": _strmap(),
            "creationTimestamp": _ref(META + "Time"),
            "deletionGracePeriodSeconds": _int("int64"),
            "deletionTimestamp": _ref(META + "Time"),
            "finalizers": _strlist(merge=True),
            "generateName": _str(),
            "generation": _int("int64"),
            "labels": _strmap(),
            "managedFields": _list(META + "ManagedFieldsEntry"),
            "name": _str(),
            "namespace": _str(),
            "ownerReferences": _list(META + "OwnerReference", "uid"),
            "resourceVersion": _str(),
            "selfLink": _str(),
            "uid": _str(),
        },
        description="ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
    )
    s[META + "ListMeta"] = _struct(
        {
            "continue": _str(),
            "remainingItemCount": _int("int64"),
            "resourceVersion": _str(),
            "selfLink": _str(),
        }
    )
    s[META + "LabelSelectorRequirement"] = _struct(
        {"key": _str(), "operator": _str(), "values": _strlist()}, required=("key", "operator")
    )
    s[META + "LabelSelector"] = _struct(
        {
            "matchExpressions": _list(META + "LabelSelectorRequirement"),
            "matchLabels": _strmap(),
        },
        ext={"x-kubernetes-map-type": "atomic"},
    )
    s[META + "StatusCause"] = _struct({"field": _str(), "message": _str(), "reason": _str()})
    s[META + "StatusDetails"] = _struct(
        {
            "causes": _list(META + "StatusCause"),
            "group": _str(),
            "kind": _str(),
            "name": _str(),
            "retryAfterSeconds": _int(),
            "uid": _str(),
        }
    )
    s[META + "Status"] = _struct(
        {
            "apiVersion": _str(),
            "code": _int(),
            "details": _ref(META + "StatusDetails"),
            "kind": _str(),
            "message": _str(),
            "metadata": _obj_ref(META + "ListMeta"),
            "reason": _str(),
            "status": _str(),
        },
        description="Status is a return value for calls that don't return other objects.",
        ext={"x-kubernetes-group-version-kind": [{"group": "", "kind": "Status", "version": "v1"}]},
    )
    s[META + "Preconditions"] = _struct({"resourceVersion": _str(), "uid": _str()})
    s[META + "DeleteOptions"] = _struct(
        {
            "apiVersion": _str(),
            "dryRun": _strlist(),
            "gracePeriodSeconds": _int("int64"),
            "ignoreStoreReadErrorWithClusterBreakingPotential": _bool(),
            "kind": _str(),
            "orphanDependents": _bool(),
            "preconditions": _ref(META + "Preconditions"),
            "propagationPolicy": _str(),
        },
        description="DeleteOptions may be provided when deleting an API object.",
        ext={"x-kubernetes-group-version-kind": _ALL_GVKS[0::2]},
    )
    s[META + "WatchEvent"] = _struct(
        {"object": {"type": "object"}, "type": _str()},
        required=("type", "object"),
        ext={"x-kubernetes-group-version-kind": _ALL_GVKS[1::2]},
    )
    # core/v1: namespaces, secrets, configmaps
    s[CORE + "NamespaceCondition"] = _struct(
        {
            "lastTransitionTime": _ref(META + "Time"),
            "message": _str(),
            "reason": _str(),
            "status": _str(),
            "type": _str(),
        },
        required=("type", "status"),
    )
    s[CORE + "NamespaceSpec"] = _struct({"finalizers": _strlist()})
    s[CORE + "NamespaceStatus"] = _struct(
        {
            "conditions": _list(CORE + "NamespaceCondition", "type"),
            "phase": _str(),
        }
    )
    s[CORE + "Namespace"] = _top(
        "",
        "v1",
        "Namespace",
        "Namespace provides a scope for Names. Use of multiple namespaces is optional.",
        {"spec": _obj_ref(CORE + "NamespaceSpec"), "status": _obj_ref(CORE + "NamespaceStatus")},
    )
    s[CORE + "NamespaceList"] = _list_kind("", "v1", "NamespaceList", CORE + "Namespace")
    s[CORE + "Secret"] = _top(
        "",
        "v1",
        "Secret",
        "Secret holds secret data of a certain type. The total bytes of the values in the Data field must be less than MaxSecretSize bytes.",
        {
            "data": {
                "type": "object",
                "additionalProperties": {"type": "string", "format": "byte"},
            },
            "immutable": _bool(),
            "stringData": _strmap(),
            "type": _str(),
        },
    )
    s[CORE + "SecretList"] = _list_kind("", "v1", "SecretList", CORE + "Secret")
    s[CORE + "ConfigMap"] = _top(
        "",
        "v1",
        "ConfigMap",
        "ConfigMap holds configuration data for pods to consume.",
        {
            "binaryData": {
                "type": "object",
                "additionalProperties": {"type": "string", "format": "byte"},
            },
            "data": _strmap(),
            "immutable": _bool(),
        },
    )
    s[CORE + "ConfigMapList"] = _list_kind("", "v1", "ConfigMapList", CORE + "ConfigMap")
    # core/v1: pods
    key_ref = _struct({"key": _str(), "name": _str(), "optional": _bool()}, required=("key",))
    s[CORE + "EnvVarSource"] = _struct(
        {
            "configMapKeyRef": key_ref,
            "fieldRef": _struct({"apiVersion": _str(), "fieldPath": _str()}),
            "resourceFieldRef": _struct(
                {"containerName": _str(), "divisor": _ref(QUANTITY), "resource": _str()}
            ),
            "secretKeyRef": key_ref,
        }
    )
    s[CORE + "EnvVar"] = _struct(
        {"name": _str(), "value": _str(), "valueFrom": _ref(CORE + "EnvVarSource")},
        required=("name",),
    )
    s[CORE + "EnvFromSource"] = _struct(
        {
            "configMapRef": _struct({"name": _str(), "optional": _bool()}),
            "prefix": _str(),
            "secretRef": _struct({"name": _str(), "optional": _bool()}),
        }
    )
    s[CORE + "ContainerPort"] = _struct(
        {
            "containerPort": _int(),
            "hostIP": _str(),
            "hostPort": _int(),
            "name": _str(),
            "protocol": _str(),
        },
        required=("containerPort",),
    )
    s[CORE + "VolumeMount"] = _struct(
        {
            "mountPath": _str(),
            "mountPropagation": _str(),
            "name": _str(),
            "readOnly": _bool(),
            "recursiveReadOnly": _str(),
            "subPath": _str(),
            "subPathExpr": _str(),
        },
        required=("name", "mountPath"),
    )
    s[CORE + "VolumeDevice"] = _struct(
        {"devicePath": _str(), "name": _str()}, required=("name", "devicePath")
    )
    s[CORE + "ResourceRequirements"] = _struct(
        {
            "claims": _list(CORE + "ResourceClaim", "name"),
            "limits": {"type": "object", "additionalProperties": _ref(QUANTITY)},
            "requests": {"type": "object", "additionalProperties": _ref(QUANTITY)},
        }
    )
    s[CORE + "ResourceClaim"] = _struct({"name": _str(), "request": _str()}, required=("name",))
    s[CORE + "HTTPGetAction"] = _struct(
        {
            "host": _str(),
            "httpHeaders": {"type": "array", "items": _struct({"name": _str(), "value": _str()})},
            "path": _str(),
            "port": _ref(INTSTR),
            "scheme": _str(),
        }
    )
    probe = _handler()
    probe["properties"].update(
        {
            "failureThreshold": _int(),
            "grpc": _struct({"port": _int(), "service": _str()}),
            "initialDelaySeconds": _int(),
            "periodSeconds": _int(),
            "successThreshold": _int(),
            "terminationGracePeriodSeconds": _int("int64"),
            "timeoutSeconds": _int(),
        }
    )
    s[CORE + "Probe"] = probe
    s[CORE + "Lifecycle"] = _struct(
        {"postStart": _handler(), "preStop": _handler(), "stopSignal": _str()}
    )
    seccomp = _struct({"localhostProfile": _str(), "type": _str()})
    se_linux = _struct({"level": _str(), "role": _str(), "type": _str(), "user": _str()})
    s[CORE + "SecurityContext"] = _struct(
        {
            "allowPrivilegeEscalation": _bool(),
            "appArmorProfile": seccomp,
            "capabilities": _struct({"add": _strlist(), "drop": _strlist()}),
            "privileged": _bool(),
            "procMount": _str(),
            "readOnlyRootFilesystem": _bool(),
            "runAsGroup": _int("int64"),
            "runAsNonRoot": _bool(),
            "runAsUser": _int("int64"),
            "seLinuxOptions": se_linux,
            "seccompProfile": seccomp,
        }
    )
    s[CORE + "PodSecurityContext"] = _struct(
        {
            "appArmorProfile": seccomp,
            "fsGroup": _int("int64"),
            "fsGroupChangePolicy": _str(),
            "runAsGroup": _int("int64"),
            "runAsNonRoot": _bool(),
            "runAsUser": _int("int64"),
            "seLinuxOptions": se_linux,
            "seccompProfile": seccomp,
            "supplementalGroups": {"type": "array", "items": _int("int64")},
            "sysctls": {"type": "array", "items": _struct({"name": _str(), "value": _str()})},
        }
    )
    s[CORE + "Container"] = _struct(
        {
            "args": _strlist(),
            "command": _strlist(),
            "env": _list(CORE + "EnvVar", "name"),
            "envFrom": _list(CORE + "EnvFromSource"),
            "image": _str(),
            "imagePullPolicy": _str(),
            "lifecycle": _ref(CORE + "Lifecycle"),
            "livenessProbe": _ref(CORE + "Probe"),
            "name": _str(),
            "ports": _list(
                CORE + "ContainerPort", "containerPort", map_keys=("containerPort", "protocol")
            ),
            "readinessProbe": _ref(CORE + "Probe"),
            "resources": _obj_ref(CORE + "ResourceRequirements"),
            "resizePolicy": {
                "type": "array",
                "items": _struct({"resourceName": _str(), "restartPolicy": _str()}),
                "x-kubernetes-list-type": "atomic",
            },
            "restartPolicy": _str(),
            "securityContext": _ref(CORE + "SecurityContext"),
            "startupProbe": _ref(CORE + "Probe"),
            "stdin": _bool(),
            "stdinOnce": _bool(),
            "terminationMessagePath": _str(),
            "terminationMessagePolicy": _str(),
            "tty": _bool(),
            "volumeDevices": _list(CORE + "VolumeDevice", "devicePath"),
            "volumeMounts": _list(CORE + "VolumeMount", "mountPath"),
            "workingDir": _str(),
        },
        required=("name",),
    )
    items = {"type": "array", "items": _struct({"key": _str(), "mode": _int(), "path": _str()})}
    s[CORE + "Volume"] = _struct(
        {
            "configMap": _struct(
                {"defaultMode": _int(), "items": items, "name": _str(), "optional": _bool()}
            ),
            "downwardAPI": _ref(CORE + "DownwardAPIVolumeSource"),
            "emptyDir": _struct({"medium": _str(), "sizeLimit": _ref(QUANTITY)}),
            "hostPath": _struct({"path": _str(), "type": _str()}),
            "name": _str(),
            "persistentVolumeClaim": _struct({"claimName": _str(), "readOnly": _bool()}),
            "projected": _ref(CORE + "ProjectedVolumeSource"),
            "secret": _struct(
                {"defaultMode": _int(), "items": items, "optional": _bool(), "secretName": _str()}
            ),
        },
        required=("name",),
    )
    field_ref = _struct({"apiVersion": _str(), "fieldPath": _str()})
    resource_ref = _struct({"containerName": _str(), "divisor": _ref(QUANTITY), "resource": _str()})
    s[CORE + "DownwardAPIVolumeFile"] = _struct(
        {"fieldRef": field_ref, "mode": _int(), "path": _str(), "resourceFieldRef": resource_ref},
        required=("path",),
    )
    s[CORE + "DownwardAPIVolumeSource"] = _struct(
        {"defaultMode": _int(), "items": _list(CORE + "DownwardAPIVolumeFile")}
    )
    projection_items = {"items": items, "name": _str(), "optional": _bool()}
    s[CORE + "VolumeProjection"] = _struct(
        {
            "configMap": _struct(projection_items),
            "downwardAPI": _struct({"items": _list(CORE + "DownwardAPIVolumeFile")}),
            "secret": _struct(projection_items),
            "serviceAccountToken": _struct(
                {"audience": _str(), "expirationSeconds": _int("int64"), "path": _str()}
            ),
        }
    )
    s[CORE + "ProjectedVolumeSource"] = _struct(
        {"defaultMode": _int(), "sources": _list(CORE + "VolumeProjection")}
    )
    s[CORE + "NodeSelectorRequirement"] = _struct(
        {"key": _str(), "operator": _str(), "values": _strlist()}, required=("key", "operator")
    )
    s[CORE + "NodeSelectorTerm"] = _struct(
        {
            "matchExpressions": _list(CORE + "NodeSelectorRequirement"),
            "matchFields": _list(CORE + "NodeSelectorRequirement"),
        },
        ext={"x-kubernetes-map-type": "atomic"},
    )
    s[CORE + "PodAffinityTerm"] = _struct(
        {
            "labelSelector": _ref(META + "LabelSelector"),
            "matchLabelKeys": _strlist(),
            "mismatchLabelKeys": _strlist(),
            "namespaceSelector": _ref(META + "LabelSelector"),
            "namespaces": _strlist(),
            "topologyKey": _str(),
        },
        required=("topologyKey",),
    )
    s[CORE + "WeightedPodAffinityTerm"] = _struct(
        {"podAffinityTerm": _obj_ref(CORE + "PodAffinityTerm"), "weight": _int()},
        required=("weight", "podAffinityTerm"),
    )
    pod_affinity = _struct(
        {
            "preferredDuringSchedulingIgnoredDuringExecution": _list(
                CORE + "WeightedPodAffinityTerm"
            ),
            "requiredDuringSchedulingIgnoredDuringExecution": _list(CORE + "PodAffinityTerm"),
        }
    )
    s[CORE + "Affinity"] = _struct(
        {
            "nodeAffinity": _struct(
                {
                    "preferredDuringSchedulingIgnoredDuringExecution": {
                        "type": "array",
                        "items": _struct(
                            {"preference": _obj_ref(CORE + "NodeSelectorTerm"), "weight": _int()}
                        ),
                        "x-kubernetes-list-type": "atomic",
                    },
                    "requiredDuringSchedulingIgnoredDuringExecution": _struct(
                        {"nodeSelectorTerms": _list(CORE + "NodeSelectorTerm")},
                        ext={"x-kubernetes-map-type": "atomic"},
                    ),
                }
            ),
            "podAffinity": pod_affinity,
            "podAntiAffinity": pod_affinity,
        }
    )
    s[CORE + "ContainerState"] = _struct(
        {
            "running": _struct({"startedAt": _ref(META + "Time")}),
            "terminated": _struct(
                {
                    "containerID": _str(),
                    "exitCode": _int(),
                    "finishedAt": _ref(META + "Time"),
                    "message": _str(),
                    "reason": _str(),
                    "signal": _int(),
                    "startedAt": _ref(META + "Time"),
                }
            ),
            "waiting": _struct({"message": _str(), "reason": _str()}),
        }
    )
    s[CORE + "Toleration"] = _struct(
        {
            "effect": _str(),
            "key": _str(),
            "operator": _str(),
            "tolerationSeconds": _int("int64"),
            "value": _str(),
        }
    )
    s[CORE + "LocalObjectReference"] = _struct(
        {"name": _str()}, ext={"x-kubernetes-map-type": "atomic"}
    )
    s[CORE + "PodSpec"] = _struct(
        {
            "activeDeadlineSeconds": _int("int64"),
            "affinity": _ref(CORE + "Affinity"),
            "automountServiceAccountToken": _bool(),
            "containers": _list(CORE + "Container", "name"),
            "dnsConfig": _struct(
                {
                    "nameservers": _strlist(),
                    "options": {
                        "type": "array",
                        "items": _struct({"name": _str(), "value": _str()}),
                    },
                    "searches": _strlist(),
                }
            ),
            "dnsPolicy": _str(),
            "enableServiceLinks": _bool(),
            "ephemeralContainers": _list(CORE + "Container", "name"),
            "hostUsers": _bool(),
            "os": _struct({"name": _str()}, required=("name",)),
            "overhead": {"type": "object", "additionalProperties": _ref(QUANTITY)},
            "schedulingGates": _list(CORE + "LocalObjectReference", "name"),
            "setHostnameAsFQDN": _bool(),
            "hostAliases": _list(CORE + "HostAlias", "ip"),
            "hostIPC": _bool(),
            "hostNetwork": _bool(),
            "hostPID": _bool(),
            "hostname": _str(),
            "imagePullSecrets": _list(CORE + "LocalObjectReference", "name"),
            "initContainers": _list(CORE + "Container", "name"),
            "nodeName": _str(),
            "nodeSelector": _strmap(),
            "preemptionPolicy": _str(),
            "priority": _int(),
            "priorityClassName": _str(),
            "readinessGates": {"type": "array", "items": _struct({"conditionType": _str()})},
            "restartPolicy": _str(),
            "runtimeClassName": _str(),
            "schedulerName": _str(),
            "securityContext": _ref(CORE + "PodSecurityContext"),
            "serviceAccount": _str(),
            "serviceAccountName": _str(),
            "shareProcessNamespace": _bool(),
            "subdomain": _str(),
            "terminationGracePeriodSeconds": _int("int64"),
            "tolerations": _list(CORE + "Toleration"),
            "topologySpreadConstraints": _list(
                CORE + "TopologySpreadConstraint",
                "topologyKey",
                map_keys=("topologyKey", "whenUnsatisfiable"),
            ),
            "volumes": _list(CORE + "Volume", "name", strategy="merge,retainKeys"),
        },
        required=("containers",),
    )
    s[CORE + "HostAlias"] = _struct({"hostnames": _strlist(), "ip": _str()}, required=("ip",))
    s[CORE + "TopologySpreadConstraint"] = _struct(
        {
            "labelSelector": _ref(META + "LabelSelector"),
            "maxSkew": _int(),
            "minDomains": _int(),
            "topologyKey": _str(),
            "whenUnsatisfiable": _str(),
        }
    )
    s[CORE + "PodCondition"] = _struct(
        {
            "lastProbeTime": _ref(META + "Time"),
            "lastTransitionTime": _ref(META + "Time"),
            "message": _str(),
            "observedGeneration": _int("int64"),
            "reason": _str(),
            "status": _str(),
            "type": _str(),
        },
        required=("type", "status"),
    )
    s[CORE + "ContainerStatus"] = _struct(
        {
            "containerID": _str(),
            "image": _str(),
            "imageID": _str(),
            "lastState": _obj_ref(CORE + "ContainerState"),
            "name": _str(),
            "ready": _bool(),
            "restartCount": _int(),
            "started": _bool(),
            "state": _obj_ref(CORE + "ContainerState"),
        }
    )
    s[CORE + "PodIP"] = _struct({"ip": _str()}, required=("ip",))
    s[CORE + "HostIP"] = _struct({"ip": _str()}, required=("ip",))
    s[CORE + "PodStatus"] = _struct(
        {
            "conditions": _list(CORE + "PodCondition", "type"),
            "containerStatuses": _list(CORE + "ContainerStatus"),
            "hostIP": _str(),
            "hostIPs": _list(CORE + "HostIP", "ip"),
            "message": _str(),
            "nominatedNodeName": _str(),
            "observedGeneration": _int("int64"),
            "phase": _str(),
            "podIP": _str(),
            "podIPs": _list(CORE + "PodIP", "ip"),
            "qosClass": _str(),
            "reason": _str(),
            "startTime": _ref(META + "Time"),
        }
    )
    s[CORE + "Pod"] = _top(
        "",
        "v1",
        "Pod",
        "Pod is a collection of containers that can run on a host.",
        {"spec": _obj_ref(CORE + "PodSpec"), "status": _obj_ref(CORE + "PodStatus")},
    )
    s[CORE + "PodList"] = _list_kind("", "v1", "PodList", CORE + "Pod")
    s[CORE + "PodTemplateSpec"] = _struct(
        {"metadata": _obj_ref(META + "ObjectMeta"), "spec": _obj_ref(CORE + "PodSpec")}
    )
    # apps/v1 and autoscaling/v1
    s[APPS + "RollingUpdateDeployment"] = _struct(
        {"maxSurge": _ref(INTSTR), "maxUnavailable": _ref(INTSTR)}
    )
    s[APPS + "DeploymentStrategy"] = _struct(
        {"rollingUpdate": _ref(APPS + "RollingUpdateDeployment"), "type": _str()}
    )
    strategy = _obj_ref(APPS + "DeploymentStrategy")
    strategy["x-kubernetes-patch-strategy"] = "retainKeys"
    s[APPS + "DeploymentSpec"] = _struct(
        {
            "minReadySeconds": _int(),
            "paused": _bool(),
            "progressDeadlineSeconds": _int(),
            "replicas": _int(),
            "revisionHistoryLimit": _int(),
            "selector": _ref(META + "LabelSelector"),
            "strategy": strategy,
            "template": _obj_ref(CORE + "PodTemplateSpec"),
        },
        required=("selector", "template"),
    )
    s[APPS + "DeploymentCondition"] = _struct(
        {
            "lastTransitionTime": _ref(META + "Time"),
            "lastUpdateTime": _ref(META + "Time"),
            "message": _str(),
            "reason": _str(),
            "status": _str(),
            "type": _str(),
        },
        required=("type", "status"),
    )
    s[APPS + "DeploymentStatus"] = _struct(
        {
            "availableReplicas": _int(),
            "collisionCount": _int(),
            "conditions": _list(APPS + "DeploymentCondition", "type"),
            "observedGeneration": _int("int64"),
            "readyReplicas": _int(),
            "replicas": _int(),
            "terminatingReplicas": _int(),
            "unavailableReplicas": _int(),
            "updatedReplicas": _int(),
        }
    )
    s[APPS + "Deployment"] = _top(
        "apps",
        "v1",
        "Deployment",
        "Deployment enables declarative updates for Pods and ReplicaSets.",
        {"spec": _obj_ref(APPS + "DeploymentSpec"), "status": _obj_ref(APPS + "DeploymentStatus")},
    )
    s[APPS + "DeploymentList"] = _list_kind("apps", "v1", "DeploymentList", APPS + "Deployment")
    s[AUTOSCALING + "Scale"] = _top(
        "autoscaling",
        "v1",
        "Scale",
        "Scale represents a scaling request for a resource.",
        {
            "spec": _struct({"replicas": _int()}),
            "status": _struct({"replicas": _int(), "selector": _str()}, required=("replicas",)),
        },
    )
    return s


_KIND_SCHEMA = {
    ("", "Namespace"): CORE + "Namespace",
    ("", "Secret"): CORE + "Secret",
    ("", "ConfigMap"): CORE + "ConfigMap",
    ("", "Pod"): CORE + "Pod",
    ("apps", "Deployment"): APPS + "Deployment",
}


def schema_name(rt: ResourceType) -> str:
    """The component schema name of a resource's kind."""
    return _KIND_SCHEMA[(rt.group, rt.kind)]


# ---------------------------------------------------------------- schema navigation


class SchemaNav:
    """A `PatchSchema` over the component schemas (resolves `$ref` and single-`allOf`)."""

    def __init__(self, schema: Obj | None) -> None:
        self._schema = _resolve(schema)

    @classmethod
    def for_resource(cls, rt: ResourceType) -> SchemaNav:
        """The navigator at the root of a resource's kind."""
        return cls(component_schemas()[schema_name(rt)])

    def field(self, key: str) -> PatchSchema:
        """The schema of a property (or of a map's values)."""
        if self._schema is None:
            return SchemaNav(None)
        props = self._schema.get("properties") or {}
        if key in props:
            return SchemaNav(props[key])
        extra = self._schema.get("additionalProperties")
        return SchemaNav(extra if isinstance(extra, dict) else None)

    def items(self) -> PatchSchema:
        """The schema of a list's items."""
        return SchemaNav(self._schema.get("items") if self._schema else None)

    def list_strategy(self) -> tuple[bool, str]:
        """(merge?, merge key) from x-kubernetes-patch-strategy / -merge-key."""
        if self._schema is None:
            return False, ""
        strategy = str(self._schema.get("x-kubernetes-patch-strategy", ""))
        return "merge" in strategy.split(","), str(
            self._schema.get("x-kubernetes-patch-merge-key", "")
        )


def _resolve(schema: Obj | None) -> Obj | None:
    """Follow `$ref` and `allOf: [{$ref}]`, keeping the referrer's patch extensions."""
    if schema is None:
        return None
    extensions = {k: v for k, v in schema.items() if k.startswith("x-kubernetes-patch")}
    target = schema
    for _ in range(8):
        if "$ref" in target:
            target = component_schemas().get(target["$ref"].rsplit("/", 1)[-1], {})
        elif isinstance(target.get("allOf"), list) and len(target["allOf"]) == 1:
            target = target["allOf"][0]
        else:
            break
    if extensions:
        target = {**target, **extensions}
    return target


# ---------------------------------------------------------------- documents


def _param(name: str, where: str, description: str, schema: Obj, required: bool = False) -> Obj:
    param: Obj = {"name": name, "in": where, "description": description, "schema": schema}
    if required:
        param["required"] = True
    return param


def _q(name: str, description: str, kind: str = "string") -> Obj:
    return _param(name, "query", description, {"type": kind, "uniqueItems": True})


_PRETTY = _q("pretty", "If 'true', then the output is pretty printed.")
_DRY_RUN = _q(
    "dryRun",
    "When present, indicates that modifications should not be persisted. An invalid or "
    "unrecognized dryRun directive will result in an error response and no further processing "
    "of the request. Valid values are: - All: all dry run stages will be processed",
)
_FIELD_MANAGER = _q(
    "fieldManager",
    "fieldManager is a name associated with the actor or entity that is making these changes.",
)
_FIELD_VALIDATION = _q(
    "fieldValidation",
    "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) "
    "containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict",
)
_FORCE = _q("force", 'Force is going to "force" Apply requests.', "boolean")
_LIST_PARAMS = [
    _q(
        "allowWatchBookmarks",
        'allowWatchBookmarks requests watch events with type "BOOKMARK".',
        "boolean",
    ),
    _q(
        "continue",
        "The continue option should be set when retrieving more results from the server.",
    ),
    _q("fieldSelector", "A selector to restrict the list of returned objects by their fields."),
    _q("labelSelector", "A selector to restrict the list of returned objects by their labels."),
    _q("limit", "limit is a maximum number of responses to return for a list call.", "integer"),
    _q(
        "resourceVersion",
        "resourceVersion sets a constraint on what resource versions a request may be served from.",
    ),
    _q(
        "resourceVersionMatch",
        "resourceVersionMatch determines how resourceVersion is applied to list calls.",
    ),
    _q(
        "sendInitialEvents",
        "`sendInitialEvents=true` may be set together with `watch=true`.",
        "boolean",
    ),
    _q("timeoutSeconds", "Timeout for the list/watch call.", "integer"),
    _q(
        "watch",
        "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
        "boolean",
    ),
]
_DELETE_PARAMS = [
    _DRY_RUN,
    _q(
        "gracePeriodSeconds",
        "The duration in seconds before the object should be deleted.",
        "integer",
    ),
    _q(
        "ignoreStoreReadErrorWithClusterBreakingPotential",
        "if set to true, it will trigger an unsafe deletion of the resource in case the normal deletion flow fails with a corrupt object error.",
        "boolean",
    ),
    _q("orphanDependents", "Deprecated: please use the PropagationPolicy.", "boolean"),
    _q("propagationPolicy", "Whether and how garbage collection will be performed."),
]
_JSON_TYPES = ("application/json", "application/yaml", "application/vnd.kubernetes.protobuf")
_WATCH_TYPES = (
    "application/json",
    "application/json;stream=watch",
    "application/vnd.kubernetes.protobuf",
    "application/vnd.kubernetes.protobuf;stream=watch",
    "application/yaml",
)


def _content(schema_ref: str, types: tuple[str, ...] = _JSON_TYPES) -> Obj:
    return {t: {"schema": _ref(schema_ref)} for t in types}


def _responses(schema_ref: str, *codes: str, types: tuple[str, ...] = _JSON_TYPES) -> Obj:
    out: Obj = {
        code: {"description": _CODE_TEXT[code], "content": _content(schema_ref, types)}
        for code in codes
    }
    out["401"] = {"description": "Unauthorized"}
    return out


_CODE_TEXT = {"200": "OK", "201": "Created", "202": "Accepted"}


def _operation(
    rt: ResourceType,
    action: str,
    op_id: str,
    description: str,
    responses: Obj,
    params: list[Obj] | None = None,
    body: Obj | None = None,
    kind: str | None = None,
    group: str | None = None,
    version: str | None = None,
) -> Obj:
    tag = f"{rt.group or 'core'}_{rt.version}"
    op: Obj = {"tags": [tag], "description": description, "operationId": op_id}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    op["responses"] = responses
    op["x-kubernetes-action"] = action
    op["x-kubernetes-group-version-kind"] = {
        "group": rt.group if group is None else group,
        "kind": kind or rt.kind,
        "version": version or rt.version,
    }
    return op


def _body(schema_ref: str) -> Obj:
    return {"content": {"*/*": {"schema": _ref(schema_ref)}}, "required": True}


def _patch_body() -> Obj:
    types = (
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    )
    return {"content": {t: {"schema": _ref(META + "Patch")} for t in types}, "required": True}


def _op_name(rt: ResourceType) -> str:
    group = rt.group.capitalize() if rt.group else "Core"
    return f"{group}{rt.version.capitalize()}"


def _resource_paths(rt: ResourceType) -> dict[str, Obj]:
    """The paths of one resource, as the apiserver publishes them."""
    base = rt.prefix
    ns_param = _param(
        "namespace",
        "path",
        "object name and auth scope, such as for teams and projects",
        {"type": "string", "uniqueItems": True},
        True,
    )
    name_param = _param(
        "name", "path", f"name of the {rt.kind}", {"type": "string", "uniqueItems": True}, True
    )
    scope = "Namespaced" if rt.namespaced else ""
    ident = f"{_op_name(rt)}{scope}{rt.kind}"
    schema = schema_name(rt)
    list_schema = schema + "List"
    collection = (
        f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
    )
    item = f"{collection}/{{name}}"
    scoped = [ns_param] if rt.namespaced else []
    write = [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION]
    paths: dict[str, Obj] = {}
    paths[collection] = {
        "get": _operation(
            rt,
            "list",
            f"list{ident}",
            f"list or watch objects of kind {rt.kind}",
            _responses(list_schema, "200", types=_WATCH_TYPES),
            _LIST_PARAMS,
        ),
        "post": _operation(
            rt,
            "post",
            f"create{ident}",
            f"create a {rt.kind}",
            _responses(schema, "200", "201", "202"),
            write,
            _body(schema),
        ),
        "parameters": [*scoped, _PRETTY],
    }
    if "deletecollection" in rt.verbs:
        paths[collection]["delete"] = _operation(
            rt,
            "deletecollection",
            f"delete{_op_name(rt)}Collection{scope}{rt.kind}",
            f"delete collection of {rt.kind}",
            _responses(META + "Status", "200"),
            [*_DELETE_PARAMS, *_LIST_PARAMS[1:-1]],
            _body(META + "DeleteOptions"),
        )
    paths[item] = {
        "get": _operation(
            rt, "get", f"read{ident}", f"read the specified {rt.kind}", _responses(schema, "200")
        ),
        "put": _operation(
            rt,
            "put",
            f"replace{ident}",
            f"replace the specified {rt.kind}",
            _responses(schema, "200", "201"),
            write,
            _body(schema),
        ),
        "delete": _operation(
            rt,
            "delete",
            f"delete{ident}",
            f"delete a {rt.kind}",
            _responses(schema if rt.returns_deleted_object else META + "Status", "200", "202"),
            _DELETE_PARAMS,
            _body(META + "DeleteOptions"),
        ),
        "patch": _operation(
            rt,
            "patch",
            f"patch{ident}",
            f"partially update the specified {rt.kind}",
            _responses(schema, "200", "201"),
            [*write, _FORCE],
            _patch_body(),
        ),
        "parameters": [name_param, *scoped, _PRETTY],
    }
    for sub in rt.subresources:
        sub_path = f"{item}/{sub.name}"
        title = f"{ident}{sub.name.capitalize()}"
        if sub.name in ("status", "scale"):
            sub_schema = schema if sub.name == "status" else AUTOSCALING + "Scale"
            kw: Obj = {"kind": sub.kind, "group": sub.group, "version": sub.version}
            paths[sub_path] = {
                "get": _operation(
                    rt,
                    "get",
                    f"read{title}",
                    f"read {sub.name} of the specified {rt.kind}",
                    _responses(sub_schema, "200"),
                    **kw,
                ),
                "put": _operation(
                    rt,
                    "put",
                    f"replace{title}",
                    f"replace {sub.name} of the specified {rt.kind}",
                    _responses(sub_schema, "200", "201"),
                    write,
                    _body(sub_schema),
                    **kw,
                ),
                "patch": _operation(
                    rt,
                    "patch",
                    f"patch{title}",
                    f"partially update {sub.name} of the specified {rt.kind}",
                    _responses(sub_schema, "200", "201"),
                    [*write, _FORCE],
                    _patch_body(),
                    **kw,
                ),
                "parameters": [name_param, *scoped, _PRETTY],
            }
        elif sub.name == "log":
            log_params = [
                _q("container", "The container for which to stream logs."),
                _q("follow", "Follow the log stream of the pod.", "boolean"),
                _q("previous", "Return previous terminated container logs.", "boolean"),
                _q(
                    "tailLines",
                    "If set, the number of lines from the end of the logs to show.",
                    "integer",
                ),
                _q(
                    "timestamps",
                    "If true, add an RFC3339 timestamp at the beginning of every line.",
                    "boolean",
                ),
            ]
            paths[sub_path] = {
                "get": _operation(
                    rt,
                    "get",
                    f"read{title}",
                    f"read log of the specified {rt.kind}",
                    {
                        "200": {
                            "description": "OK",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": {"description": "Unauthorized"},
                    },
                    log_params,
                ),
                "parameters": [name_param, *scoped, _PRETTY],
            }
        elif sub.name == "exec":
            exec_params = [
                _q(
                    "command",
                    "Command is the remote command to execute. argv array. Not executed within a shell.",
                ),
                _q("container", "Container in which to execute the command."),
                _q(
                    "stderr",
                    "Redirect the standard error stream of the pod for this call.",
                    "boolean",
                ),
                _q(
                    "stdin",
                    "Redirect the standard input stream of the pod for this call.",
                    "boolean",
                ),
                _q(
                    "stdout",
                    "Redirect the standard output stream of the pod for this call.",
                    "boolean",
                ),
                _q(
                    "tty",
                    "TTY if true indicates that a tty will be allocated for the exec call.",
                    "boolean",
                ),
            ]
            connect = {
                "200": {"description": "OK", "content": {"*/*": {"schema": {"type": "string"}}}},
                "401": {"description": "Unauthorized"},
            }
            kw = {"kind": "PodExecOptions"}
            paths[sub_path] = {
                "get": _operation(
                    rt,
                    "connect",
                    f"connectGet{title}",
                    f"connect GET requests to exec of {rt.kind}",
                    connect,
                    exec_params,
                    **kw,
                ),
                "post": _operation(
                    rt,
                    "connect",
                    f"connectPost{title}",
                    f"connect POST requests to exec of {rt.kind}",
                    connect,
                    exec_params,
                    **kw,
                ),
                "parameters": [name_param, ns_param],
            }
    if rt.namespaced:
        paths[f"{base}/{rt.plural}"] = {
            "get": _operation(
                rt,
                "list",
                f"list{_op_name(rt)}{rt.kind}ForAllNamespaces",
                f"list or watch objects of kind {rt.kind}",
                _responses(list_schema, "200", types=_WATCH_TYPES),
            ),
            "parameters": [*_LIST_PARAMS, _PRETTY],
        }
    watch_base = (
        f"{base}/watch/namespaces/{{namespace}}/{rt.plural}"
        if rt.namespaced
        else f"{base}/watch/{rt.plural}"
    )
    watch_resp = _responses(META + "WatchEvent", "200", types=_WATCH_TYPES)
    paths[watch_base] = {
        "get": _operation(
            rt,
            "watchlist",
            f"watch{ident}List",
            f"watch individual changes to a list of {rt.kind}. deprecated: use the 'watch' parameter with a list operation instead.",
            watch_resp,
        ),
        "parameters": [*scoped, *_LIST_PARAMS, _PRETTY],
    }
    paths[f"{watch_base}/{{name}}"] = {
        "get": _operation(
            rt,
            "watch",
            f"watch{ident}",
            f"watch changes to an object of kind {rt.kind}. deprecated: use the 'watch' parameter with a list operation, filtered to a single item with the 'fieldSelector' parameter.",
            watch_resp,
        ),
        "parameters": [name_param, *scoped, *_LIST_PARAMS, _PRETTY],
    }
    return paths


def _reachable(roots: list[str]) -> dict[str, Obj]:
    """The component schemas reachable from roots through `$ref`."""
    all_schemas = component_schemas()
    seen: dict[str, Obj] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in seen or name not in all_schemas:
            continue
        seen[name] = all_schemas[name]
        pending.extend(_refs(all_schemas[name]))
    return dict(sorted(seen.items()))


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"].rsplit("/", 1)[-1]] if "$ref" in value else []
        for v in value.values():
            found.extend(_refs(v))
        return found
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


@cache
def group_version_document(group: str, version: str) -> bytes:
    """The serialized OpenAPI v3 document of one group version."""
    paths: dict[str, Obj] = {}
    roots = [META + "Status", META + "DeleteOptions", META + "WatchEvent", META + "Patch"]
    for rt in resources_in(group, version):
        paths.update(_resource_paths(rt))
        roots += [schema_name(rt), schema_name(rt) + "List"]
        if rt.subresource("scale"):
            roots.append(AUTOSCALING + "Scale")
    doc = {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.1"},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": _reachable(roots),
            "securitySchemes": {
                "BearerToken": {
                    "type": "apiKey",
                    "description": "Bearer Token authentication",
                    "name": "authorization",
                    "in": "header",
                }
            },
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def document_hash(group: str, version: str) -> str:
    """The content hash the root index puts in serverRelativeURL (uppercase SHA-512 hex)."""
    return hashlib.sha512(group_version_document(group, version)).hexdigest().upper()


def find_document(path: str) -> tuple[str, str] | None:
    """The (group, version) of a `/openapi/v3/...` document path, if published."""
    for group, version in GROUP_VERSIONS:
        if path == f"/openapi/v3/{_gv_path(group, version)}":
            return group, version
    return None


def root_document() -> Obj:
    """The `/openapi/v3` index."""
    paths = {
        _gv_path(g, v): {
            "serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}?hash={document_hash(g, v)}"
        }
        for g, v in GROUP_VERSIONS
    }
    return {"paths": paths}
