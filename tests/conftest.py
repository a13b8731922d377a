"""Shared fixtures: the gateway subprocess, real TLS, the Kubernetes simulator, archive stores."""

from __future__ import annotations

import base64
import os
import queue
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from holdgate.archive.store import ArchiveStore
from holdgate.config.archive_settings import ArchiveSettings
from holdgate.config.gateway_config import Config, load_config
from holdgate.policy.rules import LoadedPolicy, load_policy
from holdgate.request.flow_filter import compile_filter
from holdgate.sandbox.kube_sim import KubeSimulator, running_simulator

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KUBECTL = str(BIN / "kubectl") if (BIN / "kubectl").exists() else "kubectl"
SIM_TOKEN = "sim-token-7f3a"
LISTENING = re.compile(r"proxy listening at (\*|\[?[0-9a-f.:]+?\]?):(\d+)")
START_TIMEOUT = 30.0


@dataclass
class GatewayProcess:
    """A running `holdgate run` subprocess and everything it printed."""

    process: subprocess.Popen[str]
    port: int
    home: Path
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.home / "certs" / "mitmproxy-ca-cert.pem"

    def output(self) -> str:
        self.drain()
        return "".join(self.lines)

    def printed(self) -> int:
        """How many lines the gateway has printed so far (for `wait_for_output(after=...)`)."""
        self.drain()
        return len(self.lines)

    def drain(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def wait_for_output(self, pattern: str, timeout: float = 15.0, after: int = 0) -> re.Match[str]:
        """Block until a line matching `pattern` has been printed (bounded); `after`: only
        lines after the first `after` count (see `printed`)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = after
        while True:
            self.drain()
            for line in self.lines[checked:]:
                if m := regex.search(line):
                    return m
            checked = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"gateway never printed {pattern!r}; output:\n{self.output()}")
            try:
                received = self._queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if received is None:
                raise AssertionError(f"gateway exited; output:\n{self.output()}")
            self.lines.append(received)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _pump(stream: object, sink: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.put(line)
    sink.put(None)


def start_gateway(
    home: Path,
    config: dict[str, object],
    rules: dict[str, str],
    env: dict[str, str] | None = None,
    verbose: bool = False,
    mitmproxy_args: Sequence[str] = (),
    workers: int = 1,
) -> GatewayProcess:
    """Write a config and rule files under `home` and start the gateway on a free port
    (`env`: extra environment variables for the gateway process; `verbose`: debug log level,
    which includes a line per allowed request; `mitmproxy_args`: after `holdgate run --`;
    `workers`: `holdgate run --workers N`)."""
    rules_dir = home / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    for name, text in rules.items():
        (rules_dir / name).write_text(text)
    config = {
        "gateway": {"name": "test-gw", "certs": str(home / "certs"), "state": str(home / "var")},
        "rules": [str(rules_dir)],
        **config,
    }
    config_path = home / "holdgate.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            str(BIN / "holdgate"),
            "run",
            "--config",
            str(config_path),
            "--listen-port",
            "0",
            *(["--workers", str(workers)] if workers > 1 else []),
            "--",
            "--set",
            "holdgate_reload_interval=0.2",
            *(["--set", "termlog_verbosity=debug"] if verbose else []),
            *mitmproxy_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=home,
    )
    gw = GatewayProcess(process=process, port=0, home=home)
    threading.Thread(target=_pump, args=(process.stdout, gw._queue), daemon=True).start()
    try:
        m = gw.wait_for_output(LISTENING.pattern, timeout=START_TIMEOUT)
    except AssertionError:
        gw.stop()
        raise
    gw.port = int(m.group(2))
    return gw


@pytest.fixture(scope="session")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeSimulator]:
    """One Kubernetes API simulator for the session; tests clear its record first."""
    with running_simulator(token=SIM_TOKEN, cert_dir=tmp_path_factory.mktemp("sim")) as sim:
        yield sim


def kube_target(sim: KubeSimulator, name: str = "cluster", **extra: object) -> dict[str, object]:
    """A kubernetes target routed to the simulator."""
    return {
        "name": name,
        "kind": "kubernetes",
        "hosts": ["kubernetes.default.svc", "cluster.test"],
        "upstream": sim.url,
        "ca": str(sim.ca_path),
        **extra,
    }


def write_home_config(home: Path, rules: str, **sections: object) -> Path:
    """A configuration under `home` (state, certs and one rule file there) with these sections;
    returns its path (for commands that take --config)."""
    (home / "rules").mkdir(parents=True, exist_ok=True)
    (home / "rules" / "r.yaml").write_text(rules)
    config = {
        "gateway": {"state": str(home / "var"), "certs": str(home / "certs")},
        "rules": [str(home / "rules")],
        **sections,
    }
    path = home / "holdgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def load_policy_home(home: Path, config: str, rules: str) -> tuple[Config, LoadedPolicy]:
    """A configuration (YAML text naming `rules: [rules]`) and one rule file under `home`,
    loaded as `holdgate check` loads them."""
    (home / "rules").mkdir(exist_ok=True)
    (home / "rules" / "rules.yaml").write_text(rules)
    (home / "holdgate.yaml").write_text(config)
    loaded_config = load_config(home / "holdgate.yaml")
    return loaded_config, load_policy(loaded_config.rule_files(), loaded_config, compile_filter)


def write_agent_kubeconfig(
    path: Path,
    gateway: GatewayProcess,
    token: str = SIM_TOKEN,
    agent: tuple[str, str] | None = None,
) -> Path:
    """A kubeconfig for kubectl: the virtual in-cluster host, through the gateway via proxy-url;
    `agent`: (name, or name+RUN_ID, and token) authenticating the agent in that proxy-url."""
    ca = base64.b64encode(gateway.ca_path.read_bytes()).decode()
    proxy = gateway.proxy_url
    if agent is not None:
        proxy = f"http://{agent[0]}:{agent[1]}@127.0.0.1:{gateway.port}"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "gw",
                        "cluster": {
                            "server": "https://kubernetes.default.svc",
                            "certificate-authority-data": ca,
                            "proxy-url": proxy,
                        },
                    }
                ],
                "users": [{"name": "agent", "user": {"token": token}}],
                "contexts": [{"name": "gw", "context": {"cluster": "gw", "user": "agent"}}],
                "current-context": "gw",
            }
        )
    )
    return path


def kubectl(
    kubeconfig: Path, *args: str, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl binary."""
    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        env={k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")},
    )


def trust(gateway: GatewayProcess) -> ssl.SSLContext:
    """A TLS context that trusts the gateway's CA (what agents configure)."""
    return ssl.create_default_context(cafile=str(gateway.ca_path))


# The approvals page on any free loopback port (an `approvals:` section).
LOCAL_PAGE = {"page": {"listen_host": "127.0.0.1", "listen_port": 0}}
PAGE_LISTENING = r"approvals page listening at (\S+) \(admin token in (\S+)\)"


def page_address(gateway: GatewayProcess) -> tuple[str, str]:
    """The approvals page's URL and admin token, once the gateway has printed where they are."""
    m = gateway.wait_for_output(PAGE_LISTENING)
    return m.group(1), Path(m.group(2)).read_text().strip()


class Page:
    """The approvals API as a reviewer's client uses it."""

    def __init__(self, url: str, admin_token: str) -> None:
        self.url = url.rstrip("/")
        self.admin = admin_token
        self.client = httpx.Client(timeout=20, trust_env=False)

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *_: object) -> None:
        self.client.close()

    def pending(self, token: str | None = None) -> list[dict]:
        r = self.client.get(f"{self.url}/api/holds", headers=self._auth(token))
        r.raise_for_status()
        return r.json()["pending"]

    def wait_pending(self, rule: str, count: int = 1) -> list[dict]:
        """Wait (event-driven, bounded) until `count` holds of a rule are pending."""
        with self.client.stream(
            "GET", f"{self.url}/api/events", headers=self._auth(None), timeout=30
        ) as events:
            holds = [h for h in self.pending() if h["rule"] == rule]
            if len(holds) >= count:
                return holds
            for line in events.iter_lines():
                if line.startswith("data:"):
                    holds = [h for h in self.pending() if h["rule"] == rule]
                    if len(holds) >= count:
                        return holds
        raise AssertionError(f"no pending hold of {rule}")

    def decide(
        self, hold_id: str, approve: bool, token: str | None = None, reason: str = ""
    ) -> httpx.Response:
        verb = "approve" if approve else "deny"
        return self.client.post(
            f"{self.url}/api/holds/{hold_id}/{verb}",
            json={"reason": reason},
            headers=self._auth(token),
        )

    def _auth(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin}"}


@pytest.fixture
def store_factory() -> Iterator[Callable[..., ArchiveStore]]:
    """Start stores; every one is stopped at the end."""
    stores: list[ArchiveStore] = []

    def start(settings: ArchiveSettings, gateway: str = "gw-test", **kwargs: Any) -> ArchiveStore:
        store = ArchiveStore(settings, gateway, **kwargs)
        store.start()
        stores.append(store)
        return store

    yield start
    for store in stores:
        store.stop(timeout=5)
