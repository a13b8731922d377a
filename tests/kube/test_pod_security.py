"""holdgate.kube.pod_security: one table per level, in the style of the PodSecurity admission's
own fixtures (a minimal passing pod, then one change each that must fail)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from holdgate.kube.pod_security import Level, pod_specs, violations
from holdgate.kube.protobuf import decode_envelope, decode_object, encode_object

BASE: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
RESTRICTED: dict[str, Any] = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [
        {
            "name": "c",
            "image": "busybox",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            },
        }
    ],
}


def _with(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    node: Any = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    last = keys[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return out


BASELINE_FAILS = [
    ("hostNetwork", True),
    ("hostPID", True),
    ("hostIPC", True),
    ("securityContext.windowsOptions.hostProcess", True),
    ("containers.0.securityContext.privileged", True),
    ("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]),
    ("containers.0.securityContext.capabilities.add", ["NET_RAW", "CHOWN"]),
    ("containers.0.ports", [{"containerPort": 80, "hostPort": 8080}]),
    ("containers.0.securityContext.procMount", "Unmasked"),
    ("containers.0.securityContext.seLinuxOptions", {"type": "spc_t"}),
    ("securityContext.seLinuxOptions", {"user": "system_u"}),
    ("securityContext.seccompProfile", {"type": "Unconfined"}),
    ("containers.0.securityContext.seccompProfile", {"type": "Unconfined"}),
    ("containers.0.securityContext.appArmorProfile", {"type": "Unconfined"}),
    ("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
    ("volumes", [{"name": "root", "hostPath": {"path": "/"}}]),
    ("ephemeralContainers", [{"name": "debug", "securityContext": {"privileged": True}}]),
    ("initContainers", [{"name": "i", "securityContext": {"privileged": True}}]),
    ("containers.0.livenessProbe", {"httpGet": {"host": "10.0.0.1", "port": 80}}),
]
BASELINE_PASSES = [
    ("containers.0.securityContext.capabilities.add", ["NET_BIND_SERVICE", "CHOWN"]),
    ("containers.0.securityContext.privileged", False),
    ("containers.0.ports", [{"containerPort": 80, "hostPort": 0}]),
    ("securityContext.sysctls", [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]),
    ("volumes", [{"name": "data", "emptyDir": {}}]),
    ("securityContext.seLinuxOptions", {"type": "container_t"}),
    ("securityContext.seccompProfile", {"type": "RuntimeDefault"}),
]
RESTRICTED_FAILS = [
    ("containers.0.securityContext.allowPrivilegeEscalation", True),
    ("securityContext.runAsNonRoot", False),
    ("securityContext.runAsUser", 0),
    ("containers.0.securityContext.runAsUser", 0),
    ("securityContext.seccompProfile", {}),
    ("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}),
    ("containers.0.securityContext.capabilities.add", ["CHOWN"]),
    ("volumes", [{"name": "n", "nfs": {"server": "x", "path": "/"}}]),
]


@pytest.mark.parametrize(("path", "value"), BASELINE_FAILS, ids=[p for p, _ in BASELINE_FAILS])
def test_baseline_refuses(path: str, value: Any) -> None:
    assert violations({}, _with(BASE, path, value), Level.BASELINE)


@pytest.mark.parametrize(("path", "value"), BASELINE_PASSES, ids=[p for p, _ in BASELINE_PASSES])
def test_baseline_accepts(path: str, value: Any) -> None:
    assert violations({}, _with(BASE, path, value), Level.BASELINE) == []


def test_minimal_pods_meet_their_level() -> None:
    assert violations({}, BASE, Level.BASELINE) == []
    assert violations({}, BASE, Level.RESTRICTED)  # a plain pod is not restricted
    assert violations({}, RESTRICTED, Level.RESTRICTED) == []


@pytest.mark.parametrize(("path", "value"), RESTRICTED_FAILS, ids=[p for p, _ in RESTRICTED_FAILS])
def test_restricted_refuses(path: str, value: Any) -> None:
    assert violations({}, _with(RESTRICTED, path, value), Level.RESTRICTED)


def test_apparmor_annotations() -> None:
    key = "container.apparmor.security.beta.kubernetes.io/c"
    assert violations({"annotations": {key: "unconfined"}}, BASE, Level.BASELINE)
    assert violations({"annotations": {key: "runtime/default"}}, BASE, Level.BASELINE) == []
    assert violations({"annotations": {key: "localhost/p"}}, BASE, Level.BASELINE) == []


@pytest.mark.parametrize(
    ("resource", "document"),
    [
        ("pods", {"spec": BASE}),
        ("deployments", {"spec": {"template": {"spec": BASE}}}),
        ("replicasets", {"spec": {"template": {"spec": BASE}}}),
        ("statefulsets", {"spec": {"template": {"spec": BASE}}}),
        ("daemonsets", {"spec": {"template": {"spec": BASE}}}),
        ("jobs", {"spec": {"template": {"spec": BASE}}}),
        ("replicationcontrollers", {"spec": {"template": {"spec": BASE}}}),
        ("cronjobs", {"spec": {"jobTemplate": {"spec": {"template": {"spec": BASE}}}}}),
        ("podtemplates", {"template": {"spec": BASE}}),
    ],
)
def test_every_workload_kind_is_found(resource: str, document: dict[str, Any]) -> None:
    [(_, spec)] = pod_specs(resource, document)
    assert spec == BASE
    assert pod_specs("configmaps", document) == []


# The PodSecurity admission's own fixtures (see pod_security_vectors/README.md).

VECTORS = Path(__file__).with_name("pod_security_vectors")
FIXTURES = sorted(VECTORS.glob("*/*/*.yaml"))


@pytest.mark.parametrize(
    "fixture", FIXTURES, ids=[str(f.relative_to(VECTORS).with_suffix("")) for f in FIXTURES]
)
def test_upstream_vectors(fixture: Path) -> None:
    level_name, outcome = fixture.parts[-3], fixture.parts[-2]
    pod = yaml.safe_load(fixture.read_text())
    from_protobuf = decode_object(decode_envelope(encode_object(pod)))
    for document in (pod, from_protobuf):
        [(meta, spec)] = pod_specs("pods", document)
        found = violations(meta, spec, Level(level_name))
        assert bool(found) == (outcome == "fail"), found


def test_the_vectors_are_there() -> None:
    assert len(FIXTURES) > 140
    assert {f.parts[-3] for f in FIXTURES} == {"baseline", "restricted"}
