"""The gateway configuration: targets, defaults and where the rules are. Pure: no mitmproxy here."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from holdgate.config.archive_settings import ArchiveSettings, ArchiveSettingsError
from holdgate.config.slack_settings import SlackSettings
from holdgate.config.yaml_source import Document, SourceError, SourceErrors, load_yaml
from holdgate.identity.agents import AgentDirectory, directory_from_config
from holdgate.identity.upstream_credentials import UpstreamCredential, credential_from_config

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROJECT_ROOT = PACKAGE_DIR.parent
# A checkout keeps the example rules and configurations in rules/; a wheel ships them inside
# the package (setup.py copies them) and keeps state under the user's holdgate home.
IN_CHECKOUT = (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "rules").is_dir()
SHIPPED_RULES = PROJECT_ROOT / "rules" if IN_CHECKOUT else PACKAGE_DIR / "shipped" / "rules"
EMBEDDED_DEFAULT = SHIPPED_RULES / "config" / "sandbox.yaml"


def holdgate_home() -> Path:
    """Where state, certs and the embedded default live: $HOLDGATE_HOME, else the checkout,
    else $XDG_STATE_HOME/holdgate (~/.local/state/holdgate); never inside the installation."""
    if os.environ.get("HOLDGATE_HOME"):
        return Path(os.environ["HOLDGATE_HOME"]).expanduser()
    if IN_CHECKOUT:
        return PROJECT_ROOT
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "holdgate"


def init_home(directory: Path) -> Path:
    """Copy the shipped rules and configurations to `directory`/rules (files already there are
    kept); returns the sandbox configuration there."""
    target = directory / "rules"
    for source in sorted(SHIPPED_RULES.rglob("*.yaml")):
        destination = target / source.relative_to(SHIPPED_RULES)
        if not destination.exists():
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
    return target / "config" / "sandbox.yaml"


def embedded_default() -> Path:
    """The sandbox configuration `holdgate run` starts without --config (copied to the holdgate
    home first when installed, so that its state stays out of the installation)."""
    if IN_CHECKOUT and not os.environ.get("HOLDGATE_HOME"):
        return EMBEDDED_DEFAULT
    return init_home(holdgate_home())


SCHEMA_DIR = PACKAGE_DIR / "schema"


# What a host pattern without a port covers: HTTPS's and plain HTTP's default ports.
DEFAULT_PORTS = (443, 80)


class TargetKind(StrEnum):
    KUBERNETES = "kubernetes"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a target's requests really go."""

    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Target:
    """A service agents reach through the gateway."""

    name: str
    kind: TargetKind
    hosts: tuple[str, ...]
    upstream: Upstream | None
    ca: Path | None
    default: str
    credential: UpstreamCredential | None = None
    # Largest request body accepted (None: the kind's default, holdgate.request_limits).
    max_request_body: int | None = None
    mode: str | None = None  # "audit" / "enforce" for this target (None: the gateway's)

    def serves(self, host: str, port: int) -> bool:
        """Whether an agent asking for host:port means this target.

        A pattern without a port means the default ports (443, and 80 for plain HTTP), never
        every port: a target's rules and credential do not reach other services on its host.
        """
        host = host.lower().removesuffix(".")
        for pattern in self.hosts:
            name, want_port = split_host_pattern(pattern)
            ports = DEFAULT_PORTS if want_port is None else (want_port,)
            if port in ports and fnmatch.fnmatchcase(host, name):
                return True
        return False

    @property
    def has_wildcard_host(self) -> bool:
        """Whether a host pattern matches more than one name."""
        return any(set(split_host_pattern(p)[0]) & set("*?[") for p in self.hosts)


def split_host_pattern(pattern: str) -> tuple[str, int | None]:
    """Split `host[:port]` (or `[v6]:port`) into a lower-case host glob and an optional port."""
    pattern = pattern.lower()
    if pattern.endswith(".") or ".:" in pattern:
        pattern = pattern.replace(".:", ":").removesuffix(".")
    if pattern.startswith("["):
        host, _, rest = pattern[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    head, sep, tail = pattern.rpartition(":")
    if sep and tail.isdigit():
        return head, int(tail)
    return pattern, None


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """Where holds are decided: the local page (always, when approvals are on) and Slack."""

    page_host: str | None  # None: no approvals page (Slack only)
    page_port: int
    local_reviewers: tuple[tuple[str, str], ...]  # (name, token SHA-256)
    slack: dict[str, Any] | None
    max_pending_per_agent: int = 20
    max_pending: int = 500

    def page_port_or(self, port_override: int) -> int:
        """The page's port; a `port_override` of 0 or more (`holdgate_approvals_port`) wins."""
        return self.page_port if port_override < 0 else port_override


@dataclass(frozen=True, slots=True)
class Config:
    """A validated gateway configuration."""

    path: Path
    name: str
    listen_host: str
    listen_port: int
    certs_dir: Path
    state_dir: Path
    default: str
    rule_paths: tuple[Path, ...]
    targets: tuple[Target, ...]
    sandbox_target: str | None = None
    approvals: ApprovalSettings | None = None
    mode: str = "enforce"  # "audit": decisions recorded as what would happen, requests pass
    agents: AgentDirectory = field(default_factory=lambda: AgentDirectory((), ()))
    # Sections parsed by their own modules (archive, ...), as written.
    raw: dict[str, Any] = field(default_factory=dict)

    def target_for(self, host: str, port: int) -> Target | None:
        """The target an agent means by host:port, or None when no target declares it."""
        for target in self.targets:
            if target.serves(host, port):
                return target
        return None

    def target_named(self, name: str) -> Target | None:
        """The target called `name`."""
        return next((t for t in self.targets if t.name == name), None)

    def rule_files(self) -> list[Path]:
        """The rule files, in load order: each listed file, each directory's *.yaml sorted by name."""
        files: list[Path] = []
        for path in self.rule_paths:
            if path.is_dir():
                files.extend(sorted(p for p in path.glob("*.yaml") if p.is_file()))
                files.extend(sorted(p for p in path.glob("*.yml") if p.is_file()))
            else:
                files.append(path)
        return files


NAME_ENV = "HOLDGATE_GATEWAY_NAME"


def replica_name(shared: bool) -> str:
    """The gateway's name when the config gives none: $HOLDGATE_GATEWAY_NAME, else for replicas
    sharing a state store the host name (a pod's name), else "holdgate"."""
    if name := os.environ.get(NAME_ENV, "").strip():
        return name
    if not shared:
        return "holdgate"
    host = socket.gethostname().split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", host).lstrip("._-")
    return cleaned or "holdgate"


@cache
def schema(name: str) -> dict[str, Any]:
    """A published JSON Schema (rules or config)."""
    data: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    return data


def schema_errors(doc: Document, schema_name: str) -> list[SourceError]:
    """Validate a document against a published schema; one located error per problem."""
    validator = jsonschema.Draft202012Validator(schema(schema_name))
    errors = []
    for err in sorted(validator.iter_errors(doc.data), key=lambda e: list(map(str, e.path))):
        location = tuple(err.absolute_path)
        where = ".".join(str(p) for p in location) or "top level"
        message = err.message
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = set(err.schema.get("properties", {}))
            for name in sorted(k for k in err.instance if k not in known):
                errors.append(
                    doc.error(
                        location + (name,),
                        f"{'.'.join([*map(str, location), name])}: unknown field",
                    )
                )
            continue
        elif err.validator == "enum" and location:
            message = f"{where}: {err.instance!r} is not one of {err.validator_value}"
        else:
            message = f"{where}: {message}"
        errors.append(doc.error(location, message))
    return errors


def parse_upstream(url: str) -> Upstream:
    """Split an upstream URL into scheme, host and port."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"upstream {url!r} must be http(s)://host[:port]")
    if parts.path not in ("", "/"):
        raise ValueError(f"upstream {url!r} must not have a path")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Upstream(parts.scheme, parts.hostname, port)


def load_config(path: Path | None = None) -> Config:
    """Load and validate a configuration file (the embedded default when `path` is None)."""
    path = (path or embedded_default()).resolve()
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise SourceErrors([doc.error((), "a configuration file must be a mapping")])
    errors = schema_errors(doc, "config")
    if errors:
        raise SourceErrors(errors)
    data = doc.data
    base = path.parent
    gateway = data.get("gateway", {})

    def resolve(p: str) -> Path:
        return (base / p).resolve()

    targets: list[Target] = []
    names: set[str] = set()
    for i, t in enumerate(data["targets"]):
        if t["name"] in names:
            errors.append(doc.error(("targets", i, "name"), f"duplicate target {t['name']!r}"))
        names.add(t["name"])
        upstream = None
        if "upstream" in t:
            try:
                upstream = parse_upstream(t["upstream"])
            except ValueError as e:
                errors.append(doc.error(("targets", i, "upstream"), str(e)))
        ca = None
        if t.get("ca") and t["ca"] != "system":
            ca = resolve(t["ca"])
            if not ca.is_file():
                errors.append(doc.error(("targets", i, "ca"), f"upstream CA file {ca} not found"))
        targets.append(
            Target(
                name=t["name"],
                kind=TargetKind(t["kind"]),
                hosts=tuple(t["hosts"]),
                upstream=upstream,
                ca=ca,
                default=t.get("default", "deny"),
                credential=credential_from_config(t.get("credential"), base),
                max_request_body=t.get("max_request_body"),
                mode=t.get("mode"),
            )
        )
    sandbox = data.get("sandbox", {}).get("target")
    if sandbox is not None:
        target = next((t for t in targets if t.name == sandbox), None)
        if target is None or target.kind is not TargetKind.KUBERNETES:
            errors.append(doc.error(("sandbox", "target"), f"no kubernetes target {sandbox!r}"))
    rule_paths = tuple(resolve(p) for p in data.get("rules", []))
    for i, p in enumerate(rule_paths):
        if not p.exists():
            errors.append(doc.error(("rules", i), f"rule path {p} does not exist"))
    if "archive" in data:
        try:
            ArchiveSettings.from_dict(data["archive"], base, base)
        except ArchiveSettingsError as e:
            errors.append(doc.error(("archive", *e.location), str(e)))
    approvals = None
    if "approvals" in data:
        section = data["approvals"] or {}
        if section.get("slack") is not None:
            try:
                SlackSettings.from_dict(section["slack"])
            except ValueError as e:
                errors.append(doc.error(("approvals", "slack"), str(e)))
        # The page runs where configured, and wherever it is the only way to decide: a
        # Slack-only configuration starts none (`page: false` turns it off explicitly).
        page_section = section.get("page")
        page: dict[str, Any] | None = (
            page_section
            if isinstance(page_section, dict)
            else {}
            if page_section is None and section.get("slack") is None
            else None
        )
        if page is None and section.get("slack") is None:
            errors.append(
                doc.error(("approvals", "page"), "without the page, approvals need Slack")
            )
        approvals = ApprovalSettings(
            page_host=page.get("listen_host", "127.0.0.1") if page is not None else None,
            page_port=page.get("listen_port", 8081) if page is not None else 0,
            local_reviewers=tuple(
                (name, spec["token_sha256"].lower())
                for name, spec in (section.get("local_reviewers") or {}).items()
            ),
            slack=section.get("slack"),
            max_pending_per_agent=section.get("max_pending_per_agent", 20),
            max_pending=section.get("max_pending", 500),
        )
    if errors:
        raise SourceErrors(errors)
    return Config(
        path=path,
        name=gateway.get("name") or replica_name(shared="state_store" in data),
        listen_host=gateway.get("listen_host", "127.0.0.1"),
        listen_port=gateway.get("listen_port", 8080),
        certs_dir=resolve(gateway.get("certs", str(holdgate_home() / "certs"))),
        state_dir=resolve(gateway.get("state", str(holdgate_home() / "var"))),
        default=data.get("default", "deny"),
        mode=data.get("mode", "enforce"),
        rule_paths=rule_paths,
        targets=tuple(targets),
        sandbox_target=sandbox,
        approvals=approvals,
        agents=directory_from_config(data.get("identity"), base),
        raw=data,
    )
