"""The `holdgate` command: run the gateway, check and explain policy, set agents up."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import yaml

from holdgate.config.gateway_config import Config, load_config
from holdgate.config.yaml_source import SourceError, SourceErrors

EXIT_INVALID = 2
EXIT_HELD = 3  # `holdgate explain`: the request would wait for approval


def _config(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config) if args.config else None)


def _print_errors(e: SourceError | SourceErrors) -> int:
    errors = e.errors if isinstance(e, SourceErrors) else [e]
    for err in errors:
        print(err, file=sys.stderr)
    return EXIT_INVALID


def runtime_warnings(config: Config) -> list[str]:
    """Where credentials could go further than meant, and secrets the gateway reads at run time
    that are missing now (files may appear later)."""
    import os

    warnings = []
    for target in config.targets:
        if target.credential is None:
            continue
        if target.upstream is None and target.name != config.sandbox_target:
            warnings.append(
                f"target {target.name}: carries a credential but declares no `upstream`; the "
                "credential goes to whichever declared host:port an agent names "
                f"({', '.join(target.hosts)}): declare `upstream` to pin it to one service"
            )
        if target.has_wildcard_host:
            warnings.append(
                f"target {target.name}: carries a credential and has a wildcard host "
                f"({', '.join(target.hosts)}); every host the pattern matches can receive it"
            )
        for path in target.credential.files():
            if not Path(path).exists():
                warnings.append(
                    f"target {target.name}: credential file {path} does not exist (yet)"
                )
        for name in target.credential.env_vars():
            if not os.environ.get(name):
                warnings.append(f"target {target.name}: environment variable {name} is not set")
    for agent in config.agents.agents.values():
        digest_file = agent.token_sha256_file
        if digest_file is None:
            continue
        if not digest_file.exists():
            warnings.append(f"agent {agent.name}: token file {digest_file} does not exist (yet)")
        elif agent.expected_digest({}) is None:
            warnings.append(
                f"agent {agent.name}: token file {digest_file} holds no SHA-256 digest; the agent "
                'cannot authenticate (write it with: printf %s "$TOKEN" | sha256sum > FILE)'
            )
    return warnings


def missing_secrets(config: Config) -> list[SourceError]:
    """Secrets the configuration needs from the environment that are not set (errors)."""
    import os

    from holdgate.config.yaml_source import load_yaml

    if config.approvals is None or config.approvals.slack is None:
        return []
    from holdgate.config.slack_settings import SlackSettings

    doc = load_yaml(config.path)
    missing = SlackSettings.from_dict(config.approvals.slack).missing_secrets(os.environ)
    return [
        doc.error(
            ("approvals", "slack"), f"approvals.slack: environment variable {name} is not set"
        )
        for name in missing
    ]


def state_store_errors(config: Config) -> list[SourceError]:
    """What is wrong with `state_store` (a password in its URL, an unreadable password file)."""
    import os

    from holdgate.config.yaml_source import load_yaml
    from holdgate.state.postgres import StateStoreSettings

    try:
        StateStoreSettings.from_config(
            config.raw.get("state_store"), os.environ, config.path.parent
        )
    except ValueError as e:
        return [load_yaml(config.path).error(("state_store",), str(e))]
    return []


def cmd_check(args: argparse.Namespace) -> int:
    from holdgate.policy.rule_tests import run_rule_tests
    from holdgate.policy.rules import load_policy
    from holdgate.request.flow_filter import compile_filter

    try:
        config = _config(args)
        loaded = load_policy(config.rule_files(), config, compile_filter)
    except (SourceError, SourceErrors) as e:
        return _print_errors(e)
    failures: list[object] = [
        *missing_secrets(config),
        *state_store_errors(config),
        *run_rule_tests(config, loaded),
    ]
    for failure in failures:
        print(failure, file=sys.stderr)
    for warning in [*loaded.warnings, *runtime_warnings(config)]:
        print(f"warning: {warning}", file=sys.stderr)
    if failures:
        return EXIT_INVALID
    print(
        f"ok: {config.path}: {len(config.targets)} targets, {len(loaded.policy.rules)} rules "
        f"in {len(loaded.files)} files, {len(loaded.tests)} rule tests passed"
    )
    # What does not enforce yet, so that it is not forgotten.
    if config.mode == "audit":
        print("mode: audit (the whole gateway): nothing is refused or held, only recorded")
    for target in config.targets:
        if target.mode == "audit":
            print(f"mode: audit: target {target.name}")
    for rule in loaded.policy.rules:
        if rule.mode == "audit":
            print(f"mode: audit: rule {rule.id} ({rule.where})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from holdgate.policy.access_review import decide_review, self_review
    from holdgate.policy.rule_tests import decide_url
    from holdgate.policy.rules import load_policy
    from holdgate.request.flow_filter import compile_filter

    try:
        config = _config(args)
        loaded = load_policy(config.rule_files(), config, compile_filter)
    except (SourceError, SourceErrors) as e:
        return _print_errors(e)
    try:
        body = Path(args.body).read_bytes() if args.body else b""
    except OSError as e:
        print(f"holdgate explain: --body: {e.strerror or e}: {args.body}", file=sys.stderr)
        return EXIT_INVALID
    content_type = args.content_type or (
        "application/json" if body.lstrip()[:1] in (b"{", b"[") else ""
    )
    if body and not content_type and body.startswith(b"k8s\x00"):
        content_type = "application/vnd.kubernetes.protobuf"
    identity = config.agents.identity_of(args.agent, tuple(args.group)) if args.agent else None
    try:
        decision, facts = decide_url(
            config,
            loaded,
            args.method.upper(),
            args.url,
            body=body,
            content_type=content_type,
            identity=identity,
        )
    except ValueError as e:
        print(
            f"holdgate explain: {args.url!r} is not a URL the gateway can take: {e}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if review := self_review(facts):
        decision, answered = decide_review(loaded.policy, config, facts, review)
    info = facts.as_dict()
    out = {
        "target": info["target"],
        "method": info["method"],
        "url": args.url,
        "kubernetes": info.get("kubernetes"),
        "exec": info.get("exec"),
        "identity": info.get("identity"),
        "rule": decision.rule.id if decision.rule else None,
        "rule_source": decision.rule.where if decision.rule else None,
        "action": str(decision.action),
        "reason": decision.reason,
        "mode": "audit" if decision.would is not None else "enforce",
    }
    if decision.would is not None:  # audit mode: what the rules decided, not enforced
        out["would"] = str(decision.would.action)
    if info.get("problem"):
        out["problem"] = info["problem"]
    if review:  # `kubectl auth can-i`: what the gateway answers for this agent
        out["access_review"] = {k: v for k, v in answered.items() if k != "spec"}
    print(json.dumps(out, indent=2))
    # As `kubectl auth can-i`: 0 when allowed; a denial 1, a hold for approval 3 (2: bad input).
    return {"allow": 0, "deny": 1}.get(str(decision.action), EXIT_HELD)


def cmd_ca(args: argparse.Namespace) -> int:
    from holdgate.config.gateway_ca import ensure_ca

    try:
        config = _config(args)
    except (SourceError, SourceErrors) as e:
        return _print_errors(e)
    print(ensure_ca(config.certs_dir))
    return 0


def hold_line(hold: dict[str, Any]) -> str:
    """One pending hold as `holdgate approvals list` prints it: who asks for what, and why."""
    from holdgate.printable import printable

    request = hold.get("request") or {}
    kube = request.get("kubernetes") or {}
    if kube.get("resource_request"):
        resource = kube["resource"] + (f"/{kube['subresource']}" if kube.get("subresource") else "")
        what = f"{kube['verb']} {resource}" + (f" {kube['name']}" if kube.get("name") else "")
        what += f" -n {kube['namespace']}" if kube.get("namespace") else " (cluster-wide)"
    else:
        what = f"{request.get('method', '')} {request.get('url', '')}"
    command = (request.get("exec") or {}).get("command")
    if command:
        what += " -- " + " ".join(command)
    reason = request.get("reason") or ""
    line = (
        f"{hold['id']}  {hold.get('agent') or '-'}  {what}  rule {hold['rule']}  "
        f"{hold['approvals']}/{hold['required']} approvals"
    )
    return printable(line + (f"  reason: {reason}" if reason else ""), 1000)


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    from holdgate.config.gateway_ca import ensure_ca
    from holdgate.config.state_files import write_private
    from holdgate.kube.kubeconfig import INJECTED_PLACEHOLDER, KubeconfigError, agent_kubeconfig

    try:
        config = _config(args)
    except (SourceError, SourceErrors) as e:
        return _print_errors(e)
    proxy_url = args.proxy_url or f"http://{config.listen_host}:{config.listen_port}"
    if args.agent:
        token = os.environ.get(AGENT_TOKEN_ENV, "")
        try:
            if args.token_file:
                token = Path(args.token_file).read_text().strip()
        except OSError as e:
            print(f"holdgate kubeconfig: --token-file: {e.strerror or e}", file=sys.stderr)
            return EXIT_INVALID
        if not token:
            print(
                f"holdgate kubeconfig: --agent needs its token: --token-file FILE or "
                f"${AGENT_TOKEN_ENV}",
                file=sys.stderr,
            )
            return EXIT_INVALID
        user = args.agent + (f"+{args.run_id}" if args.run_id else "")
        proxy_url = with_credentials(proxy_url, user, token)
    elif config.agents.enabled and not urlsplit(proxy_url).password:
        print(
            "warning: the gateway requires agent credentials (identity is on): pass --agent NAME "
            f"--token-file FILE (or ${AGENT_TOKEN_ENV}), or agents will get 407",
            file=sys.stderr,
        )
    try:
        source = yaml.safe_load(Path(args.kubeconfig).read_text())
        result = agent_kubeconfig(
            source,
            proxy_url=proxy_url,
            gateway_ca_pem=ensure_ca(config.certs_dir).read_bytes(),
            context=args.context,
        )
        server = urlsplit(result["clusters"][0]["cluster"].get("server", ""))
        target = config.target_for(server.hostname or "", server.port or 443)
        if target is None:
            print(
                f"warning: {server.hostname} is not among the gateway's target hosts; "
                "add it to a target's hosts or agents will be refused",
                file=sys.stderr,
            )
        elif target.credential is not None:
            # The gateway injects the real credential: the agent holds nothing that works alone.
            result["users"][0]["user"] = {"token": INJECTED_PLACEHOLDER}
    except (OSError, yaml.YAMLError, KubeconfigError, KeyError, TypeError) as e:
        print(f"holdgate kubeconfig: {args.kubeconfig}: {e}", file=sys.stderr)
        return EXIT_INVALID
    out = Path(args.out)
    write_private(out, yaml.safe_dump(result, sort_keys=False))
    print(f"wrote {out} (context {result['current-context']}, proxy-url {_redacted(proxy_url)})")
    return 0


AGENT_TOKEN_ENV = "HOLDGATE_AGENT_TOKEN"


def with_credentials(url: str, user: str, token: str) -> str:
    """The proxy URL with the agent's name and token as its user info (percent-encoded)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='+')}:{quote(token, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _redacted(url: str) -> str:
    """A URL with its password (an agent's proxy token) replaced, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _port_override(mitmproxy_args: list[str], option: str) -> int:
    """The last `--set OPTION=N` among the arguments for mitmproxy, else -1."""
    found = -1
    for i, arg in enumerate(mitmproxy_args):
        value = mitmproxy_args[i + 1] if arg == "--set" and i + 1 < len(mitmproxy_args) else ""
        if value.startswith(f"{option}="):
            with contextlib.suppress(ValueError):
                found = int(value.partition("=")[2])
    return found


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("holdgate")
    except PackageNotFoundError:
        return "unknown (not installed)"


def cmd_init(args: argparse.Namespace) -> int:
    from holdgate.config.gateway_config import init_home

    sandbox = init_home(Path(args.directory).resolve())
    print(f"wrote {sandbox.parent.parent}")
    print(f"start the sandbox:  holdgate run --config {sandbox}")
    print(f"check a config:     holdgate check --config {sandbox.with_name('production.yaml')}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from holdgate import workers

    worker = workers.current()
    try:
        config = _config(args)
        from holdgate.gateway import addons as gateway_addons
        from holdgate.gateway import fixed_listeners
        from holdgate.listening import busy_listener

        # A port in use stops the start in one line, before anything is written (checked once,
        # by the parent, for `--workers`: its workers share their ports).
        listeners = fixed_listeners(
            config,
            _port_override(args.mitmproxy_args, "holdgate_operations_port"),
            _port_override(args.mitmproxy_args, "holdgate_approvals_port"),
        )
        if worker is None and (busy := busy_listener(listeners)):
            print(f"holdgate: refusing to start: {busy}", file=sys.stderr)
            return EXIT_INVALID
        if args.workers > 1 and worker is None:
            return _run_workers(args, config)
        # Loaded once, here, so that errors are printed as `holdgate check` prints them.
        gateway_addons[0].prepare(config)
    except (SourceError, SourceErrors) as e:
        print("holdgate: refusing to start, the configuration is invalid:", file=sys.stderr)
        return _print_errors(e)
    from holdgate.master import run

    if worker is not None:
        workers.listen_with_reuse_port()
    host = args.listen_host or config.listen_host
    port = config.listen_port if args.listen_port is None else args.listen_port
    run(
        [
            "--set",
            f"holdgate_config={config.path}",
            "--set",
            f"confdir={config.certs_dir}",
            "--listen-host",
            host,
            "--listen-port",
            str(port),
            *(["--set", f"holdgate_log_format={args.log_format}"] if args.log_format else []),
            *args.mitmproxy_args,
        ]
    )
    return 0


def _run_workers(args: argparse.Namespace, config: Config) -> int:
    """Start `--workers` gateway processes behind one port (holdgate.workers) and supervise."""
    import socket

    from holdgate import workers
    from holdgate.archive import signing
    from holdgate.config.archive_settings import ArchiveSettings, ArchiveSettingsError
    from holdgate.config.gateway_ca import ensure_ca
    from holdgate.config.state_files import admin_token
    from holdgate.gateway import mask_key

    if "state_store" not in config.raw:
        print(
            "holdgate: refusing to start: --workers needs a state_store (workers share holds "
            "through it; see README, Replicas)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if config.sandbox_target is not None:
        print("holdgate: refusing to start: --workers does not run the sandbox", file=sys.stderr)
        return EXIT_INVALID
    try:
        archive = ArchiveSettings.from_dict(
            config.raw.get("archive"), config.path.parent, config.state_dir
        )
    except ArchiveSettingsError as e:
        print(f"holdgate: refusing to start, the configuration is invalid: {e}", file=sys.stderr)
        return EXIT_INVALID
    # What every worker must share, made once before any starts (else each would make its own).
    config.state_dir.mkdir(parents=True, exist_ok=True)
    ensure_ca(config.certs_dir)
    admin_token(config.state_dir)
    mask_key(config.state_dir)  # $HOLDGATE_MASK_KEY, when set, is used and nothing written
    if archive.signing_key is not None:
        signing.load_or_create(archive.signing_key)
    host = args.listen_host or config.listen_host
    port = config.listen_port if args.listen_port is None else args.listen_port
    if port == 0:  # one port for all: chosen here
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "holdgate.cli", "run", "--config", str(config.path),
        "--listen-host", host, "--listen-port", str(port),
        *(["--log-format", args.log_format] if args.log_format else []),
        "--", *args.mitmproxy_args,
    ]  # fmt: skip
    return workers.supervise(command, args.workers)


def _approvals_client(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    import os

    from holdgate.config.state_files import ADMIN_TOKEN_ENV, admin_token_path

    config = _config(args)
    url = args.url
    if not url:
        desk_file = config.state_dir / "approvals-url"
        if desk_file.exists():
            url = desk_file.read_text().strip()
        elif config.approvals is not None and config.approvals.page_host is not None:
            url = f"http://{config.approvals.page_host}:{config.approvals.page_port}/"
        else:
            raise SystemExit("holdgate approvals: the config has no approvals page; pass --url")
    token = args.token or os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token and admin_token_path(config.state_dir).exists():
        token = admin_token_path(config.state_dir).read_text().strip()
    if not token:
        raise SystemExit(f"holdgate approvals: no token: pass --token or set {ADMIN_TOKEN_ENV}")
    return url.rstrip("/"), {"Authorization": f"Bearer {token}"}


def cmd_approvals(args: argparse.Namespace) -> int:
    import httpx

    try:
        base, headers = _approvals_client(args)
    except (SourceError, SourceErrors) as e:
        return _print_errors(e)
    try:
        with httpx.Client(timeout=30, headers=headers, trust_env=False) as client:
            if args.action == "list":
                response = client.get(f"{base}/api/holds")
            else:
                verb = "approve" if args.action == "approve" else "deny"
                response = client.post(
                    f"{base}/api/holds/{args.id}/{verb}", json={"reason": args.reason or ""}
                )
    except httpx.HTTPError as e:
        print(f"holdgate approvals: cannot reach {base}: {e}", file=sys.stderr)
        return 1
    if response.status_code == 401:
        print("holdgate approvals: the token was refused", file=sys.stderr)
        return 1
    data = response.json()
    if args.action == "list":
        if args.json:
            print(json.dumps(data, indent=2))
            return 0
        pending = data["pending"]
        if not pending:
            print("no pending holds")
        for hold in pending:
            print(hold_line(hold))
        return 0
    print(data.get("message", data))
    return 0 if response.status_code == 200 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="holdgate",
        description="A human-in-the-loop gateway for automated agents (mitmproxy addons).",
    )
    parser.add_argument("--version", action="version", version=f"holdgate {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = "gateway configuration (default: the embedded default, rules/config/sandbox.yaml)"

    p = sub.add_parser(
        "init",
        help="copy the example rules and configurations to a directory, to start from",
        description="Writes DIR/rules/*.yaml (the example rules) and DIR/rules/config/ "
        "(sandbox.yaml: the embedded default; production.yaml: a production shape); files "
        "already there are kept. State and certificates of DIR/rules/config/sandbox.yaml go "
        "to DIR/var and DIR/certs.",
    )
    p.add_argument("directory", help="where to write rules/")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run the gateway")
    p.add_argument("--config", help=config_help)
    p.add_argument("--listen-host", help="address to listen on (default: from the config)")
    p.add_argument("--listen-port", type=int, help="port to listen on (default: from the config)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N gateway processes behind the one listen port (SO_REUSEPORT), one per core; "
        "needs a state_store (they share holds through it); each archives its own chain "
        "(NAME-wI); worker 0 serves the approvals page",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text lines (default), or one JSON object per line with the agent, run id, target, "
        "verb, resource, namespace, name, decision, rule and hold of decision lines",
    )
    p.add_argument(
        "mitmproxy_args",
        nargs=argparse.REMAINDER,
        help="after --: mitmproxy options (`-- --help` lists them), "
        "e.g. -- --set termlog_verbosity=debug",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate the config and rules and run the rules' tests")
    p.add_argument("--config", help=config_help)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("explain", help="show how one request is classified and decided")
    p.add_argument("--config", help=config_help)
    p.add_argument("--agent", help="the agent making the request")
    p.add_argument("--group", action="append", default=[], help="a group of the agent (repeatable)")
    p.add_argument("--body", help="file holding the request body")
    p.add_argument("--content-type", help="the body's content type (default: guessed)")
    p.add_argument("method", help="HTTP method, e.g. GET")
    p.add_argument("url", help="full URL, e.g. https://kubernetes.default.svc/api/v1/namespaces")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "ca", help="print the path of the gateway CA certificate (created if missing)"
    )
    p.add_argument("--config", help=config_help)
    p.set_defaults(func=cmd_ca)

    p = sub.add_parser("kubeconfig", help="write an agent kubeconfig that goes through the gateway")
    p.add_argument("--config", help=config_help)
    p.add_argument("--kubeconfig", required=True, help="the kubeconfig to start from")
    p.add_argument("--out", required=True, help="where to write the agent kubeconfig")
    p.add_argument("--context", help="the context to use (default: current-context)")
    p.add_argument(
        "--proxy-url", help="the gateway's URL as agents reach it (default: from the config)"
    )
    p.add_argument("--agent", help="the agent's name, written into proxy-url with its token")
    p.add_argument(
        "--token-file", help=f"file holding the agent's token (default: ${AGENT_TOKEN_ENV})"
    )
    p.add_argument("--run-id", help="tag the agent's flows with this run id (NAME+RUN_ID)")
    p.set_defaults(func=cmd_kubeconfig)

    p = sub.add_parser("approvals", help="list, approve or deny held requests (the page's API)")
    p.add_argument("--config", help=config_help)
    p.add_argument("--url", help="the approvals page URL (default: the running gateway's)")
    p.add_argument(
        "--token", help="reviewer token (default: $HOLDGATE_ADMIN_TOKEN or the admin token file)"
    )
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("list", help="pending holds")
    a.add_argument("--json", action="store_true", help="print the API's JSON")
    a = actions.add_parser("approve", help="approve a hold")
    a.add_argument("id")
    a.add_argument("--reason", default="", help="optional note")
    a = actions.add_parser("deny", help="deny a hold")
    a.add_argument("id")
    a.add_argument("--reason", required=True, help="why (the agent sees it)")
    p.set_defaults(func=cmd_approvals)

    from holdgate.ledger.cli import add_commands as add_ledger_commands

    add_ledger_commands(sub, config_help)

    from holdgate.archive.cli import add_commands as add_archive_commands

    add_archive_commands(sub)

    from holdgate.rollout.cli import add_commands as add_rollout_commands

    add_rollout_commands(sub, config_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "mitmproxy_args", None) and args.mitmproxy_args[0] == "--":
        args.mitmproxy_args = args.mitmproxy_args[1:]
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
