"""The embedded default's sandbox: the Kubernetes simulator as the upstream of one target."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import yaml

from holdgate.config.gateway_ca import ca_cert_path
from holdgate.config.gateway_config import Upstream, parse_upstream
from holdgate.config.state_files import secret_file, write_private
from holdgate.kube.kubeconfig import INJECTED_PLACEHOLDER, simple_kubeconfig

if TYPE_CHECKING:
    from holdgate.config.gateway_config import Config
    from holdgate.sandbox.kube_sim import KubeSimulator

log = logging.getLogger("holdgate")


def sandbox_token(state_dir: Path) -> str:
    """The sandbox API's bearer token: only the gateway holds it (it injects it)."""
    return secret_file(state_dir / "sandbox" / "token")


def sandbox_agent_token(state_dir: Path) -> str:
    """The sandbox agent's proxy token; its SHA-256 is what the gateway checks."""
    token = secret_file(state_dir / "sandbox" / "agent-token")
    digest = state_dir / "sandbox" / "agent-token.sha256"
    digest.write_text(hashlib.sha256(token.encode()).hexdigest() + "\n")
    return token


def agent_kubeconfig_path(state_dir: Path) -> Path:
    """Where the ready agent kubeconfig for the sandbox is written."""
    return state_dir / "agent.kubeconfig"


class SandboxHost(Protocol):
    """What the sandbox needs of the gateway that runs it (the gateway hands itself over)."""

    @property
    def config(self) -> Config | None: ...

    def set_upstream(self, target: str, upstream: Upstream, ca: Path | None) -> None: ...

    def proxy_address(self) -> str: ...


class Sandbox:
    """Starts the simulator on the gateway's loop when the config names a sandbox target."""

    def __init__(self, gateway: SandboxHost) -> None:
        self.gateway = gateway
        self.simulator: KubeSimulator | None = None

    async def running(self) -> None:
        config = self.gateway.config
        if config is None or config.sandbox_target is None or self.simulator is not None:
            return
        from holdgate.sandbox.kube_sim import KubeSimulator

        target = config.target_named(config.sandbox_target)
        assert target is not None
        state = config.state_dir
        token = sandbox_token(state)
        self.simulator = KubeSimulator(token=token, cert_dir=state / "sandbox")
        await self.simulator.start()
        upstream: Upstream = parse_upstream(self.simulator.url)
        self.gateway.set_upstream(target.name, upstream, self.simulator.ca_path)
        address = self.gateway.proxy_address()
        host = target.hosts[0]
        ca = ca_cert_path(config.certs_dir)
        agent = next(iter(config.agents.agents), None)
        if agent is not None:
            # The agent holds proxy credentials and a placeholder; the gateway injects the real token.
            agent_token = sandbox_agent_token(state)
            proxy = f"http://{agent}:{agent_token}@{address}"
            shown_proxy = f"http://{agent}:$(cat {state / 'sandbox' / 'agent-token'})@{address}"
            user_token = INJECTED_PLACEHOLDER if target.credential else token
        else:
            proxy = shown_proxy = f"http://{address}"
            user_token = token
        kubeconfig = simple_kubeconfig(
            server=f"https://{host}", ca_pem=ca.read_bytes(), token=user_token
        )
        kubeconfig["clusters"][0]["cluster"]["proxy-url"] = proxy
        path = agent_kubeconfig_path(state)
        write_private(path, yaml.safe_dump(kubeconfig, sort_keys=False))
        log.info(
            "holdgate sandbox: Kubernetes API simulator at %s behind target %r (host %s)\n"
            "  kubectl:  export KUBECONFIG=%s; kubectl get ns\n"
            "  curl:     curl --proxy %s --cacert %s https://%s/api/v1/namespaces",
            self.simulator.url,
            target.name,
            host,
            path,
            shown_proxy,
            ca,
            host,
        )

    async def done(self) -> None:
        if self.simulator is not None:
            await self.simulator.stop()
            self.simulator = None
