"""Realistic generated policies for the benchmarks: N rules over many agents, namespaces and targets.

A large organisation's rule set: a handful of org-wide rules (discovery, production secrets,
exec), then per-agent and per-namespace Kubernetes rules across ~25 resources, and path rules
for plain HTTP services, written as teams write them: namespace globs (`team-004*`,
`team-0042-?`), agent fleets (`agent-012*`), group rules with globs, path globs. Only the base rules concern the benchmark request (agent
`bench-agent`, `GET /api/v1/namespaces/bench/configmaps/x`); the generated ones name other
agents, namespaces and targets, as the rules of other teams would.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BENCH_AGENT = "bench-agent"
BENCH_TOKEN = "bench-token-0123456789"
KUBE_HOST = "kubernetes.default.svc"
CONFIGMAP_PATH = "/api/v1/namespaces/bench/configmaps/x"
# Held by `approve-bench-secrets` (GET of a Secret in `bench`); `{}` takes a unique name.
HELD_PATH = "/api/v1/namespaces/bench/secrets/held-{}"
HTTP_TARGETS = 20
# The Slack user who may approve held benchmark requests (bench_holds.py, Slack simulator).
SLACK_REVIEWER = "UBENCH"

# (apiGroup, resource) as agents touch them.
RESOURCES = (
    ("", "pods"),
    ("", "pods/log"),
    ("", "services"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "serviceaccounts"),
    ("", "persistentvolumeclaims"),
    ("", "events"),
    ("", "endpoints"),
    ("apps", "deployments"),
    ("apps", "deployments/scale"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("networking.k8s.io", "ingresses"),
    ("networking.k8s.io", "networkpolicies"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("policy", "poddisruptionbudgets"),
    ("cert-manager.io", "certificates"),
    ("argoproj.io", "applications"),
    ("monitoring.coreos.com", "servicemonitors"),
)
CLUSTER_RESOURCES = (("", "nodes"), ("", "namespaces"), ("storage.k8s.io", "storageclasses"))
READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch"]

BASE_RULES: list[dict[str, Any]] = [
    {
        "id": "allow-discovery",
        "action": "allow",
        "verbs": ["get"],
        "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/version", "/openapi/*"],
    },
    {
        "id": "deny-prod-secret-reads",
        "action": "deny",
        "message": "secrets in production namespaces are off limits to agents",
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": READ,
        "namespaces": ["prod*"],
    },
    {
        "id": "approve-prod-exec",
        "action": "approve",
        "resources": ["pods/exec", "pods/attach"],
        "namespaces": ["prod*"],
        "reviewers": ["local:admin"],
        "timeout": "15m",
    },
    {
        "id": "allow-bench-reads",
        "description": "the benchmark agent reads its namespace",
        "action": "allow",
        "agents": [BENCH_AGENT],
        "apiGroups": [""],
        "resources": ["configmaps", "pods", "services"],
        "verbs": READ,
        "namespaces": ["bench"],
    },
    {
        "id": "approve-bench-secrets",
        "description": "the benchmark agent's Secret reads wait for a human",
        "action": "approve",
        "agents": [BENCH_AGENT],
        "resources": ["secrets"],
        "verbs": ["get"],
        "namespaces": ["bench"],
        "reviewers": ["local:admin", f"slack:{SLACK_REVIEWER}"],
        "timeout": "30m",
    },
    {
        "id": "deny-kube-system-writes",
        "action": "deny",
        "message": "kube-system is managed by the platform team",
        "apiGroups": ["*"],
        "resources": ["*"],
        "verbs": ["create", "update", "patch", "delete", "deletecollection"],
        "namespaces": ["kube-system"],
    },
]

BASE_MASKS: list[dict[str, Any]] = [
    {
        "id": "mask-config-passwords",
        "resources": ["configmaps"],
        "mask": ["$.data.password", "$.data.token"],
    }
]


@dataclass(frozen=True, slots=True)
class Shape:
    """How many of each thing a generated policy with `rules` rules spreads over."""

    rules: int

    @property
    def agents(self) -> int:
        return max(10, self.rules // 20)

    @property
    def namespaces(self) -> int:
        return max(10, self.rules // 10)


def _namespaces(rng: random.Random, shape: Shape) -> list[str]:
    """One to three namespaces as teams name them: exact, or a glob over a team's prefix."""
    out = []
    for _ in range(rng.randint(1, 3)):
        team = rng.randrange(shape.namespaces)
        pick = rng.random()
        if pick < 0.6:
            out.append(f"team-{team:04d}")
        elif pick < 0.9:
            out.append(f"team-{team // 10:03d}*")  # the ten namespaces of a department
        else:
            out.append(f"team-{team:04d}-?")  # numbered environments of one team
    return out


def _agent_rule(rng: random.Random, i: int, shape: Shape) -> dict[str, Any]:
    agent = f"agent-{rng.randrange(shape.agents):04d}"
    if rng.random() < 0.1:
        agent = f"agent-{rng.randrange(shape.agents) // 10:03d}*"  # a fleet of agents
    namespaces = _namespaces(rng, shape)
    chosen = rng.sample(RESOURCES, rng.randint(1, 4))
    kind = rng.random()
    rule: dict[str, Any] = {
        "id": f"g{i:05d}",
        "agents": [agent],
        "apiGroups": sorted({g for g, _ in chosen}),
        "resources": sorted(r for _, r in chosen),
        "namespaces": namespaces,
    }
    if kind < 0.6:
        return {**rule, "action": "allow", "verbs": READ}
    if kind < 0.85:
        return {**rule, "action": "allow", "verbs": WRITE}
    return {**rule, "action": "approve", "verbs": ["delete"], "reviewers": ["local:admin"]}


def _namespace_rule(rng: random.Random, i: int, shape: Shape) -> dict[str, Any]:
    namespace = f"team-{rng.randrange(shape.namespaces):04d}"
    kind = rng.random()
    if kind < 0.4:
        return {
            "id": f"g{i:05d}",
            "action": "deny",
            "message": f"{namespace}: Secrets are read by the team's own service accounts only",
            "resources": ["secrets"],
            "verbs": READ,
            "namespaces": [namespace],
        }
    if kind < 0.7:
        return {
            "id": f"g{i:05d}",
            "action": "approve",
            "resources": ["pods/exec", "pods/attach", "pods/portforward"],
            "namespaces": [namespace],
            "reviewers": [f"slack-group:S{rng.randrange(10**6):06d}", "local:admin"],
            "timeout": "20m",
        }
    return {
        "id": f"g{i:05d}",
        "action": "allow",
        "groups": [f"{namespace}-deployers", f"{namespace[:8]}*-admins"],
        "apiGroups": ["apps"],
        "resources": ["deployments", "deployments/scale"],
        "verbs": ["get", "patch", "update"],
        "namespaces": [namespace],
    }


def _cluster_rule(rng: random.Random, i: int, shape: Shape) -> dict[str, Any]:
    group, resource = rng.choice(CLUSTER_RESOURCES)
    return {
        "id": f"g{i:05d}",
        "action": "allow",
        "agents": [f"agent-{rng.randrange(shape.agents):04d}"],
        "apiGroups": [group],
        "resources": [resource],
        "verbs": READ,
    }


def _http_rule(rng: random.Random, i: int, shape: Shape) -> dict[str, Any]:
    target = f"svc-{rng.randrange(HTTP_TARGETS):02d}"
    area = rng.choice(["invoices", "orders", "users", "reports", "jobs", "builds"])
    kind = rng.random()
    if kind < 0.5:
        return {
            "id": f"g{i:05d}",
            "action": "allow",
            "targets": [target],
            "methods": ["GET", "HEAD"],
            "paths": [f"/v{rng.randint(1, 3)}/{area}", f"/v{rng.randint(1, 3)}/{area}/*"],
        }
    if kind < 0.8:
        return {
            "id": f"g{i:05d}",
            "action": "approve",
            "targets": [target],
            "methods": ["POST", "PUT", "DELETE"],
            "paths": [f"/v1/{area}/*"],
            "agents": [f"agent-{rng.randrange(shape.agents):04d}"],
            "reviewers": ["local:admin"],
        }
    return {
        "id": f"g{i:05d}",
        "action": "deny",
        "message": f"{area} admin endpoints are for people",
        "targets": [target],
        "paths": [f"/admin/{area}/*", f"/internal/{area}/*"],
    }


def generated_rules(count: int, seed: int = 8) -> list[dict[str, Any]]:
    """`count` rules in a realistic mix (none concerns the benchmark agent or namespace)."""
    rng = random.Random(seed)
    shape = Shape(count)
    out = []
    for i in range(count):
        pick = rng.random()
        if pick < 0.55:
            out.append(_agent_rule(rng, i, shape))
        elif pick < 0.75:
            out.append(_namespace_rule(rng, i, shape))
        elif pick < 0.80:
            out.append(_cluster_rule(rng, i, shape))
        else:
            out.append(_http_rule(rng, i, shape))
    return out


def generated_masks(count: int, seed: int = 9) -> list[dict[str, Any]]:
    """Per-namespace mask rules, one per hundred policy rules."""
    rng = random.Random(seed)
    shape = Shape(count)
    return [
        {
            "id": f"m{i:04d}",
            "namespaces": _namespaces(rng, shape),
            "resources": ["configmaps"],
            "mask": [f"$.data.{rng.choice(['apiKey', 'dsn', 'webhookUrl'])}"],
        }
        for i in range(count // 100)
    ]


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Upstreams:
    """Where the targets really go (the benchmark's own upstream) and its CA."""

    url: str
    ca: Path


def write_gateway_home(
    home: Path,
    rules: int,
    upstream: Upstreams,
    *,
    approvals: bool = True,
    fsync_before_response: bool | str = "privileged",
    slack: dict[str, Any] | None = None,
    matching_last: bool = False,
) -> Path:
    """A config and rule files with `rules` policy rules under `home`; returns the config path.

    `slack`: the `approvals.slack` section (the Slack simulator's), if any. `matching_last`:
    the rules about the benchmark agent come after every generated rule in load order.
    """
    rules_dir = home / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    extra = max(0, rules - len(BASE_RULES))
    bench_ids = ("allow-bench-reads", "approve-bench-secrets")
    bench = [r for r in BASE_RULES if r["id"] in bench_ids]
    base = [r for r in BASE_RULES if r["id"] not in bench_ids] if matching_last else BASE_RULES
    files = {
        "00-base.yaml": {"rules": base, "masks": BASE_MASKS},
        "10-teams.yaml": {"rules": generated_rules(extra), "masks": generated_masks(rules)},
    }
    if matching_last:
        files["99-bench.yaml"] = {"rules": bench}
    for name, doc in files.items():
        (rules_dir / name).write_text(yaml.safe_dump(doc, sort_keys=False, width=120))
    shape = Shape(rules)
    agents = [{"name": BENCH_AGENT, "groups": ["bench"], "token_sha256": token_digest(BENCH_TOKEN)}]
    agents += [
        {
            "name": f"agent-{a:04d}",
            "groups": [f"team-{a % shape.namespaces:04d}-deployers"],
            "token_sha256": token_digest(f"token-{a}"),
        }
        for a in range(shape.agents)
    ]
    targets: list[dict[str, Any]] = [
        {
            "name": "cluster",
            "kind": "kubernetes",
            "hosts": [KUBE_HOST],
            "upstream": upstream.url,
            "ca": str(upstream.ca),
            "default": "deny",
        }
    ]
    targets += [
        {
            "name": f"svc-{s:02d}",
            "kind": "http",
            "hosts": [f"svc-{s:02d}.internal"],
            "upstream": upstream.url,
            "ca": str(upstream.ca),
            "default": "deny",
        }
        for s in range(HTTP_TARGETS)
    ]
    config: dict[str, Any] = {
        "gateway": {"name": "bench-gw", "certs": str(home / "certs"), "state": str(home / "var")},
        "default": "deny",
        "rules": [str(rules_dir)],
        "identity": {"agents": agents},
        "targets": targets,
    }
    if approvals:
        config["approvals"] = {
            "page": {"listen_host": "127.0.0.1", "listen_port": 0},
            # The benchmark holds up to 10,000 requests of one agent at once on purpose.
            "max_pending_per_agent": 20000,
            "max_pending": 20000,
        }
        if slack is not None:
            config["approvals"]["slack"] = slack
    # The archive is always on: a local directory; by default privileged responses wait for
    # their record's fsync, reads only until it is in the writer's pipe.
    config["archive"] = {
        "directory": str(home / "archive"),
        "spool": str(home / "spool"),
        "fsync_before_response": fsync_before_response,
    }
    path = home / "holdgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
