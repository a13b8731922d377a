"""Slack approvals end to end: the real gateway subprocess, real kubectl, the Kubernetes
simulator upstream, and the Slack simulator (Socket Mode) on its own event loop in a thread."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    KUBECTL,
    GatewayProcess,
    Page,
    kube_target,
    page_address,
    start_gateway,
    write_agent_kubeconfig,
)
from tests.sim.slack_sim import Ephemeral, Message, SlackSimulator

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

# Distinctive values, so that finding them anywhere they must not be is meaningful.
BOT_TOKEN = "xoxb-e2e-" + secrets.token_hex(12)
APP_TOKEN = "xapp-e2e-" + secrets.token_hex(12)
AGENT_TOKEN = "agent-e2e-" + secrets.token_hex(12)
SECRET_VALUE = "hunter2-" + secrets.token_hex(8)
BOT_ENV, APP_ENV = "HOLDGATE_E2E_SLACK_BOT", "HOLDGATE_E2E_SLACK_APP"
SLACK_ENV = {BOT_ENV: BOT_TOKEN, APP_ENV: APP_TOKEN}

APPROVALS, ESCALATE = "C0APPROVALS", "C0ESCALATE"
USERS = {
    "UALICE": "Alice Liddell",
    "UDAVE": "Dave Oncall",
    "UMALLORY": "Mallory Stranger",
    "UOLIVIA": "Olivia Owner",
}
GROUPS = {"SONCALL": ["UDAVE"]}
REVIEWERS = '["slack:UALICE", "slack-group:SONCALL", "local:admin"]'
SECRETS_PATH = "/api/v1/namespaces/{}/secrets"

RULES = f"""
rules:
  - id: reads
    action: allow
    verbs: [get, list, watch]
    resources: ["*"]
    apiGroups: ["*"]
  - id: discovery
    action: allow
    verbs: [get]
    nonResourceURLs: [/api, /api/*, /apis, /apis/*, /version, /openapi/*]
  - id: slack-secrets
    description: Secrets need a human
    action: approve
    resources: [secrets]
    verbs: [create]
    namespaces: [sandbox]
    reviewers: {REVIEWERS}
    timeout: 2m
  - id: slack-secrets-expiring
    action: approve
    resources: [secrets]
    verbs: [create]
    namespaces: [slack-expiry]
    reviewers: {REVIEWERS}
    timeout: 2s
  - id: slack-secrets-escalating
    action: approve
    resources: [secrets]
    verbs: [create]
    namespaces: [default]
    reviewers: {REVIEWERS}
    timeout: 1m
    escalate_after: 1s
"""


# --- the Slack simulator on its own loop ---------------------------------------------------


class SlackThread:
    """The Slack simulator running on an event loop in a background thread; sync tests drive it
    by running its coroutines (and reading its state) on that loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="slack-sim", daemon=True)
        self.thread.start()

        async def start() -> SlackSimulator:
            sim = SlackSimulator(
                bot_token=BOT_TOKEN,
                app_token=APP_TOKEN,
                channels=(APPROVALS, ESCALATE),
                users=USERS,
                groups=GROUPS,
            )
            return await sim.start()

        self.sim = self.run(start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        """Run a coroutine on the simulator's loop and wait (bounded) for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def read(self, fn: Callable[[], T]) -> T:
        """Evaluate `fn` on the simulator's loop (a consistent snapshot of its state)."""

        async def call() -> T:
            return fn()

        return self.run(call())

    def wait(self, predicate: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
        """Wait until `predicate()` is truthy, re-checked on every change the simulator sees."""
        return self.run(self.sim.wait_for(predicate, timeout, what), timeout + 5)

    def close(self) -> None:
        async def shutdown() -> None:
            await self.sim.stop()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            self.run(shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()

    # --- what the tests look at ----------------------------------------------------------

    def held(self, name: str, channel: str = APPROVALS) -> tuple[str, Message]:
        """The hold id and the Slack message of the held request for object `name`."""

        def find() -> Message | None:
            return next(
                (
                    m
                    for m in self.sim.messages(channel)
                    if f"`{name}`" in m.rendered and buttons(m.versions[0][1])
                ),
                None,
            )

        message = self.wait(find, f"a message in {channel} for {name}")
        return self.read(lambda: buttons(message.versions[0][1])[0]["value"]), message

    def ephemerals(self, user: str, after: int, count: int) -> list[Ephemeral]:
        """Wait for `count` new ephemerals shown to `user` (after the first `after`)."""

        def new() -> list[Ephemeral] | None:
            shown = self.sim.ephemerals_for(user)[after:]
            return shown if len(shown) >= count else None

        return self.wait(new, f"{count} ephemeral(s) for {user}")

    def settled(self, message: Message, state: str, replies: int = 1) -> str:
        """Wait until the message shows a final state without buttons and has `replies`."""

        def done() -> str | None:
            if message.buttons or f"{state}:" not in header(message):
                return None
            if len(self.sim.replies(message)) < replies:
                return None
            return message.rendered

        return self.wait(done, f"the message {message.ts} to show {state!r}")


def buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        element
        for block in blocks
        if block.get("type") == "actions"
        for element in block.get("elements", [])
        if element.get("type") == "button"
    ]


def header(message: Message) -> str:
    return next((b["text"]["text"] for b in message.blocks if b["type"] == "header"), "")


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackThread]:
    rig = SlackThread()
    yield rig
    rig.close()


# --- the gateway ---------------------------------------------------------------------------


def gateway_config(simulator: KubeSimulator, api_base_url: str) -> dict[str, Any]:
    return {
        "targets": [kube_target(simulator)],
        "identity": {
            "agents": [
                {
                    "name": "ci-bot",
                    "owner": "slack:UOLIVIA",
                    "groups": ["agents"],
                    "token_sha256": hashlib.sha256(AGENT_TOKEN.encode()).hexdigest(),
                }
            ]
        },
        "approvals": {
            "page": {"listen_host": "127.0.0.1", "listen_port": 0},
            "slack": {
                "channel": APPROVALS,
                "escalation_channel": ESCALATE,
                "escalation_mention": "SONCALL",
                "mode": "socket",
                "api_base_url": api_base_url,
                "bot_token_env": BOT_ENV,
                "app_token_env": APP_ENV,
                "group_cache_seconds": 0,
            },
        },
    }


def assert_no_tokens(gateway: GatewayProcess) -> None:
    output = gateway.output()
    for name, value in (("bot", BOT_TOKEN), ("app", APP_TOKEN), ("agent", AGENT_TOKEN)):
        assert value not in output, f"the {name} token appears in the gateway output"


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator, slack: SlackThread
) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("slack-e2e")
    config = gateway_config(simulator, slack.sim.base_url)
    gw = start_gateway(home, config, {"r.yaml": RULES}, env=SLACK_ENV)
    try:
        gw.wait_for_output(r"slack: signed in as \S+ to holdgate sim \(socket mode\)")
        gw.wait_for_output(r"slack: Socket Mode connected")
        slack.wait(lambda: slack.sim.sockets, "the gateway's Socket Mode connection")
        yield gw
    finally:
        gw.stop()
    assert_no_tokens(gw)


@pytest.fixture
def page(gateway: GatewayProcess) -> Iterator[Page]:
    with Page(*page_address(gateway)) as p:
        yield p


def agent_kubeconfig(path: Path, gateway: GatewayProcess) -> Path:
    """kubectl as the agent ci-bot: its credentials in the kubeconfig's proxy-url."""
    return write_agent_kubeconfig(path, gateway, agent=("ci-bot", AGENT_TOKEN))


@pytest.fixture
def kubeconfig(tmp_path: Path, gateway: GatewayProcess) -> Path:
    return agent_kubeconfig(tmp_path / "agent.kubeconfig", gateway)


class Kubectl:
    """Background kubectl processes; whatever a failed test leaves running is killed."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, kubeconfig: Path, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")},
        )
        self.processes.append(process)
        return process

    def create_secret(self, kubeconfig: Path, name: str, namespace: str) -> subprocess.Popen[str]:
        return self.start(
            kubeconfig,
            "create",
            "secret",
            "generic",
            name,
            "-n",
            namespace,
            f"--from-literal=password={SECRET_VALUE}",
        )

    @staticmethod
    def finish(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def agent() -> Iterator[Kubectl]:
    runner = Kubectl()
    yield runner
    runner.kill_all()


def posts(sim: KubeSimulator, namespace: str) -> int:
    path = SECRETS_PATH.format(namespace)
    return sum(1 for r in sim.requests if r.method == "POST" and r.path == path)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def assert_secret_never_sent_to_slack(slack: SlackThread) -> None:
    encoded = base64.b64encode(SECRET_VALUE.encode()).decode()
    calls = slack.read(lambda: json.dumps([c.params for c in slack.sim.calls], default=str))
    assert SECRET_VALUE not in calls and encoded not in calls


# --- the tests -----------------------------------------------------------------------------


def test_slack_approve_lets_kubectl_finish(
    gateway: GatewayProcess,
    kubeconfig: Path,
    slack: SlackThread,
    simulator: KubeSimulator,
    agent: Kubectl,
) -> None:
    simulator.clear_requests()
    name = unique("e2e-approve")
    started = time.time()
    process = agent.create_secret(kubeconfig, name, "sandbox")
    hold_id, message = slack.held(name)

    shown = slack.read(lambda: message.rendered)
    assert f":hourglass_flowing_sand: Approval needed: create secrets sandbox/{name}" in shown
    for label, value in [
        ("Agent", "`ci-bot`"),
        ("Owner", "<@UOLIVIA>"),
        ("Target", "cluster"),
        ("Rule", "`slack-secrets`: Secrets need a human"),
        ("Verb", "`create`"),
        ("Resource", "`secrets`"),
        ("Namespace", "`sandbox`"),
        ("Name", f"`{name}`"),
    ]:
        assert f"*{label}*\n{value}" in shown, label
    assert "*Body* (masked excerpt)" in shown
    expires = re.search(r"\*Expires\*\n<!date\^(\d+)\^", shown)
    assert expires and started + 110 <= int(expires.group(1)) <= time.time() + 121
    assert f"Hold `{hold_id}`" in shown
    assert "<@UALICE>" in shown and "<!subteam^SONCALL>" in shown and "local:admin" in shown
    assert [(b["action_id"], b["value"]) for b in message.buttons] == [
        ("holdgate_approve", hold_id),
        ("holdgate_deny", hold_id),
    ]
    assert_secret_never_sent_to_slack(slack)
    assert process.poll() is None and posts(simulator, "sandbox") == 0

    slack.run(slack.sim.click(hold_id, "UALICE"))
    code, out, err = Kubectl.finish(process)
    assert code == 0, err
    assert f"secret/{name} created" in out
    assert posts(simulator, "sandbox") == 1

    final = slack.settled(message, "Approved")
    assert header(message) == f":white_check_mark: Approved: create secrets sandbox/{name}"
    assert "*Approved*: approved by Alice Liddell (slack:UALICE)" in final
    # Updated in place: one message for the hold, edited with chat.update, never reposted.
    assert (
        slack.read(
            lambda: sum(1 for m in slack.sim.messages(APPROVALS) if f"`{name}`" in m.rendered)
        )
        == 1
    )
    assert slack.read(
        lambda: any(c.params.get("ts") == message.ts for c in slack.sim.calls_to("chat.update"))
    )
    [reply] = slack.read(lambda: slack.sim.replies(message))
    assert reply.text == (
        ":white_check_mark: Alice Liddell (slack:UALICE) approved (1 of 1): the request proceeds."
    )
    gateway.wait_for_output(rf"hold {hold_id} approved: .*approved by Alice Liddell")
    assert_secret_never_sent_to_slack(slack)
    assert_no_tokens(gateway)


def test_slack_deny_with_a_reason_reaches_kubectl(
    gateway: GatewayProcess,
    kubeconfig: Path,
    slack: SlackThread,
    simulator: KubeSimulator,
    agent: Kubectl,
) -> None:
    simulator.clear_requests()
    name = unique("e2e-deny")
    process = agent.create_secret(kubeconfig, name, "sandbox")
    hold_id, message = slack.held(name)

    slack.run(slack.sim.click(hold_id, "UALICE", "deny"))
    slack.wait(lambda: slack.sim.open_views, "the deny modal")
    assert process.poll() is None  # a click alone decides nothing: the reason is required
    slack.run(slack.sim.submit_deny_reason("UALICE", "no new secrets during the freeze"))

    code, _, err = Kubectl.finish(process)
    assert code != 0
    assert "denied by Alice Liddell (slack:UALICE): no new secrets during the freeze" in err
    assert posts(simulator, "sandbox") == 0

    final = slack.settled(message, "Denied")
    assert "no new secrets during the freeze" in final
    [reply] = slack.read(lambda: slack.sim.replies(message))
    assert "denied: no new secrets during the freeze" in reply.text
    assert "The request is refused." in reply.text
    assert_no_tokens(gateway)


def test_page_decision_shows_in_slack_and_a_late_click_is_too_late(
    gateway: GatewayProcess,
    kubeconfig: Path,
    slack: SlackThread,
    simulator: KubeSimulator,
    page: Page,
    agent: Kubectl,
) -> None:
    simulator.clear_requests()
    name = unique("e2e-page")
    process = agent.create_secret(kubeconfig, name, "sandbox")
    hold_id, message = slack.held(name)
    assert hold_id in {h["id"] for h in page.pending()}

    r = page.decide(hold_id, True)
    assert r.status_code == 200 and r.json()["outcome"] == "decided"
    code, out, err = Kubectl.finish(process)
    assert code == 0, err
    assert posts(simulator, "sandbox") == 1

    final = slack.settled(message, "Approved")
    assert "approved by admin (local:admin)" in final
    [reply] = slack.read(lambda: slack.sim.replies(message))
    assert "admin (local:admin) approved" in reply.text
    versions = slack.read(lambda: len(message.versions))
    modals = slack.read(lambda: len(slack.sim.views))
    seen = slack.read(lambda: len(slack.sim.ephemerals_for("UALICE")))

    # Alice still sees the buttons on a stale screen: both are too late now.
    slack.run(slack.sim.click(hold_id, "UALICE"))
    slack.run(slack.sim.click(hold_id, "UALICE", "deny"))
    notes = slack.ephemerals("UALICE", after=seen, count=2)
    assert len(notes) == 2  # one per click
    for note in notes:
        assert note.channel == APPROVALS
        assert "Too late" in note.text and "already approved" in note.text, note.text
    assert slack.read(lambda: len(slack.sim.views)) == modals  # no deny modal
    assert slack.read(lambda: len(message.versions)) == versions
    assert len(slack.read(lambda: slack.sim.replies(message))) == 1
    assert posts(simulator, "sandbox") == 1
    assert_no_tokens(gateway)


def test_unauthorized_clicker_changes_nothing_and_a_group_member_approves(
    gateway: GatewayProcess,
    kubeconfig: Path,
    slack: SlackThread,
    simulator: KubeSimulator,
    page: Page,
    agent: Kubectl,
) -> None:
    simulator.clear_requests()
    name = unique("e2e-group")
    process = agent.create_secret(kubeconfig, name, "sandbox")
    hold_id, message = slack.held(name)
    modals = slack.read(lambda: len(slack.sim.views))
    seen = slack.read(lambda: len(slack.sim.ephemerals_for("UMALLORY")))

    slack.run(slack.sim.click(hold_id, "UMALLORY"))
    slack.run(slack.sim.click(hold_id, "UMALLORY", "deny"))
    notes = slack.ephemerals("UMALLORY", after=seen, count=2)
    assert len(notes) == 2  # one per click
    for note in notes:
        assert note.text == (
            "You (Mallory Stranger (slack:UMALLORY)) are not one of the reviewers of "
            f"create secrets sandbox/{name}. Nothing was changed."
        )
    # Nothing changed: no modal, the message untouched, the hold pending, kubectl waiting.
    assert slack.read(lambda: len(slack.sim.views)) == modals
    assert slack.read(lambda: (len(message.versions), slack.sim.replies(message))) == (1, [])
    assert slack.read(lambda: bool(message.buttons))
    assert hold_id in {h["id"] for h in page.pending()}
    assert process.poll() is None and posts(simulator, "sandbox") == 0

    slack.run(slack.sim.click(hold_id, "UDAVE"))  # a member of the user group SONCALL
    code, out, err = Kubectl.finish(process)
    assert code == 0, err
    assert f"secret/{name} created" in out
    assert posts(simulator, "sandbox") == 1
    final = slack.settled(message, "Approved")
    assert "approved by Dave Oncall (slack:UDAVE)" in final
    lookups = slack.read(lambda: slack.sim.calls_to("usergroups.users.list"))
    assert lookups and {c.params["usergroup"] for c in lookups} == {"SONCALL"}
    assert_no_tokens(gateway)


def test_expiry_answers_kubectl_and_shows_in_slack(
    gateway: GatewayProcess,
    kubeconfig: Path,
    slack: SlackThread,
    simulator: KubeSimulator,
    agent: Kubectl,
) -> None:
    simulator.clear_requests()
    name = unique("e2e-expiry")
    process = agent.create_secret(kubeconfig, name, "slack-expiry")
    hold_id, message = slack.held(name)

    code, _, err = Kubectl.finish(process)
    assert code != 0
    assert "approval expired after 2s without a decision" in err, err
    assert posts(simulator, "slack-expiry") == 0
    final = slack.settled(message, "Expired")
    assert header(message) == f":hourglass: Expired: create secrets slack-expiry/{name}"
    assert "approval expired after 2s without a decision" in final
    [reply] = slack.read(lambda: slack.sim.replies(message))
    assert reply.text == ":hourglass: Expired: approval expired after 2s without a decision"
    gateway.wait_for_output(rf"hold {hold_id} expired: ")
    assert_no_tokens(gateway)


def test_escalation_posts_to_the_escalation_channel(
    gateway: GatewayProcess,
    kubeconfig: Path,
    slack: SlackThread,
    simulator: KubeSimulator,
    agent: Kubectl,
) -> None:
    simulator.clear_requests()
    name = unique("e2e-escalate")
    process = agent.create_secret(kubeconfig, name, "default")
    hold_id, message = slack.held(name)
    posted_at = time.monotonic()

    copy_id, copy = slack.held(name, channel=ESCALATE)
    assert time.monotonic() - posted_at >= 0.5  # escalate_after: 1s from the hold's creation
    assert copy_id == hold_id
    assert slack.read(lambda: copy.versions[0][0]).startswith(
        "<!subteam^SONCALL> Escalated: approval needed"
    )
    assert ":rotating_light: Escalated: approval needed" in slack.read(lambda: copy.rendered)
    slack.wait(
        lambda: "Escalated" in header(message) and slack.sim.replies(message),
        "the escalation note in the main thread",
    )
    [note] = slack.read(lambda: slack.sim.replies(message))
    assert note.text.startswith(":rotating_light: Escalated: no decision after 1 second")
    gateway.wait_for_output(rf"hold {hold_id} escalated after 1s without a decision")
    assert process.poll() is None

    slack.run(slack.sim.click(hold_id, "UALICE", channel=ESCALATE))
    code, out, err = Kubectl.finish(process)
    assert code == 0, err
    assert posts(simulator, "default") == 1
    slack.settled(message, "Approved", replies=2)
    slack.settled(copy, "Approved", replies=0)
    assert slack.read(lambda: slack.sim.replies(copy)) == []  # one thread: the main message's
    assert_no_tokens(gateway)


def test_slack_down_at_start_holds_still_expire_into_denial(
    tmp_path: Path, simulator: KubeSimulator, agent: Kubectl
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config = gateway_config(simulator, f"http://127.0.0.1:{closed}/api/")
    gw = start_gateway(tmp_path / "gw", config, {"r.yaml": RULES}, env=SLACK_ENV)
    try:
        gw.wait_for_output(r"slack: auth\.test failed: ClientConnectorError")
        gw.wait_for_output(
            r"slack: cannot reach Slack or the bot token is wrong; "
            r"holds will expire unless decided elsewhere"
        )
        simulator.clear_requests()
        kubeconfig = agent_kubeconfig(tmp_path / "agent.kubeconfig", gw)
        name = unique("e2e-down")
        code, _, err = Kubectl.finish(agent.create_secret(kubeconfig, name, "slack-expiry"))
        assert code != 0
        assert "approval expired after 2s without a decision" in err, err
        assert posts(simulator, "slack-expiry") == 0
        m = gw.wait_for_output(r"slack: chat\.postMessage failed for hold (\w+): ClientConnector")
        hold_id = m.group(1)
        gw.wait_for_output(
            rf"hold {hold_id} expired: create secrets {name} -n slack-expiry: approval expired"
        )
        gw.wait_for_output(rf"slack: hold {hold_id} has no Slack message to update")
        with Page(*page_address(gw)) as page:
            record = page.client.get(
                f"{page.url}/api/holds/{hold_id}", headers={"Authorization": f"Bearer {page.admin}"}
            ).json()
        assert record["state"] == "expired" and record["reviews"] == []
        assert not re.search(r"hold \w+ approved", gw.output())
    finally:
        gw.stop()
    assert_no_tokens(gw)


def _readiness(gateway: GatewayProcess, query: str = "") -> httpx.Response:
    gateway.wait_for_output(r"holdgate operations listening at (\S+)")
    url = (gateway.home / "var" / "operations-url").read_text().strip()
    return httpx.get(f"{url}readyz{query}", timeout=10)


def test_a_slack_only_gateway_starts_no_page_and_is_ready_once_connected(
    tmp_path: Path, simulator: KubeSimulator, slack: SlackThread
) -> None:
    config = gateway_config(simulator, slack.sim.base_url)
    del config["approvals"]["page"]
    gw = start_gateway(tmp_path / "connected", config, {"r.yaml": RULES}, env=SLACK_ENV)
    try:
        gw.wait_for_output(r"slack: Socket Mode connected")
        ready = _readiness(gw)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["approvals"] == "ok"
        assert "approvals page listening" not in gw.output()
        assert not (tmp_path / "connected" / "var" / "approvals-url").exists()
    finally:
        gw.stop()
    # Slack unreachable: the gateway runs (allowed traffic flows) but says it is not ready.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}/api/"
    offline = gateway_config(simulator, nowhere)
    del offline["approvals"]["page"]
    gw = start_gateway(tmp_path / "unreachable", offline, {"r.yaml": RULES}, env=SLACK_ENV)
    try:
        not_ready = _readiness(gw)
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["approvals"] == "slack: Socket Mode not connected"
        assert not_ready.json()["checks"]["policy"] == "ok"
        # A probe leaves out what every replica shares: Slack down takes no replica out.
        probe = _readiness(gw, "?exclude=approvals&exclude=state_store")
        assert probe.status_code == 200
        assert probe.json()["checks"]["approvals"] == (
            "slack: Socket Mode not connected (excluded)"
        )
    finally:
        gw.stop()
