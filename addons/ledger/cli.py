"""`holdgate resources`, `holdgate reap` and `holdgate run-end`: what agents left behind.

The ledger is read from the gateway's state directory; whether an object still exists, and its
deletion, go through the running gateway as the agent `holdgate-reaper` (policy applies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from holdgate.config.gateway_config import EMBEDDED_DEFAULT, Config
from holdgate.config.yaml_source import SourceError, SourceErrors
from holdgate.identity.agents import REAPER_AGENT
from holdgate.ledger.reaping import (
    Existence,
    Outcome,
    Presence,
    Result,
    check_presence,
    delete_through_gateway,
    gateway_proxy_url,
)
from holdgate.ledger.shared import LedgerStore, open_ledger
from holdgate.ledger.store import Created, Filter
from holdgate.printable import printable

EXIT_REFUSED = 1
EXIT_INVALID = 2
SLACK_TIMEOUT = 10
# Slack refuses a section longer than 3000 characters; list this many objects at most.
SLACK_MAX_LISTED = 30


# --- the report: plain values in, lines and Slack blocks out ------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """A ledger entry and what the gateway found upstream (None: not checked)."""

    entry: Created
    presence: Presence | None = None

    @property
    def state(self) -> str:
        """exists, gone, unknown (as just checked), deleted (the ledger knows) or unchecked."""
        if self.presence is not None:
            return str(self.presence.state)
        return "deleted" if self.entry.deleted_at is not None else "unchecked"

    @property
    def left_behind(self) -> bool:
        """Still there, or possibly (the gateway could not tell, or was not asked)."""
        return self.state in (Existence.EXISTS, Existence.UNKNOWN, "unchecked")


def span(seconds: float) -> str:
    """A duration for people: 45s, 12m, 3h05m, 2d04h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def expiry(entry: Created, now: float) -> str:
    """in 1h59m, expired 3m ago, or - (no ttl)."""
    if entry.expires_at is None:
        return "-"
    if entry.expired(now):
        return f"expired {span(now - entry.expires_at)} ago"
    return f"in {span(entry.expires_at - now)}"


def state_text(row: Row, now: float) -> str:
    """The last column of a report line."""
    entry, presence = row.entry, row.presence
    if presence is not None and presence.detail:
        return f"{presence.state}: {presence.detail}"
    if presence is None and entry.deleted_at is not None:
        return f"deleted {span(now - entry.deleted_at)} ago by {entry.deleted_by}"
    return row.state


def table(rows: list[Row], now: float) -> list[str]:
    """Aligned report lines, with a header."""
    cells = [("AGE", "AGENT", "RUN", "TARGET", "OBJECT", "EXPIRES", "STATE")]
    for row in rows:
        e = row.entry
        cells.append(
            (
                span(now - e.created_at),
                # Names come from agents and tokens: escaped, so no cell can forge a row.
                printable(e.agent or "-", 120),
                printable(e.run_id or "-", 80),
                printable(e.target, 80),
                printable(e.where, 300),
                expiry(e, now),
                printable(state_text(row, now), 300),
            )
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]) - 1)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1]
        for line in cells
    ]


def row_json(row: Row, now: float) -> dict[str, Any]:
    """One entry for `--json`."""
    return {
        **row.entry.as_dict(),
        "expired": row.entry.expired(now),
        "state": row.state,
        "detail": row.presence.detail if row.presence is not None else "",
    }


def run_end_lines(run_id: str, rows: list[Row], now: float) -> list[str]:
    """What `run-end` prints: a one-line verdict, then the objects the run left behind."""
    left = [r for r in rows if r.left_behind]
    if not rows:
        return [f"run {run_id}: the ledger holds nothing created under this run"]
    if not left:
        return [f"run {run_id}: created {len(rows)} objects; none is left behind"]
    return [
        f"run {run_id}: left behind {len(left)} of the {len(rows)} objects it created:",
        *("  " + line for line in table(left, now)),
        f"reap them: holdgate reap --run {run_id} --yes",
    ]


def run_end_message(
    run_id: str, rows: list[Row], gateway: str, now: float
) -> tuple[str, list[dict[str, Any]]]:
    """The Slack message for `run-end`: fallback text and blocks."""
    left = [r for r in rows if r.left_behind]
    text = f"holdgate ({gateway}): run {run_id} left behind {len(left)} objects"
    if not left:
        text = f"holdgate ({gateway}): run {run_id} left nothing behind ({len(rows)} created)"
        return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    listed = [
        f"• `{r.entry.where}` on {r.entry.target} by {r.entry.agent or '-'}, "
        f"{span(now - r.entry.created_at)} old, expires {expiry(r.entry, now)}"
        + ("" if r.state == Existence.EXISTS else f" ({r.state})")
        for r in left[:SLACK_MAX_LISTED]
    ]
    if len(left) > SLACK_MAX_LISTED:
        listed.append(f"… and {len(left) - SLACK_MAX_LISTED} more")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(listed)[:3000]}},
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"Reap them: `holdgate reap --run {run_id} --yes`"}
            ],
        },
    ]
    return text, blocks


def is_hold_of(hold: dict[str, Any], entry: Created) -> bool:
    """Whether a pending hold (as the approvals API shows it) is the reaper deleting `entry`."""
    request = hold.get("request") or {}
    return (
        hold.get("state") == "pending"
        and hold.get("agent") == REAPER_AGENT
        and request.get("method") == "DELETE"
        and str(request.get("url", "")).split("?")[0].endswith(entry.path)
    )


# --- the shell ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayLink:
    """How this command reaches the running gateway and its ledger."""

    config: Config
    ledger: LedgerStore
    proxy_url: str
    token: str
    page_url: str  # the approvals page, "" when it is not running

    @classmethod
    def of(cls, config: Config) -> GatewayLink:
        """The gateway a configuration describes (its state directory, proxy URL, admin token)."""
        from holdgate.config.state_files import admin_token

        page_file = config.state_dir / "approvals-url"
        return cls(
            config=config,
            ledger=open_ledger(config),
            proxy_url=gateway_proxy_url(config),
            token=admin_token(config.state_dir),
            page_url=page_file.read_text().strip().rstrip("/") if page_file.exists() else "",
        )

    def rows(self, where: Filter, check: bool) -> list[Row]:
        """The matching entries, checked through the gateway unless `check` is false.

        Objects found gone by this check are listed (as gone) even without `include_deleted`.
        """
        everything = replace(where, include_deleted=True)
        entries = self.ledger.find(everything)
        live = [e for e in entries if e.deleted_at is None]
        found: dict[str, Presence] = {}
        if check and live:
            presences = check_presence(self.config, self.proxy_url, self.token, live, self.ledger)
            found = {e.uid: p for e, p in zip(live, presences, strict=True)}
            entries = self.ledger.find(everything)  # the check marks what it found gone
        return [
            Row(e, found.get(e.uid))
            for e in entries
            if e.deleted_at is None or e.uid in found or where.include_deleted
        ]

    async def delete(self, entry: Created, say: Callable[[str], None]) -> Outcome:
        """Delete through the gateway; if a rule holds the deletion, say so while waiting."""
        deletion = asyncio.create_task(
            asyncio.to_thread(
                delete_through_gateway,
                self.config,
                self.proxy_url,
                self.token,
                entry,
                self.ledger,
            )
        )
        watcher = asyncio.create_task(self._announce_hold(entry, say)) if self.page_url else None
        try:
            return await deletion
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher

    async def _announce_hold(self, entry: Created, say: Callable[[str], None]) -> None:
        """Watch the approvals page's events for the hold of this deletion; say so once."""
        headers = {"Authorization": f"Bearer {self.token}"}
        timeout = httpx.Timeout(10.0, read=None)
        try:
            async with (
                httpx.AsyncClient(headers=headers, timeout=timeout, trust_env=False) as client,
                client.stream("GET", f"{self.page_url}/api/events") as events,
            ):
                # Subscribed first, then the pending list: a hold made in between is not missed.
                pending = (await client.get(f"{self.page_url}/api/holds")).json()["pending"]
                holds = [h for h in pending if is_hold_of(h, entry)]
                if not holds:
                    async for line in events.aiter_lines():
                        hold = (
                            json.loads(line[5:]).get("hold") if line.startswith("data:") else None
                        )
                        if hold and is_hold_of(hold, entry):
                            holds = [hold]
                            break
        except (httpx.HTTPError, ValueError, KeyError):
            return  # the page is a convenience here; the deletion goes on regardless
        if holds:
            hold = holds[0]
            say(
                f"  held for approval by rule {hold.get('rule')} (hold {hold.get('id')}): "
                f"waiting for a reviewer ({self.page_url}/ or "
                f"`holdgate approvals approve {hold.get('id')}`)"
            )


def _open(args: argparse.Namespace) -> GatewayLink | int:
    """The gateway of `--config`, or the exit code after printing why it cannot be used."""
    from holdgate.config.gateway_config import load_config

    try:
        return GatewayLink.of(load_config(args.config))
    except (SourceError, SourceErrors) as e:
        for err in e.errors if isinstance(e, SourceErrors) else [e]:
            print(err, file=sys.stderr)
    except OSError as e:
        print(f"holdgate {args.command}: {e}", file=sys.stderr)
    return EXIT_INVALID


def _filter(args: argparse.Namespace) -> Filter:
    return Filter(
        agent=args.agent,
        run_id=args.run,
        target=args.target,
        expired=args.expired,
        older_than=args.older_than,
        include_deleted=getattr(args, "all", False),
    )


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_resources(args: argparse.Namespace) -> int:
    gateway = _open(args)
    if isinstance(gateway, int):
        return gateway
    rows = gateway.rows(_filter(args), check=not args.no_check)
    now = time.time()
    if args.json:
        print(json.dumps([row_json(r, now) for r in rows], indent=2))
        return 0
    if not rows:
        print("the ledger holds nothing that matches")
        return 0
    for line in table(rows, now):
        print(line)
    return 0


def cmd_reap(args: argparse.Namespace) -> int:
    gateway = _open(args)
    if isinstance(gateway, int):
        return gateway
    where = _filter(args)
    if args.yes and where == Filter():
        print(
            "holdgate reap: say what to delete (--run, --agent, --target, --expired or "
            "--older-than); without one, --yes would delete everything agents ever created",
            file=sys.stderr,
        )
        return EXIT_INVALID
    rows = gateway.rows(where, check=not args.no_check)
    doomed = sorted((r for r in rows if r.left_behind), key=lambda r: r.entry.reap_rank)
    now = time.time()
    if not doomed:
        print("nothing to reap")
        return 0
    if not args.yes:
        print(f"would delete {len(doomed)} objects (dry run; --yes deletes them):")
        for line in table(doomed, now):
            print("  " + line)
        return 0
    refused = 0
    for row in doomed:
        entry = row.entry
        _say(f"deleting {entry.where} on {entry.target} (run {entry.run_id or '-'}) ...")
        outcome = asyncio.run(gateway.delete(entry, _say))
        _say(f"  {entry.where}: {outcome}")
        refused += outcome.result in (Result.REFUSED, Result.FAILED)
    if refused:
        print(f"{refused} of {len(doomed)} deletions did not happen", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def cmd_run_end(args: argparse.Namespace) -> int:
    gateway = _open(args)
    if isinstance(gateway, int):
        return gateway
    rows = gateway.rows(Filter(run_id=args.run_id, include_deleted=True), check=True)
    now = time.time()
    if args.json:
        print(json.dumps([row_json(r, now) for r in rows], indent=2))
    else:
        for line in run_end_lines(args.run_id, rows, now):
            print(line)
    config = gateway.config
    if config.approvals is not None and config.approvals.slack is not None:
        text, blocks = run_end_message(args.run_id, rows, config.name, now)
        problem = post_to_slack(config.approvals.slack, text, blocks)
        if problem:
            # The CI step reports; Slack being down must not fail it.
            print(f"warning: the report was not posted to Slack: {problem}", file=sys.stderr)
    return 0


def post_to_slack(section: dict[str, Any], text: str, blocks: list[dict[str, Any]]) -> str:
    """Post to the reviewers' channel; returns what went wrong, or ""."""
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    from holdgate.config.slack_settings import SlackSettings, is_loopback_url

    settings = SlackSettings.from_dict(section)
    token = os.environ.get(settings.bot_token_env, "")
    if not token:
        return f"environment variable {settings.bot_token_env} is not set"
    client = WebClient(token=token, base_url=settings.api_base_url, timeout=SLACK_TIMEOUT)
    if is_loopback_url(settings.api_base_url):
        client.proxy = None  # the SDK would otherwise route loopback through *_PROXY
    try:
        client.chat_postMessage(channel=settings.channel, text=text, blocks=blocks)
    except SlackApiError as e:
        return str(e.response.get("error", e))
    except Exception as e:  # unreachable, timed out, malformed answer: all just a warning
        return f"{type(e).__name__}: {e}"
    return ""


def _duration(text: str) -> float:
    from holdgate.policy.rules import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_filters(p: argparse.ArgumentParser, config_help: str) -> None:
    p.add_argument("--config", type=Path, help=config_help)
    p.add_argument("--agent", help="only what this agent created")
    p.add_argument("--run", help="only what this run (CI job id) created")
    p.add_argument("--target", help="only on this target")
    p.add_argument("--expired", action="store_true", help="only objects whose ttl ran out")
    p.add_argument(
        "--older-than", type=_duration, metavar="DURATION", help="only objects older than, e.g. 2h"
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="do not ask the gateway whether the objects still exist",
    )


def add_commands(sub: Any, config_help: str) -> None:
    """Add `resources`, `reap` and `run-end` to the `holdgate` command's subparsers."""
    p = sub.add_parser(
        "resources", help="list what agents created and whether it still exists (the ledger)"
    )
    _add_filters(p, config_help)
    p.add_argument("--all", action="store_true", help="include objects known to be deleted")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_resources)

    p = sub.add_parser(
        "reap", help="delete what agents left behind, through the gateway (dry run by default)"
    )
    _add_filters(p, config_help)
    p.add_argument("--yes", action="store_true", help="really delete (default: only list)")
    p.set_defaults(func=cmd_reap)

    p = sub.add_parser(
        "run-end", help="report what a run left behind (for a CI job's last step; Slack too)"
    )
    p.add_argument("run_id", metavar="RUN_ID", help="the run id agents put in their proxy URL")
    p.add_argument("--config", type=Path, help=config_help)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_run_end)


def build_parser() -> argparse.ArgumentParser:
    """These commands alone, as `holdgate` would parse them."""
    parser = argparse.ArgumentParser(prog="holdgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub, f"gateway configuration (default: the embedded default, {EMBEDDED_DEFAULT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one of these commands."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
