"""Who is asking: agents authenticate to the gateway with proxy credentials or an OIDC JWT.

Pure apart from reading token and JWKS files (and fetching a JWKS URL, which callers run off
the event loop). Static agents: `Proxy-Authorization: Basic base64(NAME[+RUN]:TOKEN)`, the
token checked against a SHA-256 in the config or in a file. OIDC: the JWT is the proxy password,
verified against the issuer's JWKS, issuer, audience and expiry; claims map to the agent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

log = logging.getLogger("holdgate")

# Asymmetric algorithms only: never `none`, never HMAC with a public key as the secret.
DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA")
RUN_SEPARATOR = "+"
# The gateway's own agent (`holdgate reap`, the reaper loop): authenticated by the admin token.
REAPER_AGENT = "holdgate-reaper"
# Agent names and run ids become Kubernetes label values (holdgate.dev/agent, /run-id): the same
# charset and length, which also keeps them inert in logs, tables and Slack messages.
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# Names taken from tokens (GitHub's `repo:org/app:ref:...` subjects): printable ASCII, no
# spaces, bounded; never anything that could start a new log line or table cell.
TOKEN_NAME = re.compile(r"^[!-~]{1,253}$")


def valid_label_value(text: str) -> bool:
    """Whether `text` can be a Kubernetes label value (and so a static agent name or run id)."""
    return bool(LABEL_VALUE.match(text))


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking: an authenticated agent, its owner and groups, and the run it belongs to."""

    agent: str
    owner: str = ""
    groups: tuple[str, ...] = ()
    run_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form for flow metadata."""
        return {
            "agent": self.agent,
            "owner": self.owner,
            "groups": list(self.groups),
            "run_id": self.run_id,
        }


class AuthError(Exception):
    """Credentials are missing or wrong; the message is safe to show the agent."""


@dataclass(frozen=True, slots=True)
class StaticAgent:
    """An agent with a token whose SHA-256 is in the config or in a file."""

    name: str
    owner: str
    groups: tuple[str, ...]
    token_sha256: str | None
    token_sha256_file: Path | None

    def expected_digest(self, cache: dict[Path, tuple[tuple[int, int], str]]) -> str | None:
        """The token digest; a file is re-read whenever it changes (tokens rotate and are revoked).

        The file may hold `sha256sum`'s output (`HEX  -` or `HEX  FILE`): the first field counts.
        """
        if self.token_sha256 is not None:
            return self.token_sha256.lower()
        path = self.token_sha256_file
        assert path is not None
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
            cached = cache.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            fields = path.read_text().split()
        except OSError:
            log.error("agent %s: token file %s cannot be read", self.name, path)
            return None
        digest = fields[0].lower() if fields else ""
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            log.error("agent %s: token file %s holds no SHA-256 digest", self.name, path)
            return None
        cache[path] = (stamp, digest)
        return digest


# An unknown key id refreshes the key set at most this often (a rotation is seen within it).
JWKS_UNKNOWN_KID_INTERVAL = 30.0


@dataclass
class JwksSource:
    """An issuer's signing keys, from a file or a URL; cached, refreshed on an unknown key id."""

    file: Path | None = None
    url: str | None = None
    cache_seconds: float = 300.0
    _keys: dict[str, Any] = field(default_factory=dict)
    _loaded_at: float = 0.0
    _file_mtime: float = -1.0
    _unknown_refresh_at: float = -JWKS_UNKNOWN_KID_INTERVAL

    def key(self, kid: str | None) -> Any:
        """The signing key for a key id (refreshing if it is unknown, at most every
        JWKS_UNKNOWN_KID_INTERVAL seconds: made-up key ids cannot make the gateway fetch)."""
        if self._stale():
            self._refresh()
        found = self._lookup(kid)
        now = time.monotonic()
        if found is None and now - self._unknown_refresh_at >= JWKS_UNKNOWN_KID_INTERVAL:
            self._unknown_refresh_at = now
            self._refresh()
            found = self._lookup(kid)
        if found is None:
            raise AuthError("the token is signed by an unknown key")
        return found

    def _lookup(self, kid: str | None) -> Any:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _stale(self) -> bool:
        if self.file is not None:
            try:
                return self.file.stat().st_mtime != self._file_mtime
            except OSError:
                return True
        return time.monotonic() - self._loaded_at > self.cache_seconds

    def _refresh(self) -> None:
        try:
            if self.file is not None:
                self._file_mtime = self.file.stat().st_mtime
                data = json.loads(self.file.read_text())
            else:
                assert self.url is not None
                import urllib.request

                with urllib.request.urlopen(self.url, timeout=10) as response:  # noqa: S310
                    data = json.loads(response.read())
            keyset = jwt.PyJWKSet.from_dict(data)
        except (OSError, ValueError, jwt.PyJWKSetError, jwt.InvalidKeyError) as e:
            log.error("JWKS %s cannot be loaded: %s", self.file or self.url, e)
            return
        self._keys = {k.key_id or f"#{i}": k for i, k in enumerate(keyset.keys)}
        self._loaded_at = time.monotonic()


@dataclass(frozen=True, slots=True)
class OidcIssuer:
    """A trusted token issuer and how its claims map to an agent."""

    issuer: str
    audience: str
    jwks: JwksSource = field(compare=False)
    agent_claim: str = "sub"
    agent_prefix: str = ""
    groups_claim: str | None = None
    run_id_claim: str | None = None
    owner: str = ""
    groups: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: float = 30.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """What an agent presented: a user name (maybe with a run id) and a secret."""

    username: str
    secret: str


def parse_proxy_authorization(header: str) -> Credentials:
    """Decode `Basic base64(user:secret)`."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        raise AuthError(
            "use Proxy-Authorization: Basic (agent name and token, or a JWT as password)"
        )
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise AuthError("malformed Proxy-Authorization header") from e
    username, sep, secret = decoded.partition(":")
    if not sep or not secret:
        raise AuthError("malformed Proxy-Authorization header")
    return Credentials(username, secret)


def _looks_like_jwt(secret: str) -> bool:
    return secret.count(".") == 2 and secret.startswith("eyJ")


class AgentDirectory:
    """Every way an agent can prove who it is."""

    def __init__(self, agents: tuple[StaticAgent, ...], issuers: tuple[OidcIssuer, ...]) -> None:
        self.agents = {a.name: a for a in agents}
        self.issuers = issuers
        self.reaper_token_sha256: str | None = None
        self._file_digests: dict[Path, tuple[tuple[int, int], str]] = {}

    def with_reaper(self, admin_token: str) -> AgentDirectory:
        """The same directory, also accepting the gateway's own reaper agent."""
        self.reaper_token_sha256 = hashlib.sha256(admin_token.encode()).hexdigest()
        return self

    def identity_of(self, name: str, groups: tuple[str, ...] = ()) -> Identity:
        """The identity the gateway gives agent `name` (its declared owner and groups, plus
        `groups`): what rule tests and `holdgate explain` decide with."""
        agent = self.agents.get(name)
        if agent is None:
            return Identity(agent=name, groups=groups)
        merged = agent.groups + tuple(g for g in groups if g not in agent.groups)
        return Identity(agent=name, owner=agent.owner, groups=merged)

    @property
    def enabled(self) -> bool:
        """Whether any agent or issuer is declared (then credentials are required)."""
        return bool(self.agents or self.issuers)

    def authenticate(self, header: str | None) -> tuple[Identity, float | None]:
        """The identity behind a Proxy-Authorization header, and when it expires (JWTs)."""
        if not header:
            raise AuthError("proxy authentication required: set agent credentials in the proxy URL")
        creds = parse_proxy_authorization(header)
        name, _, run_id = creds.username.partition(RUN_SEPARATOR)
        if run_id and not valid_label_value(run_id):
            raise AuthError(
                "invalid run id: up to 63 letters, digits, '-', '_' or '.', starting and ending "
                "with a letter or digit"
            )
        if _looks_like_jwt(creds.secret) and self.issuers:
            return self._verify_jwt(creds.secret, run_id)
        if name == REAPER_AGENT and self.reaper_token_sha256 is not None:
            digest = hashlib.sha256(creds.secret.encode()).hexdigest()
            if not hmac.compare_digest(digest, self.reaper_token_sha256):
                raise AuthError("invalid agent credentials")
            return Identity(agent=REAPER_AGENT, groups=(REAPER_AGENT,), run_id=run_id), None
        agent = self.agents.get(name)
        expected = agent.expected_digest(self._file_digests) if agent else None
        digest = hashlib.sha256(creds.secret.encode()).hexdigest()
        # Compare even for unknown agents, so timing does not tell which names exist.
        if not hmac.compare_digest(digest, expected or "0" * 64) or agent is None or not expected:
            raise AuthError("invalid agent credentials")
        return Identity(
            agent=agent.name, owner=agent.owner, groups=agent.groups, run_id=run_id
        ), None

    def _verify_jwt(self, token: str, run_id: str) -> tuple[Identity, float | None]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise AuthError(f"malformed token: {e}") from e
        issuer = next((i for i in self.issuers if i.issuer == unverified.get("iss")), None)
        if issuer is None:
            raise AuthError("the token's issuer is not trusted")
        if header.get("alg") not in issuer.algorithms:
            raise AuthError(f"token algorithm {header.get('alg')!r} is not accepted")
        key = issuer.jwks.key(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(issuer.algorithms),
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=issuer.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as e:
            raise AuthError("the token has expired") from e
        except jwt.InvalidAudienceError as e:
            raise AuthError("the token is not meant for this gateway (audience)") from e
        except jwt.InvalidIssuerError as e:
            raise AuthError("the token's issuer is not trusted") from e
        except jwt.PyJWTError as e:
            raise AuthError(f"invalid token: {e}") from e
        subject = claims.get(issuer.agent_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthError(f"the token has no {issuer.agent_claim!r} claim")
        groups = list(issuer.groups)
        if issuer.groups_claim:
            value = claims.get(issuer.groups_claim, [])
            groups += (
                [value] if isinstance(value, str) else [str(g) for g in value if isinstance(g, str)]
            )
        if issuer.run_id_claim and claims.get(issuer.run_id_claim) is not None:
            run_id = str(claims[issuer.run_id_claim])
            if not valid_label_value(run_id):
                raise AuthError(f"the token's {issuer.run_id_claim!r} claim is not a valid run id")
        agent = issuer.agent_prefix + subject
        # OIDC names live in their own namespace: never a static agent's, never the reaper's.
        if not TOKEN_NAME.match(agent):
            raise AuthError(f"the token's {issuer.agent_claim!r} claim is not a valid agent name")
        if agent in self.agents or agent == REAPER_AGENT:
            raise AuthError(f"the token's {issuer.agent_claim!r} claim names a reserved agent")
        if REAPER_AGENT in groups:
            raise AuthError(f"the token's groups name the reserved group {REAPER_AGENT!r}")
        identity = Identity(
            agent=agent,
            owner=issuer.owner,
            groups=tuple(groups),
            run_id=run_id,
        )
        return identity, float(claims["exp"])


def directory_from_config(section: dict[str, Any] | None, base: Path) -> AgentDirectory:
    """Build the directory from the config's `identity` section (validated by the schema)."""
    section = section or {}
    agents = tuple(
        StaticAgent(
            name=a["name"],
            owner=a.get("owner", ""),
            groups=tuple(a.get("groups", ())),
            token_sha256=a.get("token_sha256"),
            token_sha256_file=(base / a["token_sha256_file"]).resolve()
            if "token_sha256_file" in a
            else None,
        )
        for a in section.get("agents", ())
    )
    issuers = tuple(
        OidcIssuer(
            issuer=o["issuer"],
            audience=o["audience"],
            jwks=JwksSource(
                file=(base / o["jwks_file"]).resolve() if "jwks_file" in o else None,
                url=o.get("jwks_url"),
                cache_seconds=float(o.get("jwks_cache_seconds", 300)),
            ),
            agent_claim=o.get("agent_claim", "sub"),
            agent_prefix=o.get("agent_prefix", ""),
            groups_claim=o.get("groups_claim"),
            run_id_claim=o.get("run_id_claim"),
            owner=o.get("owner", ""),
            groups=tuple(o.get("groups", ())),
            algorithms=tuple(o.get("algorithms", DEFAULT_ALGORITHMS)),
        )
        for o in section.get("oidc", ())
    )
    return AgentDirectory(agents, issuers)
