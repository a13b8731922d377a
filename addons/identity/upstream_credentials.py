"""Upstream credentials the gateway injects, so agents never hold one that works without it."""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("holdgate")


class CredentialUnavailable(Exception):
    """The configured credential cannot be read; the request must not go out without it."""


@dataclass
class SecretSource:
    """A secret from a file (re-read when it changes: projected tokens rotate) or the environment."""

    file: Path | None = None
    env: str | None = None
    _cached: str = field(default="", repr=False)
    _mtime: float = field(default=-1.0, repr=False)

    def read(self) -> str:
        """The current value."""
        if self.env is not None:
            value = os.environ.get(self.env, "")
            if not value:
                raise CredentialUnavailable(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            mtime = self.file.stat().st_mtime_ns
            if mtime != self._mtime:
                self._cached = self.file.read_text().strip()
                self._mtime = mtime
        except OSError as e:
            raise CredentialUnavailable(f"credential file {self.file} cannot be read") from e
        if not self._cached:
            raise CredentialUnavailable(f"credential file {self.file} is empty")
        return self._cached

    def describe(self) -> str:
        """Where the secret comes from (never the secret)."""
        return f"${self.env}" if self.env else str(self.file)


@dataclass(frozen=True)
class UpstreamCredential:
    """What replaces the agent's Authorization header on the way upstream."""

    bearer: SecretSource | None = None
    basic_username: str = ""
    basic_password: SecretSource | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def authorization(self) -> str | None:
        """The Authorization header value to send, or None to send none."""
        if self.bearer is not None:
            return f"Bearer {self.bearer.read()}"
        if self.basic_password is not None:
            raw = f"{self.basic_username}:{self.basic_password.read()}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        return None

    def files(self) -> list[str]:
        """Files this credential reads, for `holdgate check`."""
        out = []
        for source in (self.bearer, self.basic_password):
            if source is not None and source.file is not None:
                out.append(str(source.file))
        out += [str(p) for p in (self.client_cert, self.client_key) if p is not None]
        return out

    def env_vars(self) -> list[str]:
        """Environment variables this credential reads, for `holdgate check`."""
        return [s.env for s in (self.bearer, self.basic_password) if s is not None and s.env]


def credential_from_config(section: dict[str, Any] | None, base: Path) -> UpstreamCredential | None:
    """Build a target's credential from its validated `credential` mapping."""
    if not section:
        return None

    def source(file_key: str, env_key: str, data: dict[str, Any]) -> SecretSource | None:
        if file_key in data:
            return SecretSource(file=(base / data[file_key]).resolve())
        if env_key in data:
            return SecretSource(env=data[env_key])
        return None

    basic = section.get("basic") or {}
    cert = section.get("client_cert") or {}
    return UpstreamCredential(
        bearer=source("bearer_token_file", "bearer_token_env", section),
        basic_username=basic.get("username", ""),
        basic_password=source("password_file", "password_env", basic) if basic else None,
        client_cert=(base / cert["cert"]).resolve() if cert else None,
        client_key=(base / cert["key"]).resolve() if cert and "key" in cert else None,
    )
