"""`holdgate archive verify` and `holdgate replay`: check the archive, find and show its flows.

Also runnable alone: `python -m holdgate.archive.cli {archive verify,replay} ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import re
import secrets
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from holdgate.archive import signing
from holdgate.archive.backends import Backend, BackendError, make_backend
from holdgate.archive.durable_files import atomic_write
from holdgate.archive.flow_format import split_records
from holdgate.archive.layout import Kind
from holdgate.archive.reading import (
    Altered,
    fetch,
    read_manifest,
    scan,
    signature_problem,
    verify,
)
from holdgate.archive.spool import Spool
from holdgate.config.archive_settings import ArchiveSettings

if TYPE_CHECKING:
    from holdgate.config.gateway_config import Config

EXIT_PROBLEMS = 1
EXIT_INVALID = 2
EXIT_BACKLOG = 3  # intact, but sealed segments wait in the spool: uploads are failing
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --- settings ----------------------------------------------------------------------------------


def archive_settings(config_path: str | None) -> tuple[ArchiveSettings, str]:
    """The archive settings and gateway name of a configuration (the embedded default if None)."""
    from holdgate.config.gateway_config import load_config

    config = load_config(Path(config_path) if config_path else None)
    return settings_of(config), config.name


def settings_of(config: Config) -> ArchiveSettings:
    """The archive settings of a loaded configuration."""
    settings = getattr(config, "archive", None)
    if not isinstance(settings, ArchiveSettings):
        section = config.raw.get("archive")
        settings = ArchiveSettings.from_dict(section, config.path.parent, config.state_dir)
    return settings


def _load(args: argparse.Namespace) -> tuple[ArchiveSettings, str] | int:
    from holdgate.config.yaml_source import SourceError, SourceErrors

    try:
        return archive_settings(args.config)
    except SourceErrors as e:
        for err in e.errors:
            print(err, file=sys.stderr)
    except (SourceError, ValueError) as e:
        print(f"{args.config or 'embedded default'}: {e}", file=sys.stderr)
    return EXIT_INVALID


# --- progress ----------------------------------------------------------------------------------


class ProgressBar:
    """Download progress on stderr: a bar on a terminal, a line per object otherwise."""

    def __init__(
        self, label: str, total: int, stream: TextIO | None = None, quiet: bool = False
    ) -> None:
        self.label = label
        self.total = total
        self.count = 0
        self.bytes = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet

    def __call__(self, key: str, size: int) -> None:
        """One object downloaded."""
        self.count += 1
        self.bytes += size
        if self.quiet:
            return
        if self.tty:
            width = 30
            done = width * self.count // max(self.total, 1)
            bar = "#" * done + "." * (width - done)
            self.stream.write(
                f"\r{self.label} [{bar}] {self.count}/{self.total} ({_size(self.bytes)})"
            )
            if self.count >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"{self.label} {self.count}/{self.total}: {key} ({_size(size)})\n")
        self.stream.flush()


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} GiB"


# --- verify ------------------------------------------------------------------------------------


def stale_segments(
    settings: ArchiveSettings, max_age: float, now: float | None = None
) -> list[str]:
    """Sealed segments in the local spool that have waited longer than `max_age` seconds."""
    now = time.time() if now is None else now
    return [
        f"{name}: waiting {now - closed_at:.0f}s"
        for name, closed_at, _ in Spool(settings.spool).backlog()
        if closed_at and now - closed_at > max_age
    ]


def verification_key(settings: ArchiveSettings, public_key: str | None) -> Ed25519PublicKey | None:
    """The key signatures are checked with: `--public-key FILE`, else the gateway's own signing
    key where it exists on this host, else None (signatures cannot be checked)."""
    if public_key:
        return signing.load_public(Path(public_key).read_bytes())
    if settings.signing_key is not None and settings.signing_key.is_file():
        return signing.load_public(settings.signing_key.read_bytes())
    return None


def verify_archive(
    settings: ArchiveSettings,
    out: TextIO | None = None,
    as_json: bool = False,
    max_backlog_age: float | None = None,
    public: Ed25519PublicKey | None = None,
    quiet: bool = False,
) -> int:
    """Check every object, the hash chain and the signatures; 0 when intact, 1 with one line
    per problem, EXIT_BACKLOG when it is intact but sealed segments have waited too long."""
    out = out or sys.stdout
    stale = stale_segments(settings, max_backlog_age) if max_backlog_age is not None else []
    backend = make_backend(settings)
    progress = ProgressBar("verifying", _object_count(backend), quiet=quiet)
    try:
        report = verify(backend, settings.spool, progress, public)
    except BackendError as e:
        print(f"holdgate archive verify: {backend.describe()}: {e}", file=sys.stderr)
        return EXIT_INVALID
    if as_json:
        json.dump(
            {
                "location": report.location,
                "ok": report.ok,
                "segments": report.segments,
                "flows": report.flows,
                "problems": [dataclasses.asdict(p) for p in report.problems],
                "notes": report.notes,
                "stale_segments": stale,
            },
            out,
            indent=2,
        )
        out.write("\n")
    else:
        for problem in report.problems:
            out.write(f"{problem}\n")
        for note in report.notes:
            out.write(f"note: {note}\n")
        for line in stale:
            out.write(f"STALE {line} in the spool {settings.spool} (not uploaded)\n")
        verdict = "ok" if report.ok else "FAILED"
        counts = Counter(p.kind for p in report.problems if p.kind != "pending")
        by_kind = f" ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))})" if counts else ""
        signed = "signatures checked" if public is not None else "signatures not checked"
        chains = f" of {len(report.gateways)} gateways ({', '.join(report.gateways)})"
        out.write(
            f"{verdict}: {report.location}: {report.segments} segments"
            f"{chains if len(report.gateways) > 1 else ''}, {report.flows} flows, "
            f"{progress.count} objects read ({_size(progress.bytes)}), {signed}, "
            f"{sum(counts.values())} problems{by_kind}\n"
        )
    if not report.ok:
        return EXIT_PROBLEMS
    return EXIT_BACKLOG if stale else 0


def _object_count(backend: Backend) -> int:
    try:
        return sum(1 for _ in backend.list())
    except BackendError:
        return 0


# --- replay ------------------------------------------------------------------------------------


def parse_when(text: str, now: float | None = None) -> float:
    """A point in time: ISO 8601 (UTC unless it says otherwise) or an age like 30m, 2h, 7d."""
    now = time.time() if now is None else now
    m = _DURATION.match(text.strip())
    if m:
        return now - float(m[1]) * _UNITS[m[2]]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(f"{text!r} is neither ISO 8601 nor an age like 30m, 2h, 7d") from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


# One vocabulary for `--decision`: a rule's action (allow, deny, approve), a hold's outcome
# (approved, denied, expired, cancelled), and what the agent got: `allowed` (allow or approved),
# `denied` (a deny rule or a reviewer's denial), `refused` (anything that did not go upstream).
DECISION_WORDS: dict[str, tuple[str, ...]] = {
    "allowed": ("allow", "approved"),
    "denied": ("deny", "denied"),
    "refused": ("deny", "denied", "expired", "cancelled"),
}


@dataclass(frozen=True, slots=True)
class ReplayQuery:
    """Which archived flows to replay: a time window and globs on index fields."""

    since: float | None = None
    until: float | None = None
    agent: str | None = None
    target: str | None = None
    decision: str | None = None
    rule: str | None = None

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """Whether an index line is selected."""
        ts = entry.get("ts")
        if self.since is not None and (ts is None or ts < self.since):
            return False
        if self.until is not None and (ts is None or ts > self.until):
            return False
        if not _glob(self.agent, entry.get("agent")):
            return False
        if not _glob(self.target, entry.get("target")):
            return False
        if not _glob(self.rule, entry.get("rule")):
            return False
        if self.decision is None:
            return True
        patterns = DECISION_WORDS.get(self.decision, (self.decision,))
        return any(_glob(p, entry.get(k)) for p in patterns for k in ("decision", "outcome"))

    def may_overlap(self, manifest: Mapping[str, Any]) -> bool:
        """Whether a segment's time span can hold selected flows."""
        first, last = manifest.get("first"), manifest.get("last")
        if self.since is not None and last is not None and last < self.since:
            return False
        return not (self.until is not None and first is not None and first > self.until)


def _glob(pattern: str | None, value: Any) -> bool:
    if pattern is None:
        return True
    return value is not None and fnmatch.fnmatchcase(str(value), pattern)


@dataclass(slots=True)
class IndexSelection:
    """What `select_index` found: each verified segment's manifest with its selected index
    lines, and what failed verification (left out)."""

    segments: list[tuple[dict[str, Any], list[dict[str, Any]]]]
    problems: list[str]

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The selected index lines of every segment, in time order."""
        found = [entry for _, matched in self.segments for entry in matched]
        return sorted(found, key=lambda e: e.get("ts") or 0.0)


def select_index(
    backend: Backend,
    query: ReplayQuery,
    progress_stream: TextIO | None = None,
    public: Ed25519PublicKey | None = None,
    quiet: bool = False,
) -> IndexSelection:
    """The index lines `query` selects from every sealed segment, each manifest's signature
    checked with `public` and each index object's hash (a segment that fails is left out)."""
    catalog = scan(backend)
    sealed = sorted(
        (s for s in catalog.segments.values() if Kind.MANIFEST in s.objects),
        key=lambda s: (s.gateway, s.seq),
    )
    problems: list[str] = []
    manifests = []
    bar = ProgressBar("manifests", len(sealed), progress_stream, quiet)
    for segment in sealed:
        try:
            manifest, data = read_manifest(backend, segment, bar)
            why = signature_problem(backend, segment, data, public) if public else ""
        except (ValueError, BackendError) as e:
            problems.append(f"{segment.gateway}-{segment.seq}: unreadable manifest: {e}")
            continue
        if why:
            problems.append(f"{segment.gateway}-{segment.seq}: {why}")
            continue
        if query.may_overlap(manifest):
            manifests.append(manifest)
    selected: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    bar = ProgressBar("indexes", len(manifests), progress_stream, quiet)
    for manifest in manifests:
        index = manifest["objects"]["index"]
        try:
            data = fetch(backend, index["key"], index["sha256"], bar)
            entries = [json.loads(line) for line in data.splitlines() if line.strip()]
        except (Altered, BackendError, ValueError) as e:
            problems.append(f"{index['key']}: {e}")
            continue
        matched = [e for e in entries if isinstance(e, dict) and query.matches(e)]
        if matched:
            selected.append((manifest, matched))
    return IndexSelection(selected, problems)


@dataclass(slots=True)
class ReplayResult:
    """What `collect` found: the records in time order and what failed verification."""

    records: list[bytes]
    segments: int
    problems: list[str]


def collect(
    backend: Backend,
    query: ReplayQuery,
    progress_stream: TextIO | None = None,
    public: Ed25519PublicKey | None = None,
    quiet: bool = False,
) -> ReplayResult:
    """The exact archived bytes of every selected flow, each object's hash verified, and each
    manifest's signature with `public` (a segment that fails is left out)."""
    selection = select_index(backend, query, progress_stream, public, quiet)
    problems = selection.problems
    found: list[tuple[float, bytes]] = []
    bar = ProgressBar("flows", len(selection.segments), progress_stream, quiet)
    for manifest, matched in selection.segments:
        flows = manifest["objects"]["flows"]
        try:
            data = fetch(backend, flows["key"], flows["sha256"], bar)
        except (Altered, BackendError) as e:
            problems.append(f"{flows['key']}: {e}")
            continue
        when = {e["id"]: e.get("ts") or 0.0 for e in matched}
        for raw, state in split_records(data):
            if state.get("id") in when:
                found.append((when[str(state["id"])], raw))
    found.sort(key=lambda item: item[0])
    return ReplayResult([raw for _, raw in found], len(selection.segments), problems)


def replay(
    settings: ArchiveSettings,
    query: ReplayQuery,
    *,
    out: Path | None = None,
    web: bool = True,
    web_port: int | None = None,
    web_password: str | None = None,
    public: Ed25519PublicKey | None = None,
    quiet: bool = False,
) -> int:
    """Merge the selected flows into `out` and/or open them in a read-only mitmweb."""
    backend = make_backend(settings)
    try:
        result = collect(backend, query, public=public, quiet=quiet)
    except BackendError as e:
        print(f"holdgate replay: {backend.describe()}: {e}", file=sys.stderr)
        return EXIT_INVALID
    for problem in result.problems:
        print(f"holdgate replay: NOT VERIFIED, left out: {problem}", file=sys.stderr)
    checked = "hashes and signatures verified" if public else "hashes verified; no signing key"
    summary = (
        f"{len(result.records)} flows from {result.segments} segments of {backend.describe()} "
        f"({checked}{f', {len(result.problems)} segments or objects left out' if result.problems else ''})"
    )
    code = EXIT_PROBLEMS if result.problems else 0
    if out is not None:
        atomic_write(out, b"".join(result.records))
        print(f"wrote {out}: {summary}")
    if not web:
        return code
    if not result.records:
        print(f"no flows match; {summary}")
        return code
    with tempfile.TemporaryDirectory(prefix="holdgate-replay-") as tmp:
        path = out or Path(tmp) / "replay.mitm"
        if out is None:
            atomic_write(path, b"".join(result.records))
        print(summary)
        open_viewer(path, port=web_port, password=web_password, confdir=Path(tmp))
    return code


VIEWER_COLUMNS = ("timestamp", "comment", "method", "path", "status", "size")


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def open_viewer(
    path: Path, *, port: int | None = None, password: str | None = None, confdir: Path
) -> None:
    """Serve a flow file in mitmweb, read-only, on loopback, behind a password (until Ctrl-C)."""
    from mitmproxy.tools import cmdline
    from mitmproxy.tools.main import run
    from mitmproxy.tools.web.master import WebMaster

    from holdgate.archive.addon import ReadOnlyViewer

    class ArchiveViewer(WebMaster):
        """mitmweb with the read-only guard."""

        def __init__(self, opts: Any) -> None:
            super().__init__(opts)
            self.addons.add(ReadOnlyViewer())

    port = port or free_port()
    password = password or secrets.token_urlsafe(18)
    try:
        from argon2 import PasswordHasher

        # mitmweb takes an argon2 hash: the password itself is not kept in its options.
        web_password = PasswordHasher().hash(password)
    except ImportError:
        web_password = password
    print(f"mitmweb (read-only) at http://127.0.0.1:{port}/?token={password}")
    print(f"password: {password}")
    print("Ctrl-C stops it.", flush=True)
    argv = [
        "--rfile",
        str(path),
        "--set",
        "server=false",
        "--set",
        "web_host=127.0.0.1",
        "--set",
        f"web_port={port}",
        "--set",
        f"web_password={web_password}",
        "--set",
        "web_open_browser=false",
        "--set",
        f"confdir={confdir}",
        "--set",
        "termlog_verbosity=warn",
        # The comment column leads: outcome · rule · agent[ · hold ID]: what was asked.
        *[arg for column in VIEWER_COLUMNS for arg in ("--set", f"web_columns={column}")],
    ]
    run(ArchiveViewer, cmdline.mitmweb, argv)


# --- commands ----------------------------------------------------------------------------------


def _load_with_key(
    args: argparse.Namespace, command: str
) -> tuple[ArchiveSettings, Ed25519PublicKey | None] | int:
    """The archive settings and the key that checks signatures (see verification_key)."""
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    settings, _gateway = loaded
    try:
        return settings, verification_key(settings, args.public_key)
    except (OSError, signing.SigningKeyError) as e:
        print(f"holdgate {command}: --public-key: {e}", file=sys.stderr)
        return EXIT_INVALID


def cmd_verify(args: argparse.Namespace) -> int:
    """`holdgate archive verify`."""
    loaded = _load_with_key(args, "archive verify")
    if isinstance(loaded, int):
        return loaded
    settings, public = loaded
    return verify_archive(
        settings,
        as_json=args.json,
        max_backlog_age=args.max_backlog_age,
        public=public,
        quiet=args.quiet,
    )


def cmd_public_key(args: argparse.Namespace) -> int:
    """`holdgate archive public-key`: the signing key's public half, for auditors."""
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    settings, _gateway = loaded
    if settings.signing_key is None:
        print("holdgate archive public-key: no signing key configured", file=sys.stderr)
        return EXIT_INVALID
    try:
        key = signing.load_or_create(settings.signing_key)
    except signing.SigningKeyError as e:
        print(f"holdgate archive public-key: {e}", file=sys.stderr)
        return EXIT_INVALID
    sys.stdout.write(signing.public_pem(key).decode())
    print(f"# key {signing.key_id(key.public_key())} ({settings.signing_key})", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """`holdgate replay`."""
    loaded = _load_with_key(args, "replay")
    if isinstance(loaded, int):
        return loaded
    settings, public = loaded
    try:
        query = ReplayQuery(
            since=parse_when(args.since) if args.since else None,
            until=parse_when(args.until) if args.until else None,
            agent=args.agent,
            target=args.target,
            decision=args.decision,
            rule=args.rule,
        )
    except ValueError as e:
        print(f"holdgate replay: {e}", file=sys.stderr)
        return EXIT_INVALID
    if args.no_web and not args.out:
        print("holdgate replay: --no-web needs --out FILE", file=sys.stderr)
        return EXIT_INVALID
    return replay(
        settings,
        query,
        out=Path(args.out) if args.out else None,
        web=not args.no_web,
        web_port=args.web_port,
        public=public,
        quiet=args.quiet,
    )


PUBLIC_KEY_HELP = (
    "PEM public key that checks the segments' signatures (default: the gateway's own "
    "archive.signing_key, where it is on this host)"
)


def add_commands(subparsers: Any) -> None:
    """Add `archive verify` and `replay` to the holdgate command line."""
    config_help = "gateway configuration (default: the embedded default)"
    key_help = PUBLIC_KEY_HELP
    archive = subparsers.add_parser("archive", help="the audit archive")
    sub = archive.add_subparsers(dest="archive_command", required=True)
    p = sub.add_parser(
        "verify",
        help="check every archived object against its manifest and the hash chain",
        description="Reports MISSING, EXTRA and ALTERED objects (rewritten, more than one "
        "version, deleted), UNSIGNED segments and broken CHAIN links; "
        "exit 0 when the archive is intact, 1 when not, 3 when it is intact but sealed segments "
        "have waited in the spool longer than --max-backlog-age (uploads are failing).",
    )
    p.add_argument("--config", help=config_help)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--max-backlog-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="sealed segments older than this in the local spool fail the check (default 3600)",
    )
    p.add_argument("--public-key", metavar="FILE", help=key_help)
    p.add_argument("--quiet", action="store_true", help="no line per object; problems and summary")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser(
        "public-key",
        help="print the public key that verifies the archive's signatures (PEM)",
        description="The gateway signs each segment's manifest with its archive key "
        "(archive.signing_key, created at first start); give this public half to auditors "
        "for `holdgate archive verify --public-key`.",
    )
    p.add_argument("--config", help=config_help)
    p.set_defaults(func=cmd_public_key)

    p = subparsers.add_parser(
        "replay",
        help="find archived flows and open them in mitmweb (read-only) or write them to a file",
        description="Times are ISO 8601 (UTC unless given) or ages like 30m, 2h, 7d; the "
        "filters are globs (--decision matches the action or a hold's outcome).",
    )
    p.add_argument("--config", help=config_help)
    p.add_argument("--since", help="flows from this time on")
    p.add_argument("--until", help="flows up to this time")
    p.add_argument("--agent", help="agent name glob")
    p.add_argument("--target", help="target name glob")
    p.add_argument(
        "--decision",
        help="a rule's action (allow, deny, approve), a hold's outcome (approved, expired, "
        "cancelled), or what the agent got: allowed (allow or approved), denied (a deny rule or "
        "a reviewer's denial), refused (all that did not go upstream)",
    )
    p.add_argument("--rule", help="rule id glob")
    p.add_argument("--out", help="write the merged flows to this file (mitmproxy format)")
    p.add_argument("--no-web", action="store_true", help="do not open mitmweb (needs --out)")
    p.add_argument("--web-port", type=int, help="mitmweb port on 127.0.0.1 (default: a free one)")
    p.add_argument("--public-key", metavar="FILE", help=key_help)
    p.add_argument("--quiet", action="store_true", help="no line per object downloaded")
    p.set_defaults(func=cmd_replay)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the archive commands without the rest of the holdgate CLI."""
    parser = argparse.ArgumentParser(prog="holdgate", description="holdgate's audit archive")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
