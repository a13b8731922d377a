"""The resources the simulator serves, and what the apiserver does per kind.

One `ResourceType` per resource (discovery facts), plus the per-kind behaviour of the real
registry: defaulting, the status a healthy cluster would report, validation, field selectors and
the server-side printing (`Table`) that `kubectl get` shows.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

FULL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
NAMESPACE_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")

NODE_NAME = "sim-node-1"
HOST_IP = "10.0.0.10"

_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)


@dataclass(frozen=True, slots=True)
class Subresource:
    """A subresource as discovery lists it."""

    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str = ""
    version: str = "v1"


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One served resource: its names, scope, verbs and registry behaviour flags."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    fields: frozenset[str]
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = FULL_VERBS
    subresources: tuple[Subresource, ...] = ()
    returns_deleted_object: bool = False
    has_generation: bool = False
    field_labels: tuple[str, ...] = ()
    storage_hash: str = ""

    @property
    def api_version(self) -> str:
        """`v1` or `apps/v1`."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name errors use: `secrets`, `deployments.apps`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def prefix(self) -> str:
        """The URL prefix of the group version."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def list_kind(self) -> str:
        """The kind of a list of these."""
        return f"{self.kind}List"

    def subresource(self, name: str) -> Subresource | None:
        """The named subresource, if served."""
        return next((s for s in self.subresources if s.name == name), None)


NAMESPACES = ResourceType(
    group="",
    version="v1",
    plural="namespaces",
    singular="namespace",
    kind="Namespace",
    namespaced=False,
    fields=frozenset({"apiVersion", "kind", "metadata", "spec", "status"}),
    short_names=("ns",),
    verbs=NAMESPACE_VERBS,
    subresources=(Subresource("status", "Namespace", STATUS_VERBS),),
    returns_deleted_object=True,
    field_labels=("status.phase",),
    storage_hash="Q3oi5N2YM8M=",
)
SECRETS = ResourceType(
    group="",
    version="v1",
    plural="secrets",
    singular="secret",
    kind="Secret",
    namespaced=True,
    fields=frozenset({"apiVersion", "kind", "metadata", "data", "stringData", "type", "immutable"}),
    field_labels=("type",),
    storage_hash="S6u1pOWzb84=",
)
CONFIGMAPS = ResourceType(
    group="",
    version="v1",
    plural="configmaps",
    singular="configmap",
    kind="ConfigMap",
    namespaced=True,
    fields=frozenset({"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"}),
    short_names=("cm",),
    storage_hash="qFsyl6wFWjQ=",
)
PODS = ResourceType(
    group="",
    version="v1",
    plural="pods",
    singular="pod",
    kind="Pod",
    namespaced=True,
    fields=frozenset({"apiVersion", "kind", "metadata", "spec", "status"}),
    short_names=("po",),
    categories=("all",),
    subresources=(
        Subresource("exec", "PodExecOptions", ("create", "get")),
        Subresource("log", "Pod", ("get",)),
        Subresource("status", "Pod", STATUS_VERBS),
    ),
    returns_deleted_object=True,
    has_generation=True,
    field_labels=(
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    storage_hash="xPOwRZ+Yhw8=",
)
DEPLOYMENTS = ResourceType(
    group="apps",
    version="v1",
    plural="deployments",
    singular="deployment",
    kind="Deployment",
    namespaced=True,
    fields=frozenset({"apiVersion", "kind", "metadata", "spec", "status"}),
    short_names=("deploy",),
    categories=("all",),
    subresources=(
        Subresource("scale", "Scale", STATUS_VERBS, group="autoscaling", version="v1"),
        Subresource("status", "Deployment", STATUS_VERBS, group="apps"),
    ),
    returns_deleted_object=True,
    has_generation=True,
    storage_hash="8aSe+NMegvE=",
)

RESOURCES: tuple[ResourceType, ...] = (NAMESPACES, CONFIGMAPS, PODS, SECRETS, DEPLOYMENTS)
GROUP_VERSIONS: tuple[tuple[str, str], ...] = (("", "v1"), ("apps", "v1"))


def find_resource(group: str, version: str, plural: str) -> ResourceType | None:
    """The served resource at /api(s)/group/version/plural."""
    for rt in RESOURCES:
        if (rt.group, rt.version, rt.plural) == (group, version, plural):
            return rt
    return None


def resource_for_kind(api_version: str, kind: str) -> ResourceType | None:
    """The served resource of an object's apiVersion and kind."""
    return next((rt for rt in RESOURCES if (rt.api_version, rt.kind) == (api_version, kind)), None)


def resources_in(group: str, version: str) -> list[ResourceType]:
    """The resources of one group version, in discovery order."""
    return [rt for rt in RESOURCES if (rt.group, rt.version) == (group, version)]


# ---------------------------------------------------------------- time


def format_time(moment: datetime) -> str:
    """RFC 3339 with second precision, as metav1.Time marshals."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime | None:
    """Parse a metav1.Time; None when absent or malformed."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(obj: Obj, now: datetime) -> str:
    """The AGE column of an object."""
    created = parse_time(obj.get("metadata", {}).get("creationTimestamp", ""))
    if created is None:
        return "<unknown>"
    return human_duration((now - created).total_seconds())


# ---------------------------------------------------------------- defaulting and status


def _default_container(container: Obj) -> None:
    image = str(container.get("image", ""))
    tag = image.rsplit("/", 1)[-1]
    latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
    container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    container.setdefault("resources", {})
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _default_pod_spec(spec: Obj) -> None:
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            if isinstance(container, dict):
                _default_container(container)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("terminationGracePeriodSeconds", 30)


def apply_defaults(rt: ResourceType, obj: Obj) -> None:
    """What the apiserver's defaulting and admission add on create and update."""
    meta = obj.setdefault("metadata", {})
    if rt is NAMESPACES:
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    elif rt is SECRETS:
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode("ascii")
    elif rt is PODS:
        spec = obj.setdefault("spec", {})
        _default_pod_spec(spec)
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("nodeName", NODE_NAME)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("priority", 0)
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
    elif rt is DEPLOYMENTS:
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxSurge", "25%")
            rolling.setdefault("maxUnavailable", "25%")
        template = spec.setdefault("template", {})
        template.setdefault("metadata", {})
        _default_pod_spec(template.setdefault("spec", {}))


def initial_status(rt: ResourceType, obj: Obj, now: datetime, ordinal: int) -> None:
    """The status a healthy cluster reports right after the object is created."""
    stamp = format_time(now)
    if rt is NAMESPACES:
        obj["status"] = {"phase": "Active"}
    elif rt is PODS:
        spec = obj.get("spec", {})
        pod_ip = f"10.244.0.{10 + ordinal % 240}"
        statuses = [
            {
                "containerID": f"containerd://{ordinal:064x}",
                "image": c.get("image", ""),
                "imageID": f"{c.get('image', '')}@sha256:{ordinal:064x}",
                "lastState": {},
                "name": c.get("name", ""),
                "ready": True,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": stamp}},
            }
            for c in spec.get("containers") or []
            if isinstance(c, dict)
        ]
        obj["status"] = {
            "conditions": [
                {"lastProbeTime": None, "lastTransitionTime": stamp, "status": "True", "type": t}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": statuses,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "observedGeneration": obj.get("metadata", {}).get("generation", 1),
            "phase": "Running",
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "qosClass": "BestEffort",
            "startTime": stamp,
        }
    elif rt is DEPLOYMENTS:
        refresh_status(rt, obj, now)


def refresh_status(rt: ResourceType, obj: Obj, now: datetime) -> None:
    """Controllers' view after a spec change: a deployment converges at once."""
    if rt is not DEPLOYMENTS:
        return
    replicas = int(obj.get("spec", {}).get("replicas", 1) or 0)
    stamp = format_time(now)
    status: Obj = {"observedGeneration": obj.get("metadata", {}).get("generation", 1)}
    if replicas:
        status.update(
            replicas=replicas,
            updatedReplicas=replicas,
            readyReplicas=replicas,
            availableReplicas=replicas,
        )
    status["conditions"] = [
        {
            "lastTransitionTime": stamp,
            "lastUpdateTime": stamp,
            "message": "Deployment has minimum availability.",
            "reason": "MinimumReplicasAvailable",
            "status": "True",
            "type": "Available",
        },
        {
            "lastTransitionTime": stamp,
            "lastUpdateTime": stamp,
            "message": f'ReplicaSet "{obj.get("metadata", {}).get("name", "")}" has successfully progressed.',
            "reason": "NewReplicaSetAvailable",
            "status": "True",
            "type": "Progressing",
        },
    ]
    obj["status"] = status


# ---------------------------------------------------------------- validation

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)

Cause = tuple[str, str, str]


def _selector_matches(selector: Obj, labels: Obj) -> bool:
    match_labels = selector.get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in match_labels.items())


def validate(rt: ResourceType, obj: Obj) -> list[Cause]:
    """Validation causes (reason, field, message); empty when the object is valid."""
    causes: list[Cause] = []
    meta = obj.get("metadata", {})
    name = meta.get("name", "")
    if not name:
        causes.append(
            (
                "FieldValueRequired",
                "metadata.name",
                "Required value: name or generateName is required",
            )
        )
    elif rt is NAMESPACES and (len(name) > 63 or not _LABEL.match(name)):
        causes.append(
            ("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": {_LABEL_MSG}')
        )
    elif rt is not NAMESPACES and (len(name) > 253 or not _SUBDOMAIN.match(name)):
        causes.append(
            ("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": {_SUBDOMAIN_MSG}')
        )
    if rt in (SECRETS, CONFIGMAPS):
        for field in ("data", "binaryData"):
            for key in obj.get(field) or {}:
                if not _CONFIG_KEY.match(key):
                    causes.append(
                        (
                            "FieldValueInvalid",
                            f"{field}[{key}]",
                            f'Invalid value: "{key}": a valid config key must consist of '
                            "alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
                            "'KEY_NAME',  or 'key-name', regex used for validation is "
                            "'[-._a-zA-Z0-9]+')",
                        )
                    )
    if rt is PODS:
        causes.extend(_validate_pod_spec(obj.get("spec") or {}, "spec"))
    if rt is DEPLOYMENTS:
        spec = obj.get("spec") or {}
        selector = spec.get("selector")
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not isinstance(selector, dict) or not selector:
            causes.append(("FieldValueRequired", "spec.selector", "Required value"))
        elif not _selector_matches(selector, labels):
            causes.append(
                (
                    "FieldValueInvalid",
                    "spec.template.metadata.labels",
                    f"Invalid value: {labels}: `selector` does not match template `labels`",
                )
            )
        causes.extend(_validate_pod_spec(template.get("spec") or {}, "spec.template.spec"))
    return causes


def _validate_pod_spec(spec: Obj, path: str) -> list[Cause]:
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [("FieldValueRequired", f"{path}.containers", "Required value")]
    causes: list[Cause] = []
    for i, container in enumerate(containers):
        if not isinstance(container, dict):
            continue
        if not container.get("name"):
            causes.append(("FieldValueRequired", f"{path}.containers[{i}].name", "Required value"))
        if not container.get("image"):
            causes.append(("FieldValueRequired", f"{path}.containers[{i}].image", "Required value"))
    return causes


def decoding_errors(rt: ResourceType, obj: Obj) -> list[str]:
    """JSON decoding failures of typed fields (the apiserver answers these with 400)."""
    errors: list[str] = []
    if rt is SECRETS or rt is CONFIGMAPS:
        field = "data" if rt is SECRETS else "binaryData"
        for value in (obj.get(field) or {}).values():
            try:
                base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError):
                errors.append("illegal base64 data at input byte 0")
    return errors


def unknown_fields(rt: ResourceType, obj: Obj) -> list[str]:
    """Top-level and metadata fields the kind does not have (server-side field validation)."""
    unknown = [key for key in obj if key not in rt.fields]
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        unknown.extend(f"metadata.{key}" for key in meta if key not in _META_FIELDS)
    return unknown


# ---------------------------------------------------------------- field selectors


def field_value(rt: ResourceType, obj: Obj, label: str) -> str | None:
    """The value of a field selector label, or None when the kind does not support it."""
    if label not in ("metadata.name", "metadata.namespace") and label not in rt.field_labels:
        return None
    value: Any = obj
    for part in label.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# ---------------------------------------------------------------- server-side printing

_NAME_DESC = (
    "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
_AGE_DESC = (
    "CreationTimestamp is a timestamp representing the server time when this object was "
    "created. It is not guaranteed to be set in happens-before order across separate "
    "operations. Clients may not set this value. It is represented in RFC3339 form and is in "
    "UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)


def _column(name: str, kind: str, description: str, priority: int = 0, fmt: str = "") -> Obj:
    return {
        "name": name,
        "type": kind,
        "format": fmt,
        "description": description,
        "priority": priority,
    }


_NAME = _column("Name", "string", _NAME_DESC, fmt="name")
_AGE = _column("Age", "string", _AGE_DESC)

_COLUMNS: dict[str, list[Obj]] = {
    "namespaces": [_NAME, _column("Status", "string", "The status of the namespace"), _AGE],
    "secrets": [
        _NAME,
        _column("Type", "string", "The type of the secret"),
        _column("Data", "string", "The number of entries in the secret"),
        _AGE,
    ],
    "configmaps": [
        _NAME,
        _column("Data", "string", "The number of entries in the configmap"),
        _AGE,
    ],
    "pods": [
        _NAME,
        _column(
            "Ready", "string", "The aggregate readiness state of this pod for accepting traffic."
        ),
        _column("Status", "string", "The aggregate status of the containers in this pod."),
        _column(
            "Restarts",
            "string",
            "The number of times the containers in this pod have been restarted and when the "
            "last container in this pod has restarted.",
        ),
        _AGE,
        _column(
            "IP",
            "string",
            "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            1,
        ),
        _column("Node", "string", "NodeName indicates in which node this pod is scheduled.", 1),
        _column(
            "Nominated Node",
            "string",
            "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods.",
            1,
        ),
        _column(
            "Readiness Gates",
            "string",
            "If specified, all readiness gates will be evaluated for pod readiness.",
            1,
        ),
    ],
    "deployments": [
        _NAME,
        _column("Ready", "string", "Number of the pod with ready state"),
        _column(
            "Up-to-date",
            "integer",
            "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
        ),
        _column(
            "Available",
            "integer",
            "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
        ),
        _AGE,
        _column("Containers", "string", "Names of each container in the template.", 1),
        _column("Images", "string", "Images referenced by each container in the template.", 1),
        _column(
            "Selector",
            "string",
            "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            1,
        ),
    ],
}


def table_columns(rt: ResourceType) -> list[Obj]:
    """The columnDefinitions of the kind's Table."""
    return [dict(c) for c in _COLUMNS[rt.plural]]


def _selector_text(selector: Obj) -> str:
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for req in selector.get("matchExpressions") or []:
        op = str(req.get("operator", "")).lower()
        values = ",".join(req.get("values") or [])
        if op in ("in", "notin"):
            parts.append(f"{req.get('key')} {op} ({values})")
        elif op == "exists":
            parts.append(str(req.get("key")))
        else:
            parts.append(f"!{req.get('key')}")
    return ",".join(parts) or "<none>"


def table_cells(rt: ResourceType, obj: Obj, now: datetime) -> list[Any]:
    """The row cells of one object, as the apiserver's printers compute them."""
    meta = obj.get("metadata", {})
    name = meta.get("name", "")
    if rt is NAMESPACES:
        return [name, obj.get("status", {}).get("phase", ""), age(obj, now)]
    if rt is SECRETS:
        return [name, obj.get("type", ""), len(obj.get("data") or {}), age(obj, now)]
    if rt is CONFIGMAPS:
        count = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
        return [name, count, age(obj, now)]
    if rt is PODS:
        spec, status = obj.get("spec", {}), obj.get("status", {})
        statuses = status.get("containerStatuses") or []
        ready = sum(1 for s in statuses if s.get("ready"))
        restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
        reason = status.get("reason") or status.get("phase") or "Pending"
        if meta.get("deletionTimestamp"):
            reason = "Terminating"
        gates = spec.get("readinessGates") or []
        return [
            name,
            f"{ready}/{len(spec.get('containers') or [])}",
            reason,
            str(restarts),
            age(obj, now),
            status.get("podIP") or "<none>",
            spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>",
            f"0/{len(gates)}" if gates else "<none>",
        ]
    spec, status = obj.get("spec", {}), obj.get("status", {})
    containers = (spec.get("template", {}).get("spec", {}) or {}).get("containers") or []
    return [
        name,
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        age(obj, now),
        ",".join(str(c.get("name", "")) for c in containers),
        ",".join(str(c.get("image", "")) for c in containers),
        _selector_text(spec.get("selector") or {}),
    ]


def now_utc() -> datetime:
    """The current time (UTC, second precision like metav1.Time)."""
    return datetime.now(UTC).replace(microsecond=0)
