"""The `approvals: slack:` section of the configuration: validated once, secrets named, never held."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

DEFAULT_API_BASE_URL = "https://slack.com/api/"
_MENTION = re.compile(r"^(S|U|W)[A-Z0-9]+$|^(here|channel)$")
_KEYS = {
    "channel",
    "escalation_channel",
    "escalation_mention",
    "mode",
    "api_base_url",
    "http_listen",
    "bot_token_env",
    "app_token_env",
    "signing_secret_env",
    "group_cache_seconds",
}


class SlackMode(StrEnum):
    SOCKET = "socket"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class SlackSettings:
    """The `approvals: slack:` section of the config (secrets are named, never held)."""

    channel: str
    escalation_channel: str = ""
    escalation_mention: str = ""
    mode: SlackMode = SlackMode.SOCKET
    api_base_url: str = DEFAULT_API_BASE_URL
    http_host: str = "127.0.0.1"
    http_port: int = 3000
    bot_token_env: str = "SLACK_BOT_TOKEN"
    app_token_env: str = "SLACK_APP_TOKEN"
    signing_secret_env: str = "SLACK_SIGNING_SECRET"
    group_cache_seconds: float = 300.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SlackSettings:
        """Validate the config section; ValueError names the bad key and value."""
        if not isinstance(data, Mapping):
            raise ValueError(f"slack: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ValueError(
                f"slack: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})"
            )

        def text(key: str, default: str = "", required: bool = False) -> str:
            value = data.get(key, default)
            if value is None:
                value = default
            if not isinstance(value, str):
                raise ValueError(f"slack.{key}: expected a string, got {value!r}")
            value = value.strip()
            if required and not value:
                raise ValueError(f"slack.{key}: required")
            return value

        channel = text("channel", required=True)
        mode_text = text("mode", "socket").lower()
        try:
            mode = SlackMode(mode_text)
        except ValueError:
            raise ValueError(
                f"slack.mode: expected 'socket' or 'http', got {mode_text!r}"
            ) from None
        base = text("api_base_url", DEFAULT_API_BASE_URL)
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"slack.api_base_url: expected an http(s) URL, got {base!r}")
        if not base.endswith("/"):
            base += "/"
        mention = text("escalation_mention").removeprefix("@")
        if mention and not _MENTION.match(mention):
            raise ValueError(
                f"slack.escalation_mention: expected a user group ID (S...), a user ID (U...), "
                f"'here' or 'channel', got {mention!r}"
            )
        host, port = _parse_listen(text("http_listen", "127.0.0.1:3000"))
        cache = data.get("group_cache_seconds", 300)
        if isinstance(cache, bool) or not isinstance(cache, int | float) or cache < 0:
            raise ValueError(f"slack.group_cache_seconds: expected a number >= 0, got {cache!r}")
        return cls(
            channel=channel,
            escalation_channel=text("escalation_channel"),
            escalation_mention=mention,
            mode=mode,
            api_base_url=base,
            http_host=host,
            http_port=port,
            bot_token_env=text("bot_token_env", "SLACK_BOT_TOKEN", required=True),
            app_token_env=text("app_token_env", "SLACK_APP_TOKEN", required=True),
            signing_secret_env=text("signing_secret_env", "SLACK_SIGNING_SECRET", required=True),
            group_cache_seconds=float(cache),
        )

    @property
    def secret_names(self) -> list[str]:
        """The environment variables this mode needs."""
        second = self.app_token_env if self.mode is SlackMode.SOCKET else self.signing_secret_env
        return [self.bot_token_env, second]

    def missing_secrets(self, environ: Mapping[str, str]) -> list[str]:
        """Names of required environment variables that are unset or empty."""
        return [name for name in self.secret_names if not environ.get(name, "").strip()]

    @property
    def notify(self) -> str:
        """The escalation mention in Slack syntax, or ""."""
        m = self.escalation_mention
        if not m:
            return ""
        if m in ("here", "channel"):
            return f"<!{m}>"
        return f"<!subteam^{m}>" if m.startswith("S") else f"<@{m}>"


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"slack.http_listen: expected HOST:PORT, got {value!r}")
    return host, int(port_text)


def is_loopback_url(url: str) -> bool:
    """Whether a URL's host is this machine (plain http is allowed there, e.g. a simulator)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
