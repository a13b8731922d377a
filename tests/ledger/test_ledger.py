"""What agents create is labelled and recorded; `resources`, `reap` and `run-end` through the real
gateway against the Kubernetes simulator; the reaper loop deletes what expired."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from holdgate.kube.protobuf import MAGIC, _field
from holdgate.kube.request_info import classify
from holdgate.ledger.cli import Row, is_hold_of, run_end_lines, run_end_message, span
from holdgate.ledger.reaping import Existence, Presence
from holdgate.ledger.store import (
    ANNOTATION_AGENT,
    ANNOTATION_EXPIRES,
    ANNOTATION_RUN,
    LABEL_MANAGED,
    Created,
    Filter,
    Ledger,
    created_from_response,
)
from holdgate.sandbox.kube_resources import SECRETS
from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    LOCAL_PAGE,
    ROOT,
    SIM_TOKEN,
    GatewayProcess,
    Page,
    kube_target,
    kubectl,
    page_address,
    start_gateway,
    trust,
    write_agent_kubeconfig,
)
from tests.sim.slack_sim import SlackSimulator, validate_blocks

CI_TOKEN = "ci-token-ledger-3c9a"
K8S = "https://kubernetes.default.svc"
SLACK_TOKEN_ENV = "HOLDGATE_TEST_SLACK_BOT_TOKEN"

RULES = """
rules:
  - id: discovery
    action: allow
    verbs: [get]
    nonResourceURLs: [/api, /api/*, /apis, /apis/*, /version, /openapi/*]
  - id: reads
    action: allow
    verbs: [get, list, watch]
    resources: ["*"]
    apiGroups: ["*"]
  - id: ci-creates
    action: allow
    agents: [ci-bot]
    verbs: [create, delete, patch]
    resources: [namespaces, secrets]
    ttl: 2h
  - id: ci-scratch
    action: allow
    agents: [ci-bot]
    verbs: [create]
    resources: [configmaps]
    ttl: 1s
  - id: reaper-deletes
    action: allow
    agents: [holdgate-reaper]
    verbs: [delete]
    resources: [secrets, configmaps]
  - id: reaper-namespace-deletes
    action: approve
    agents: [holdgate-reaper]
    verbs: [delete]
    resources: [namespaces]
    reviewers: [local:admin]
    timeout: 1m
"""


# --- the core, as tables ----------------------------------------------------------------------


def _created(**fields: Any) -> Created:
    base: dict[str, Any] = {
        "uid": "u1",
        "created_at": 1000.0,
        "agent": "ci-bot",
        "run_id": "r1",
        "target": "cluster",
        "api_group": "",
        "api_version": "v1",
        "kind": "Secret",
        "resource": "secrets",
        "namespace": "ns",
        "name": "s",
    }
    return Created(**{**base, **fields})


SECRET_META = {"name": "s", "namespace": "ns", "uid": "uid-1"}


def protobuf_answer(kind: str, meta: dict[str, str]) -> bytes:
    """What a real apiserver answers kubectl's create with: the created object in protobuf."""
    fields = ((1, "name"), (3, "namespace"), (5, "uid"))
    object_meta = b"".join(_field(n, meta[key].encode()) for n, key in fields if key in meta)
    type_meta = _field(1, b"v1") + _field(2, kind.encode())
    return MAGIC + _field(1, type_meta) + _field(2, _field(1, object_meta))


@pytest.mark.parametrize(
    ("method", "path", "body", "want"),
    [
        (
            "POST",
            "/api/v1/namespaces/ns/secrets",
            json.dumps({"kind": "Secret", "metadata": SECRET_META}).encode(),
            ("Secret", "ns", "s", "/api/v1/namespaces/ns/secrets/s"),
        ),
        (  # kubectl asks for protobuf: a real apiserver answers in it
            "POST",
            "/api/v1/namespaces/ns/secrets",
            protobuf_answer("Secret", SECRET_META),
            ("Secret", "ns", "s", "/api/v1/namespaces/ns/secrets/s"),
        ),
        (  # server-side apply of a namespace: the URL puts it "in" itself; it is cluster-wide
            "PATCH",
            "/api/v1/namespaces/agent-1",
            json.dumps({"kind": "Namespace", "metadata": {"name": "agent-1", "uid": "u"}}).encode(),
            ("Namespace", "", "agent-1", "/api/v1/namespaces/agent-1"),
        ),
        (
            "POST",
            "/apis/apps/v1/namespaces/ns/deployments",
            json.dumps({"kind": "Deployment", "metadata": {**SECRET_META, "name": "d"}}).encode(),
            ("Deployment", "ns", "d", "/apis/apps/v1/namespaces/ns/deployments/d"),
        ),
        ("POST", "/api/v1/namespaces/ns/secrets", b"not json", None),
        ("POST", "/api/v1/namespaces/ns/secrets", b'{"metadata": {"name": "no-uid"}}', None),
        ("POST", "/api/v1/namespaces/ns/secrets", b"k8s\x00\xff\xff", None),
    ],
)
def test_created_from_response(method: str, path: str, body: bytes, want: tuple | None) -> None:
    entry = created_from_response(classify(method, path), "cluster", "a", "r", body, 60.0, 100.0)
    if want is None:
        assert entry is None
        return
    assert entry is not None
    assert (entry.kind, entry.namespace, entry.name, entry.path) == want
    assert entry.expires_at == 160.0


@pytest.mark.parametrize(
    ("where", "now", "found"),
    [
        (Filter(), 2000.0, ["live", "ttl"]),
        (Filter(include_deleted=True), 2000.0, ["live", "ttl", "deleted"]),
        (Filter(run_id="r2"), 2000.0, ["ttl"]),
        (Filter(agent="other"), 2000.0, []),
        (Filter(expired=True), 1050.0, []),
        (Filter(expired=True), 1100.0, ["ttl"]),
        (Filter(older_than=500.0), 1600.0, ["live"]),
        (Filter(target="elsewhere"), 2000.0, []),
    ],
)
def test_ledger_filters(tmp_path: Path, where: Filter, now: float, found: list[str]) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record(_created(uid="live", name="live"))
    ledger.record(_created(uid="ttl", name="ttl", run_id="r2", created_at=1500, expires_at=1100))
    ledger.record(_created(uid="deleted", name="deleted", created_at=1700))
    ledger.mark_deleted("deleted", "ci-bot", now=1800)
    assert [e.uid for e in ledger.find(where, now)] == found


def test_a_namespace_delete_closes_its_entry(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record(
        _created(uid="n", kind="Namespace", resource="namespaces", namespace="", name="x")
    )
    closed = ledger.mark_deleted_object("cluster", classify("DELETE", "/api/v1/namespaces/x"), "me")
    assert [e.uid for e in closed] == ["n"]
    assert ledger.find(Filter()) == []


def test_run_end_report_and_slack_message() -> None:
    now = 10_000.0
    rows = [
        Row(_created(uid="a", name="kept"), Presence(Existence.EXISTS, "")),
        Row(_created(uid="b", name="lost"), Presence(Existence.GONE, "")),
        Row(_created(uid="c", name="maybe", expires_at=9_000.0), Presence(Existence.UNKNOWN, "x")),
    ]
    lines = run_end_lines("r1", rows, now)
    assert lines[0] == "run r1: left behind 2 of the 3 objects it created:"
    assert "secrets/kept -n ns" in lines[2] and "lost" not in "".join(lines)
    assert "expired 16m ago" in lines[3] and lines[-1] == "reap them: holdgate reap --run r1 --yes"
    text, blocks = run_end_message("r1", rows * 20, "gw", now)
    validate_blocks(blocks)
    assert text == "holdgate (gw): run r1 left behind 40 objects" and "10 more" in str(blocks)
    assert run_end_lines("r1", rows[1:2], now) == ["run r1: created 1 objects; none is left behind"]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59, "59s"), (61, "1m"), (3900, "1h05m"), (90000, "1d01h")]
)
def test_span(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_is_hold_of() -> None:
    entry = _created(resource="namespaces", namespace="", name="x")
    hold = {
        "state": "pending",
        "agent": "holdgate-reaper",
        "request": {"method": "DELETE", "url": f"{K8S}/api/v1/namespaces/x"},
    }
    assert is_hold_of(hold, entry)
    assert not is_hold_of({**hold, "agent": "ci-bot"}, entry)
    assert not is_hold_of({**hold, "state": "approved"}, entry)
    assert not is_hold_of(hold, _created(resource="namespaces", namespace="", name="y"))


# --- through the real gateway -----------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator
) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("ledger")
    token_file = home / "upstream-token"
    token_file.write_text(SIM_TOKEN)
    config = {
        "targets": [kube_target(simulator, credential={"bearer_token_file": str(token_file)})],
        "identity": {
            "agents": [
                {"name": "ci-bot", "token_sha256": hashlib.sha256(CI_TOKEN.encode()).hexdigest()}
            ]
        },
        "approvals": LOCAL_PAGE,
        "ledger": {"reap_expired": True, "reap_interval_seconds": 1},
    }
    gw = start_gateway(home, config, {"r.yaml": RULES}, verbose=True)
    yield gw
    gw.stop()


def agent_kubeconfig(gateway: GatewayProcess, path: Path, run_id: str) -> Path:
    """kubectl as ci-bot, tagging its flows with a run id (credentials in the proxy URL)."""
    return write_agent_kubeconfig(
        path, gateway, token="placeholder", agent=(f"ci-bot+{run_id}", CI_TOKEN)
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def json_create(gateway: GatewayProcess, run_id: str, path: str, obj: dict[str, Any]) -> None:
    """A create with a JSON body (labelled in the body by the gateway)."""
    proxy = f"http://ci-bot+{run_id}:{CI_TOKEN}@127.0.0.1:{gateway.port}"
    with httpx.Client(proxy=proxy, verify=trust(gateway), timeout=30, trust_env=False) as client:
        r = client.post(f"{K8S}{path}", json=obj)
    assert r.status_code == 201, r.text


def holdgate(gateway: GatewayProcess, *args: str) -> list[str]:
    """The ledger commands as `holdgate` runs them, against this gateway's config."""
    return [sys.executable, "-m", "holdgate.ledger.cli", *args, "--config", config_of(gateway)]


def config_of(gateway: GatewayProcess) -> str:
    return str(gateway.home / "holdgate.yaml")


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env or _env()
    )


def _env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    clean.pop("HOLDGATE_ADMIN_TOKEN", None)
    return {**clean, **extra}


def resources(gateway: GatewayProcess, *args: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(
        ok(run(holdgate(gateway, "resources", "--json", *args)))
    )
    return data


def by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in entries}


class Background:
    """A command left running (it waits for a reviewer); its output lines can be awaited."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env()
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, text: str, timeout: float = 30.0) -> str:
        """The first output line containing `text` (bounded)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.out.append(line)
            if text in line:
                return line
        raise AssertionError(f"never printed {text!r}; output:\n{''.join(self.out)}")

    def finish(self, timeout: float = 60.0) -> tuple[int, str, str]:
        """Exit code, all of stdout, stderr."""
        code = self.process.wait(timeout=timeout)
        self._pump.join(timeout=10)
        while (line := self.lines.get(timeout=10)) is not None:  # the pump ends with None
            self.out.append(line)
        assert self.process.stderr is not None
        return code, "".join(self.out), self.process.stderr.read()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *_: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def test_creates_are_labelled_and_recorded(
    gateway: GatewayProcess, simulator: KubeSimulator, tmp_path: Path
) -> None:
    kc = agent_kubeconfig(gateway, tmp_path / "kc", "run-lbl")
    simulator.clear_requests()
    ok(kubectl(kc, "create", "namespace", "lbl-ns"))
    ok(
        kubectl(
            kc, "create", "secret", "generic", "lbl-proto", "-n", "lbl-ns", "--from-literal=k=v"
        )
    )
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lbl-json"}}
    json_create(gateway, "run-lbl", "/api/v1/namespaces/lbl-ns/secrets", secret)
    applied = "apiVersion: v1\nkind: Secret\nmetadata: {name: lbl-applied, namespace: lbl-ns}\n"
    ok(kubectl(kc, "apply", "--server-side", "-f", "-", stdin=applied))

    # kubectl's create is protobuf: sent as is, labelled by a follow-up merge PATCH.
    posted = simulator.requests_to("/api/v1/namespaces/lbl-ns/secrets", "POST")
    assert [r.content_type.split(";")[0] for r in posted] == [
        "application/vnd.kubernetes.protobuf",
        "application/json",
    ]
    # The gateway's own follow-ups (the apply's body, the agent's intent, is never edited).
    follow_ups = [r for r in simulator.requests if r.content_type == "application/merge-patch+json"]
    assert [r.path for r in follow_ups] == [
        "/api/v1/namespaces/lbl-ns",
        "/api/v1/namespaces/lbl-ns/secrets/lbl-proto",
        "/api/v1/namespaces/lbl-ns/secrets/lbl-applied",
    ]
    assert all(r.headers["authorization"] == f"Bearer {SIM_TOKEN}" for r in follow_ups)
    assert LABEL_MANAGED in json.loads(posted[1].body)["metadata"]["labels"]

    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    for what in (
        ("namespace", "lbl-ns"),
        ("secret", "lbl-proto"),
        ("secret", "lbl-json"),
        ("secret", "lbl-applied"),
    ):
        meta = json.loads(ok(kubectl(kc, "get", *what, "-n", "lbl-ns", "-o", "json")))["metadata"]
        assert meta["labels"][LABEL_MANAGED] == "true", what
        annotations = meta["annotations"]
        assert (annotations[ANNOTATION_AGENT], annotations[ANNOTATION_RUN]) == ("ci-bot", "run-lbl")
        expires = dt.datetime.strptime(annotations[ANNOTATION_EXPIRES], "%Y-%m-%dT%H:%M:%S%z")
        assert abs((expires - soon).total_seconds()) < 60, what

    entries = by_name(resources(gateway, "--run", "run-lbl"))
    assert set(entries) == {"lbl-ns", "lbl-proto", "lbl-json", "lbl-applied"}
    proto = entries["lbl-proto"]
    assert (proto["kind"], proto["namespace"], proto["agent"], proto["state"]) == (
        "Secret",
        "lbl-ns",
        "ci-bot",
        "exists",
    )
    assert entries["lbl-ns"]["namespace"] == "" and entries["lbl-ns"]["kind"] == "Namespace"
    assert proto["uid"] == simulator.store.get(SECRETS, "lbl-ns", "lbl-proto")["metadata"]["uid"]


def test_resources_then_reap_through_policy(
    gateway: GatewayProcess, simulator: KubeSimulator, tmp_path: Path
) -> None:
    kc = agent_kubeconfig(gateway, tmp_path / "kc", "run-lc")
    ok(kubectl(kc, "create", "namespace", "lc-ns"))
    for name in ("lc-deleted", "lc-vanished"):
        ok(kubectl(kc, "create", "secret", "generic", name, "-n", "lc-ns", "--from-literal=k=v"))
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lc-left"}}
    json_create(gateway, "run-lc", "/api/v1/namespaces/lc-ns/secrets", secret)
    listed = ok(run(holdgate(gateway, "resources", "--run", "run-lc")))
    assert listed.count(" exists") == 4 and "secrets/lc-left -n lc-ns" in listed

    # Deleted by kubectl through the gateway: the ledger notes who.
    ok(kubectl(kc, "delete", "secret", "lc-deleted", "-n", "lc-ns"))
    # Deleted behind the gateway's back: the check finds it gone.
    direct = tmp_path / "direct"
    direct.write_text(simulator.kubeconfig())
    ok(kubectl(direct, "delete", "secret", "lc-vanished", "-n", "lc-ns"))
    entries = by_name(resources(gateway, "--run", "run-lc"))
    assert {n: e["state"] for n, e in entries.items()} == {
        "lc-ns": "exists",
        "lc-vanished": "gone",
        "lc-left": "exists",
    }
    every = by_name(resources(gateway, "--run", "run-lc", "--all", "--no-check"))
    assert every["lc-deleted"]["deleted_by"] == "ci-bot"
    assert every["lc-vanished"]["deleted_by"] == "found missing"

    simulator.clear_requests()
    dry = ok(run(holdgate(gateway, "reap", "--run", "run-lc")))
    assert dry.startswith("would delete 2 objects (dry run")
    assert "secrets/lc-left -n lc-ns" in dry and "namespaces/lc-ns" in dry and "vanished" not in dry
    assert [r for r in simulator.requests if r.method == "DELETE"] == []

    page_at = page_address(gateway)
    with (
        Background(holdgate(gateway, "reap", "--run", "run-lc", "--yes")) as reap,
        Page(*page_at) as page,
    ):
        hold = page.wait_pending("reaper-namespace-deletes")[0]
        assert hold["request"]["identity"]["agent"] == "holdgate-reaper"
        assert hold["request"]["identity"]["run_id"] == "run-lc"
        assert "reaping what ci-bot left behind" in hold["request"]["reason"]
        # The command says it waits, and for what.
        notice = reap.wait_for_line("held for approval")
        assert f"by rule reaper-namespace-deletes (hold {hold['id']})" in notice
        assert page.decide(hold["id"], True).status_code == 200
        code, out, err = reap.finish()
    assert code == 0, err
    assert "secrets/lc-left -n lc-ns: deleted" in out and "namespaces/lc-ns: deleted" in out
    assert out.index("secrets/lc-left -n lc-ns: deleted") < out.index("namespaces/lc-ns: deleted")
    deletes = [
        (r.path, r.headers["authorization"]) for r in simulator.requests if r.method == "DELETE"
    ]
    assert deletes == [
        ("/api/v1/namespaces/lc-ns/secrets/lc-left", f"Bearer {SIM_TOKEN}"),
        ("/api/v1/namespaces/lc-ns", f"Bearer {SIM_TOKEN}"),
    ]
    gateway.wait_for_output(
        r"allow DELETE cluster delete secrets lc-left -n lc-ns: .*reaper-deletes"
    )
    gateway.wait_for_output(r"ledger: holdgate-reaper deleted namespaces/lc-ns")
    assert resources(gateway, "--run", "run-lc") == []
    assert ok(run(holdgate(gateway, "reap", "--run", "run-lc"))) == "nothing to reap\n"


def test_reap_refused_by_policy_exits_non_zero(
    gateway: GatewayProcess, simulator: KubeSimulator, tmp_path: Path
) -> None:
    unbounded = run(holdgate(gateway, "reap", "--yes"))
    assert unbounded.returncode == 2 and "say what to delete" in unbounded.stderr
    kc = agent_kubeconfig(gateway, tmp_path / "kc", "run-deny")
    ok(kubectl(kc, "create", "namespace", "deny-ns"))
    page_at = page_address(gateway)
    with (
        Background(holdgate(gateway, "reap", "--run", "run-deny", "--yes")) as reap,
        Page(*page_at) as page,
    ):
        hold = page.wait_pending("reaper-namespace-deletes")[0]
        page.decide(hold["id"], False, reason="keep it for the post-mortem")
        code, out, err = reap.finish()
    assert code == 1
    assert "namespaces/deny-ns: refused: HTTP 403" in out and "keep it for the post-mortem" in out
    assert "1 of 1 deletions did not happen" in err
    assert [e["state"] for e in resources(gateway, "--run", "run-deny")] == ["exists"]


@contextmanager
def slack_simulator() -> Iterator[tuple[SlackSimulator, asyncio.AbstractEventLoop]]:
    """The Slack simulator on its own event loop thread (the CLI under test is synchronous)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def started() -> SlackSimulator:
        return await SlackSimulator().start()

    sim = asyncio.run_coroutine_threadsafe(started(), loop).result(10)
    try:
        yield sim, loop
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_run_end_reports_what_the_run_left_behind(
    gateway: GatewayProcess, simulator: KubeSimulator, tmp_path: Path
) -> None:
    kc = agent_kubeconfig(gateway, tmp_path / "kc", "run-end-1")
    ok(
        kubectl(
            kc, "create", "secret", "generic", "end-left", "-n", "sandbox", "--from-literal=a=b"
        )
    )
    ok(
        kubectl(
            kc, "create", "secret", "generic", "end-gone", "-n", "sandbox", "--from-literal=a=b"
        )
    )
    ok(kubectl(kc, "delete", "secret", "end-gone", "-n", "sandbox"))

    # The CI job's copy of the config: the same gateway, with the reviewers' Slack channel.
    config = yaml.safe_load(Path(config_of(gateway)).read_text())
    ci_config = tmp_path / "ci.yaml"
    with slack_simulator() as (slack, _):
        config["approvals"]["slack"] = {
            "channel": "C0APPROVALS",
            "api_base_url": slack.base_url,
            "bot_token_env": SLACK_TOKEN_ENV,
        }
        ci_config.write_text(yaml.safe_dump(config))
        argv = [sys.executable, "-m", "holdgate.ledger.cli", "run-end", "run-end-1"]
        result = run(
            [*argv, "--config", str(ci_config)], _env(**{SLACK_TOKEN_ENV: slack.bot_token})
        )
        out = ok(result)
        assert out.splitlines()[0] == "run run-end-1: left behind 1 of the 2 objects it created:"
        assert "secrets/end-left -n sandbox" in out and "end-gone" not in out
        assert "reap them: holdgate reap --run run-end-1 --yes" in out
        [message] = slack.messages("C0APPROVALS")
        assert "run run-end-1 left behind 1 objects" in message.text
        assert "secrets/end-left -n sandbox" in json.dumps(message.blocks)
    # Slack is down now: the step still passes, with a warning.
    result = run([*argv, "--config", str(ci_config)], _env(**{SLACK_TOKEN_ENV: "xoxb-x"}))
    assert result.returncode == 0 and "secrets/end-left -n sandbox" in result.stdout
    assert "warning: the report was not posted to Slack" in result.stderr
    report = json.loads(ok(run([*argv, "--config", config_of(gateway), "--json"])))
    assert {e["name"]: e["state"] for e in report} == {"end-left": "exists", "end-gone": "deleted"}
    ok(kubectl(kc, "delete", "secret", "end-left", "-n", "sandbox"))


def test_reaper_loop_deletes_expired_objects(
    gateway: GatewayProcess, simulator: KubeSimulator, tmp_path: Path
) -> None:
    kc = agent_kubeconfig(gateway, tmp_path / "kc", "run-ttl")
    started = time.monotonic()
    ok(kubectl(kc, "create", "configmap", "ttl-cm", "-n", "sandbox", "--from-literal=a=b"))
    gateway.wait_for_output(
        r"reaper: expired configmaps/ttl-cm -n sandbox \(run run-ttl\): deleted", timeout=15
    )
    assert time.monotonic() - started >= 1.0
    assert kubectl(kc, "get", "configmap", "ttl-cm", "-n", "sandbox").returncode != 0
    gateway.wait_for_output(r"allow DELETE cluster delete configmaps ttl-cm -n sandbox")
    [entry] = resources(gateway, "--run", "run-ttl", "--all", "--no-check")
    assert entry["deleted_by"] == "holdgate-reaper" and entry["expired"]
