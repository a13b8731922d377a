"""Agents prove who they are; the gateway injects the upstream credential they never hold."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from holdgate.approvals.page import token_digest
from holdgate.identity.agents import (
    REAPER_AGENT,
    AgentDirectory,
    AuthError,
    directory_from_config,
)
from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
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

CI_TOKEN = "ci-token-canary-5b1e"
INTERN_TOKEN = "intern-token-canary-9d2f"
ISSUER = "https://ci.example.test"
AUDIENCE = "holdgate"
K8S = "https://kubernetes.default.svc"

RULES = """
rules:
  - id: discovery
    action: allow
    verbs: [get]
    nonResourceURLs: [/api, /api/*, /apis, /apis/*, /version, /openapi/*]
  - id: ci-reads
    action: allow
    agents: ["ci-*", "repo:*"]
    verbs: [get, list, watch]
    resources: ["*"]
  - id: deployers-write-configmaps
    action: allow
    groups: [deployers]
    verbs: [create, delete]
    resources: [configmaps]
    namespaces: [sandbox]
  - id: interns-never-secrets
    action: deny
    message: interns do not read secrets
    groups: [interns]
    resources: [secrets]
  - id: hold-secret-create
    action: approve
    resources: [secrets]
    verbs: [create]
    reviewers: [local:olga, local:admin]
"""


def _key(kid: str) -> tuple[rsa.RSAPrivateKey, dict]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return key, {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[rsa.RSAPrivateKey, dict]]:
    return {"k1": _key("k1"), "k2": _key("k2"), "rogue": _key("rogue")}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: KubeSimulator, keys
) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("identity")
    (home / "jwks.json").write_text(json.dumps({"keys": [keys["k1"][1]]}))
    token_file = home / "upstream-token"
    token_file.write_text(SIM_TOKEN)
    (home / "intern.sha256").write_text(hashlib.sha256(INTERN_TOKEN.encode()).hexdigest())
    config = {
        "targets": [kube_target(simulator, credential={"bearer_token_file": str(token_file)})],
        "identity": {
            "agents": [
                {
                    "name": "ci-bot",
                    "owner": "local:olga",
                    "groups": ["deployers"],
                    "token_sha256": hashlib.sha256(CI_TOKEN.encode()).hexdigest(),
                },
                {
                    "name": "ci-intern",
                    "groups": ["interns"],
                    "token_sha256_file": str(home / "intern.sha256"),
                },
            ],
            "oidc": [
                {
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "jwks_file": str(home / "jwks.json"),
                    "agent_claim": "sub",
                    "groups_claim": "groups",
                    "run_id_claim": "run_id",
                    "owner": "local:olga",
                }
            ],
        },
        "approvals": {
            "page": {"listen_host": "127.0.0.1", "listen_port": 0},
            "local_reviewers": {"olga": {"token_sha256": token_digest("olga-token")}},
        },
    }
    gw = start_gateway(home, config, {"r.yaml": RULES}, verbose=True)
    yield gw
    gw.stop()


def proxy(gw: GatewayProcess, user: str | None, secret: str | None) -> str:
    return f"http://{user}:{secret}@127.0.0.1:{gw.port}" if user else gw.proxy_url


def agent(gw: GatewayProcess, user: str | None, secret: str | None) -> httpx.Client:
    # The agent's own (placeholder) token must never reach upstream.
    return httpx.Client(
        proxy=proxy(gw, user, secret),
        verify=trust(gw),
        timeout=30,
        headers={"Authorization": "Bearer agent-placeholder-canary"},
    )


def token(keys, kid: str = "k1", **claims: object) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "repo:acme/app",
        "iat": now,
        "exp": now + 300,
        "groups": ["deployers"],
        "run_id": "run-77",
        **claims,
    }
    return jwt.encode(body, keys[kid][0], algorithm="RS256", headers={"kid": keys[kid][1]["kid"]})


@pytest.mark.parametrize(
    ("user", "secret", "message"),
    [
        (None, None, "proxy authentication required"),
        ("ci-bot", "wrong", "invalid agent credentials"),
        ("nobody", CI_TOKEN, "invalid agent credentials"),
    ],
)
def test_missing_or_wrong_credentials_get_407_and_nothing_upstream(
    gateway: GatewayProcess, simulator: KubeSimulator, user, secret, message
) -> None:
    simulator.clear_requests()
    with agent(gateway, user, secret) as client, pytest.raises(httpx.ProxyError) as refused:
        client.get(f"{K8S}/api/v1/namespaces")
    assert "407" in str(refused.value)
    gateway.wait_for_output(rf"407 CONNECT kubernetes\.default\.svc: {message}")
    assert simulator.requests == []


def test_plain_http_proxy_request_without_credentials(gateway: GatewayProcess) -> None:
    with httpx.Client(proxy=gateway.proxy_url, timeout=30) as client:
        r = client.get("http://kubernetes.default.svc/version")
    assert r.status_code == 407 and "proxy authentication required" in r.text
    assert r.headers["proxy-authenticate"] == 'Basic realm="holdgate"'


def test_injected_token_reaches_upstream_and_the_agents_never_does(
    gateway: GatewayProcess, simulator: KubeSimulator
) -> None:
    simulator.clear_requests()
    with agent(gateway, "ci-bot+job-4711", CI_TOKEN) as client:
        assert client.get(f"{K8S}/api/v1/namespaces").status_code == 200
    seen = [r.headers.get("authorization") for r in simulator.requests]
    assert seen == [f"Bearer {SIM_TOKEN}"]
    assert not any("canary" in json.dumps(r.headers) for r in simulator.requests)
    assert not any(CI_TOKEN in json.dumps(r.headers) for r in simulator.requests)
    out = gateway.wait_for_output(r"allow GET cluster list namespaces: allowed by rule ci-reads")
    assert CI_TOKEN not in gateway.output() and "agent-placeholder-canary" not in gateway.output()
    assert out


def test_rotated_token_file_is_picked_up(gateway: GatewayProcess, simulator: KubeSimulator) -> None:
    token_file = gateway.home / "upstream-token"
    try:
        simulator.token = "rotated-" + SIM_TOKEN
        token_file.write_text("rotated-" + SIM_TOKEN)
        with agent(gateway, "ci-bot", CI_TOKEN) as client:
            assert client.get(f"{K8S}/api/v1/namespaces").status_code == 200
    finally:
        simulator.token = SIM_TOKEN
        token_file.write_text(SIM_TOKEN)


def test_rules_by_agent_and_group(gateway: GatewayProcess, simulator: KubeSimulator) -> None:
    with (
        agent(gateway, "ci-intern", INTERN_TOKEN) as intern,
        agent(gateway, "ci-bot", CI_TOKEN) as bot,
    ):
        assert intern.get(f"{K8S}/api/v1/namespaces").status_code == 200
        r = intern.get(f"{K8S}/api/v1/namespaces/sandbox/secrets")
        assert r.status_code == 403 and "interns do not read secrets" in r.json()["message"]
        assert bot.get(f"{K8S}/api/v1/namespaces/sandbox/secrets").status_code == 200
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "by-deployer"}}
        assert (
            intern.post(f"{K8S}/api/v1/namespaces/sandbox/configmaps", json=cm).status_code == 403
        )
        assert bot.post(f"{K8S}/api/v1/namespaces/sandbox/configmaps", json=cm).status_code == 201
        assert (
            bot.delete(f"{K8S}/api/v1/namespaces/sandbox/configmaps/by-deployer").status_code == 200
        )


def test_jwt_valid(gateway: GatewayProcess, keys) -> None:
    with agent(gateway, "oidc", token(keys)) as client:
        assert client.get(f"{K8S}/api/v1/namespaces").status_code == 200
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "by-jwt"}}
        assert (
            client.post(f"{K8S}/api/v1/namespaces/sandbox/configmaps", json=cm).status_code == 201
        )
        client.delete(f"{K8S}/api/v1/namespaces/sandbox/configmaps/by-jwt")


def _none_token() -> str:
    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return (
        b64({"alg": "none", "typ": "JWT"})
        + "."
        + b64({"iss": ISSUER, "aud": AUDIENCE, "sub": "repo:evil", "exp": now + 300})
        + "."
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda keys: token(keys, exp=int(time.time()) - 3600), "the token has expired"),
        (lambda keys: token(keys, aud="someone-else"), "not meant for this gateway"),
        (lambda keys: token(keys, iss="https://evil.test"), "issuer is not trusted"),
        (lambda keys: token(keys, kid="rogue"), "unknown key"),
        (lambda keys: _none_token(), "algorithm 'none' is not accepted"),
    ],
)
def test_jwt_refused(
    gateway: GatewayProcess, simulator: KubeSimulator, keys, make, message: str
) -> None:
    simulator.clear_requests()
    with agent(gateway, "oidc", make(keys)) as client, pytest.raises(httpx.ProxyError):
        client.get(f"{K8S}/api/v1/namespaces")
    gateway.wait_for_output(message)
    assert simulator.requests == []


def test_jwks_rotation_refreshes_on_unknown_kid(gateway: GatewayProcess, keys) -> None:
    jwks = gateway.home / "jwks.json"
    jwks.write_text(json.dumps({"keys": [keys["k1"][1], keys["k2"][1]]}))
    with agent(gateway, "oidc", token(keys, kid="k2")) as client:
        assert client.get(f"{K8S}/api/v1/namespaces").status_code == 200


def test_owner_cannot_approve_own_agents_request(gateway: GatewayProcess, tmp_path: Path) -> None:
    page_at = page_address(gateway)
    import threading

    result: dict[str, httpx.Response] = {}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "owned"},
        "stringData": {"k": "v"},
    }
    with (
        agent(gateway, "ci-bot+job-9", CI_TOKEN) as client,
        Page(*page_at) as page,
    ):
        thread = threading.Thread(
            target=lambda: result.update(
                r=client.post(f"{K8S}/api/v1/namespaces/sandbox/secrets", json=secret)
            )
        )
        thread.start()
        hold = page.wait_pending("hold-secret-create")[0]
        assert hold["request"]["identity"] == {
            "agent": "ci-bot",
            "owner": "local:olga",
            "groups": ["deployers"],
            "run_id": "job-9",
        }
        r = page.decide(hold["id"], True, token="olga-token")
        assert r.status_code == 403 and "owner cannot approve" in r.json()["message"]
        assert page.decide(hold["id"], True).status_code == 200
        thread.join(timeout=30)
    assert result["r"].status_code == 201
    with agent(gateway, "ci-bot", CI_TOKEN) as client:
        client.delete(f"{K8S}/api/v1/namespaces/sandbox/secrets/owned")


def test_kubectl_with_credentials_in_proxy_url(gateway: GatewayProcess, tmp_path: Path) -> None:
    kubeconfig = write_agent_kubeconfig(
        tmp_path / "kc", gateway, token="placeholder-not-a-credential", agent=("ci-bot", CI_TOKEN)
    )
    result = kubectl(kubeconfig, "get", "ns")
    assert result.returncode == 0, result.stderr
    no_creds = write_agent_kubeconfig(tmp_path / "kc2", gateway)
    result = kubectl(no_creds, "get", "ns")
    assert result.returncode != 0 and "Proxy Authentication Required" in result.stderr


def test_holdgate_kubeconfig_writes_a_placeholder_when_injecting(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    import subprocess

    import yaml

    from tests.conftest import BIN

    source = write_agent_kubeconfig(tmp_path / "admin", gateway, token=SIM_TOKEN)
    out = tmp_path / "agent"
    result = subprocess.run(
        [
            str(BIN / "holdgate"),
            "kubeconfig",
            "--config",
            str(gateway.home / "holdgate.yaml"),
            "--kubeconfig",
            str(source),
            "--out",
            str(out),
            "--proxy-url",
            proxy(gateway, "ci-bot", CI_TOKEN),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    written = yaml.safe_load(out.read_text())
    assert written["users"][0]["user"] == {"token": "injected-by-holdgate"}
    assert SIM_TOKEN not in out.read_text()
    assert kubectl(out, "get", "ns").returncode == 0


def _directory(tmp_path: Path, jwk: dict) -> AgentDirectory:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    section = {
        "agents": [{"name": "ci-bot", "token_sha256": hashlib.sha256(b"t").hexdigest()}],
        "oidc": [
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_file": "jwks.json",
                "groups_claim": "groups",
                "run_id_claim": "run_id",
            }
        ],
    }
    return directory_from_config(section, tmp_path)


@pytest.mark.parametrize(
    ("claims", "refusal"),
    [
        ({"sub": "ci-bot"}, "reserved agent"),
        ({"sub": REAPER_AGENT}, "reserved agent"),
        ({"sub": "repo:acme/app", "groups": [REAPER_AGENT]}, "reserved group"),
        ({"sub": "repo:acme/app\nallow GET forged"}, "not a valid agent name"),
        ({"sub": "repo:acme/app", "run_id": "run 1\r\nforged"}, "not a valid run id"),
    ],
)
def test_token_names_stay_in_their_own_namespace(
    tmp_path: Path, keys: dict, claims: dict, refusal: str
) -> None:
    key, jwk = keys["k1"]
    directory = _directory(tmp_path, jwk)
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, **claims},
        key,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    header = "Basic " + base64.b64encode(f"x:{token}".encode()).decode()
    with pytest.raises(AuthError, match=refusal):
        directory.authenticate(header)


def test_run_ids_in_proxy_user_names_are_label_values(tmp_path: Path, keys: dict) -> None:
    directory = _directory(tmp_path, keys["k1"][1])
    good = "Basic " + base64.b64encode(b"ci-bot+run-42:t").decode()
    assert directory.authenticate(good)[0].run_id == "run-42"
    for run in ("run 1", "a/b", "x" * 64, "-lead", "new\nline"):
        bad = "Basic " + base64.b64encode(f"ci-bot+{run}:t".encode()).decode()
        with pytest.raises(AuthError, match="invalid run id"):
            directory.authenticate(bad)
