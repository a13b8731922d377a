"""The Kubernetes Pod Security Standards (`baseline`, `restricted`) on every pod a request makes.

The checks follow the apiserver's PodSecurity admission (k8s.io/pod-security-admission,
policy/check_*.go) and the published standard: what a level forbids is a list of violations,
empty when the pod meets it. `pod_specs` finds the pod template of every workload kind a body
can carry. Pure: documents in, messages out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any


class Level(StrEnum):
    BASELINE = "baseline"
    RESTRICTED = "restricted"


# Where each workload kind keeps its pod template (resource -> path to the pod spec's parent).
TEMPLATE_PATHS: Mapping[str, tuple[str, ...]] = {
    "pods": (),
    "podtemplates": ("template",),
    "replicationcontrollers": ("spec", "template"),
    "deployments": ("spec", "template"),
    "replicasets": ("spec", "template"),
    "statefulsets": ("spec", "template"),
    "daemonsets": ("spec", "template"),
    "jobs": ("spec", "template"),
    "cronjobs": ("spec", "jobTemplate", "spec", "template"),
}

_BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
        "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip
_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem", "net.ipv4.tcp_slow_start_after_idle", "net.ipv4.tcp_notsent_lowat",
    }
)  # fmt: skip
_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
_RESTRICTED_VOLUMES = frozenset(
    {
        "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
        "projected", "secret", "image",
    }
)  # fmt: skip
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def pod_specs(resource: str, document: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod metadata, pod spec) of the pod a workload body makes; [] when it makes none.

    Raises ValueError when the body is a workload whose template is malformed.
    """
    path = TEMPLATE_PATHS.get(resource)
    if path is None or not isinstance(document, dict):
        return []
    node: Any = document
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return []
    if not isinstance(node, dict):
        raise ValueError(f"{'.'.join(path)} is not an object")
    spec = node.get("spec") or {}
    meta = node.get("metadata") or {}
    if not isinstance(spec, dict) or not isinstance(meta, dict):
        raise ValueError("the pod template's spec or metadata is not an object")
    return [(meta, spec)]


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(field) or []):
            if isinstance(c, dict):
                yield f"{field}[{i}] {c.get('name', '')!s}".rstrip(), c


def _ctx(obj: dict[str, Any]) -> dict[str, Any]:
    value = obj.get("securityContext")
    return value if isinstance(value, dict) else {}


def violations(meta: dict[str, Any], spec: dict[str, Any], level: Level) -> list[str]:
    """What the pod does that `level` forbids (empty: it meets the level)."""
    out = _baseline(meta, spec)
    if level is Level.RESTRICTED:
        out += _restricted(spec)
    return out


def _user_namespace(spec: dict[str, Any]) -> bool:
    """`hostUsers: false`: since 1.35 the standard relaxes procMount (baseline), runAsNonRoot
    and runAsUser for pods in a user namespace."""
    return spec.get("hostUsers") is False


def _baseline(meta: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    out: list[str] = []
    pod = _ctx(spec)
    user_namespace = _user_namespace(spec)
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field) is True:
            out.append(f"{field}: true")
    if (pod.get("windowsOptions") or {}).get("hostProcess") is True:
        out.append("pod windowsOptions.hostProcess")
    for i, volume in enumerate(spec.get("volumes") or []):
        if isinstance(volume, dict) and "hostPath" in volume:
            path = (volume.get("hostPath") or {}).get("path", "")
            out.append(f"volumes[{i}] {volume.get('name', '')}: hostPath {path}".strip())
    out += _selinux("pod", pod)
    out += _seccomp_unconfined("pod", pod)
    for i, sysctl in enumerate(pod.get("sysctls") or []):
        name = sysctl.get("name") if isinstance(sysctl, dict) else None
        if name not in _SAFE_SYSCTLS:
            out.append(f"sysctls[{i}]: {name}")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith(_APPARMOR_ANNOTATION) and not (
            value in ("runtime/default", "") or str(value).startswith("localhost/")
        ):
            out.append(f"annotation {key}: {value}")
    out += _apparmor("pod", pod)
    for where, c in _containers(spec):
        ctx = _ctx(c)
        if ctx.get("privileged") is True:
            out.append(f"{where}: privileged")
        if (ctx.get("windowsOptions") or {}).get("hostProcess") is True:
            out.append(f"{where}: windowsOptions.hostProcess")
        added = ((ctx.get("capabilities") or {}).get("add")) or []
        bad = [cap for cap in added if cap not in _BASELINE_CAPABILITIES]  # exact, as upstream
        if bad:
            out.append(f"{where}: capabilities.add {', '.join(map(str, bad))}")
        for port in c.get("ports") or []:
            if isinstance(port, dict) and port.get("hostPort") not in (None, 0):
                out.append(f"{where}: hostPort {port.get('hostPort')}")
        if ctx.get("procMount") not in (None, "Default") and not user_namespace:
            out.append(f"{where}: procMount {ctx.get('procMount')}")
        out += _selinux(where, ctx)
        out += _seccomp_unconfined(where, ctx)
        out += _apparmor(where, ctx)
        for hook in _probe_and_hook_handlers(c):
            for action in ("httpGet", "tcpSocket"):
                host = (hook.get(action) or {}).get("host") if isinstance(hook, dict) else None
                if host not in (None, ""):
                    out.append(f"{where}: {action}.host {host}")
    return out


def _probe_and_hook_handlers(c: dict[str, Any]) -> Iterator[Any]:
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if isinstance(c.get(probe), dict):
            yield c[probe]
    for hook in (
        (c.get("lifecycle") or {}).get("postStart"),
        (c.get("lifecycle") or {}).get("preStop"),
    ):
        if isinstance(hook, dict):
            yield hook


def _selinux(where: str, ctx: dict[str, Any]) -> list[str]:
    options = ctx.get("seLinuxOptions") or {}
    out = []
    if options.get("type", "") not in _SELINUX_TYPES:
        out.append(f"{where}: seLinuxOptions.type {options.get('type')}")
    for field in ("user", "role"):
        if options.get(field):
            out.append(f"{where}: seLinuxOptions.{field} {options.get(field)}")
    return out


_PROFILE_TYPES = frozenset({"RuntimeDefault", "Localhost"})


def _seccomp_unconfined(where: str, ctx: dict[str, Any]) -> list[str]:
    """A seccomp profile, where set, must be RuntimeDefault or Localhost."""
    profile = ctx.get("seccompProfile")
    if not isinstance(profile, dict):
        return []
    kind = profile.get("type")
    return [] if kind in _PROFILE_TYPES else [f"{where}: seccompProfile {kind}"]


def _apparmor(where: str, ctx: dict[str, Any]) -> list[str]:
    """An AppArmor profile, where set, must be RuntimeDefault or Localhost."""
    profile = ctx.get("appArmorProfile")
    if not isinstance(profile, dict):
        return []
    kind = profile.get("type")
    return [] if kind in _PROFILE_TYPES else [f"{where}: appArmorProfile {kind}"]


def _restricted(spec: dict[str, Any]) -> list[str]:
    out: list[str] = []
    pod = _ctx(spec)
    for i, volume in enumerate(spec.get("volumes") or []):
        if isinstance(volume, dict):
            kinds = [k for k in volume if k != "name"]
            bad = [k for k in kinds if k not in _RESTRICTED_VOLUMES]
            if bad:
                out.append(f"volumes[{i}] {volume.get('name', '')}: {', '.join(bad)}")
    pod_non_root = pod.get("runAsNonRoot")
    pod_seccomp = isinstance(pod.get("seccompProfile"), dict)  # invalid types: see baseline
    user_namespace = _user_namespace(spec)
    windows = (spec.get("os") or {}).get("name") == "windows"
    if not user_namespace:
        if pod.get("runAsUser") == 0:
            out.append("pod runAsUser 0")
        if pod_non_root is False:
            out.append("pod runAsNonRoot false")
    for where, c in _containers(spec):
        ctx = _ctx(c)
        if ctx.get("procMount") not in (None, "Default") and user_namespace:
            out.append(f"{where}: procMount {ctx.get('procMount')}")  # baseline relaxes it
        if not windows and ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation must be false")
        if not user_namespace:
            non_root = ctx.get("runAsNonRoot")
            if non_root is False or (non_root is None and pod_non_root is not True):
                out.append(f"{where}: runAsNonRoot must be true")
            if ctx.get("runAsUser") == 0:
                out.append(f"{where}: runAsUser 0")
        if windows:
            continue  # the API refuses seccomp and capabilities on Windows pods
        if not isinstance(ctx.get("seccompProfile"), dict) and not pod_seccomp:
            out.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}: capabilities must drop ALL")
        extra = [a for a in caps.get("add") or [] if a != "NET_BIND_SERVICE"]
        if extra:
            out.append(f"{where}: capabilities.add {', '.join(map(str, extra))}")
    return out
