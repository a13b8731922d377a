"""Reading the archive back: catalog, verify, fetch.

`holdgate archive verify` and `holdgate replay` are in addons/archive/cli.py.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from holdgate.archive import signing
from holdgate.archive.backends import Backend, BackendError, StoredObject
from holdgate.archive.layout import (
    DATA_KINDS,
    MANIFEST_FORMAT,
    SEQ_DIGITS,
    Kind,
    parse_key,
    sha256_hex,
    signature_key,
)
from holdgate.archive.spool import Spool


@dataclass(slots=True)
class Segment:
    """The stored objects of one archived segment."""

    gateway: str
    seq: int
    objects: dict[Kind, StoredObject] = field(default_factory=dict)


@dataclass(slots=True)
class Catalog:
    """Everything under the archive prefix, grouped by segment."""

    segments: dict[tuple[str, int], Segment] = field(default_factory=dict)
    unknown: list[StoredObject] = field(default_factory=list)

    def gateways(self) -> list[str]:
        """Gateways with segments in the archive."""
        return sorted({g for g, _ in self.segments})


def scan(backend: Backend) -> Catalog:
    """List the archive."""
    catalog = Catalog()
    for obj in backend.list():
        info = parse_key(backend.prefix, obj.key)
        if info is None:
            catalog.unknown.append(obj)
            continue
        segment = catalog.segments.setdefault(
            (info.gateway, info.seq), Segment(info.gateway, info.seq)
        )
        if info.kind in segment.objects:
            # The same segment number under two hour directories.
            catalog.unknown.append(obj)
        else:
            segment.objects[info.kind] = obj
    return catalog


class Altered(Exception):
    """An archived object whose bytes do not match the hash its manifest records."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of `verify`: missing, extra, altered, unsigned, chain or pending."""

    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind.upper()}: {self.where}: {self.detail}"


@dataclass(slots=True)
class VerifyReport:
    """What `holdgate archive verify` found."""

    location: str
    segments: int = 0
    flows: int = 0
    gateways: list[str] = field(default_factory=list)  # one chain each (replicas, workers)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No missing, extra, altered object and an unbroken chain."""
        return not any(p.kind != "pending" for p in self.problems)


Progress = Callable[[str, int], None]


def fetch(backend: Backend, key: str, sha256: str, progress: Progress | None = None) -> bytes:
    """Download an object and check it against its recorded hash (Altered when it differs)."""
    data = backend.get(key)
    if progress is not None:
        progress(key, len(data))
    actual = sha256_hex(data)
    if actual != sha256:
        raise Altered(f"sha256 {actual}, the manifest records {sha256}")
    return data


def read_manifest(
    backend: Backend, segment: Segment, progress: Progress | None = None
) -> tuple[dict[str, Any], bytes]:
    """A segment's manifest and its exact bytes (ValueError when unreadable)."""
    obj = segment.objects[Kind.MANIFEST]
    data = backend.get(obj.key)
    if progress is not None:
        progress(obj.key, len(data))
    manifest = json.loads(data)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError("not a holdgate manifest")
    if manifest.get("gateway") != segment.gateway or manifest.get("seq") != segment.seq:
        raise ValueError(
            f"says gateway {manifest.get('gateway')!r} seq {manifest.get('seq')}, not its key"
        )
    return manifest, data


def signature_problem(
    backend: Backend,
    segment: Segment,
    manifest: bytes,
    public: Ed25519PublicKey,
    progress: Progress | None = None,
) -> str:
    """Why the segment's signature does not vouch for its manifest ("" when it does)."""
    stored = segment.objects.get(Kind.SIGNATURE)
    if stored is None:
        return "no signature: the manifest cannot be told from a rewrite"
    data = backend.get(stored.key)
    if progress is not None:
        progress(stored.key, len(data))
    return signing.check(public, data, segment.gateway, segment.seq, manifest)


def versioned_problems(backend: Backend, report: VerifyReport) -> list[Problem]:
    """Archived keys with more than one version or a delete marker (a versioned bucket keeps
    what was overwritten or deleted: holdgate writes each key once)."""
    versions = getattr(backend, "versions", None)
    if versions is None:
        return []
    try:
        found = versions()
    except BackendError as e:
        report.notes.append(f"object versions not checked: {e}")
        return []
    problems = []
    for key, (count, deleted) in sorted(found.items()):
        if deleted:
            problems.append(Problem("altered", key, "deleted: a delete marker hides it"))
        if count > 1:
            problems.append(
                Problem("altered", key, f"{count} versions: overwritten after it was archived")
            )
    return problems


def verify(
    backend: Backend,
    spool: Path | None = None,
    progress: Progress | None = None,
    public: Ed25519PublicKey | None = None,
) -> VerifyReport:
    """Check every object against its manifest, every manifest against the chain, its
    signature (with `public`) and the gateway's own head (with its `spool`), and every
    object's versions where the bucket keeps them."""
    report = VerifyReport(location=backend.describe())
    catalog = scan(backend)
    for obj in catalog.unknown:
        report.problems.append(Problem("extra", obj.key, "not an object holdgate wrote"))
    report.problems.extend(versioned_problems(backend, report))
    local = _local_state(spool)
    report.gateways = catalog.gateways()
    for gateway in catalog.gateways():
        _verify_gateway(backend, catalog, gateway, local.get(gateway), report, progress, public)
    if public is None and any(Kind.SIGNATURE in s.objects for s in catalog.segments.values()):
        report.notes.append(
            "signatures not checked: give --public-key (holdgate archive public-key prints it)"
        )
    for gateway, (head, pending, _sha) in local.items():
        if gateway not in catalog.gateways() and head:
            seqs = sorted(pending)
            for seq in range(1, head + 1):
                kind = "pending" if seq in seqs else "missing"
                detail = (
                    "sealed in the spool, not uploaded yet" if seq in seqs else "not in the archive"
                )
                report.problems.append(Problem(kind, f"{gateway}-{seq:0{SEQ_DIGITS}d}", detail))
    return report


def _local_state(spool: Path | None) -> dict[str, tuple[int, set[int], str]]:
    """From a gateway's spool: the chain head it sealed (seq), the seqs still waiting there,
    and the head manifest's SHA-256."""
    if spool is None or not spool.is_dir():
        return {}
    local = Spool(spool)
    chain = local.read_chain()
    if not chain:
        return {}
    pending = set()
    for segment, suffixes in local.segments().items():
        if "manifest.json" in suffixes:
            with contextlib.suppress(OSError, ValueError, KeyError):
                pending.add(
                    int(json.loads(local.path(segment, "manifest.json").read_bytes())["seq"])
                )
    return {str(chain["gateway"]): (int(chain["seq"]), pending, str(chain.get("sha256", "")))}


def _verify_gateway(
    backend: Backend,
    catalog: Catalog,
    gateway: str,
    local: tuple[int, set[int], str] | None,
    report: VerifyReport,
    progress: Progress | None,
    public: Ed25519PublicKey | None,
) -> None:
    segments = {seq: seg for (g, seq), seg in catalog.segments.items() if g == gateway}
    head, pending, head_sha = local if local else (0, set(), "")
    last = max([*segments, head])
    manifests: dict[int, tuple[dict[str, Any], bytes]] = {}
    for seq in range(1, last + 1):
        name = f"{gateway}-{seq:0{SEQ_DIGITS}d}"
        segment = segments.get(seq)
        if segment is None:
            if seq in pending:
                report.problems.append(
                    Problem("pending", name, "sealed in the spool, not uploaded yet")
                )
            else:
                report.problems.append(
                    Problem("missing", name, "segment not in the archive (all objects)")
                )
            continue
        if Kind.MANIFEST not in segment.objects:
            if seq in pending:
                report.problems.append(Problem("pending", name, "upload in progress"))
                continue
            report.problems.append(
                Problem("missing", f"{name}.{Kind.MANIFEST}", "manifest not in the archive")
            )
            for obj in segment.objects.values():
                report.problems.append(Problem("extra", obj.key, "not listed by any manifest"))
            continue
        try:
            manifest, data = read_manifest(backend, segment, progress)
        except (ValueError, BackendError) as e:
            key = segment.objects[Kind.MANIFEST].key
            report.problems.append(Problem("altered", key, f"unreadable manifest: {e}"))
            continue
        manifests[seq] = (manifest, data)
        report.segments += 1
        report.flows += int(manifest.get("flows") or 0)
        if seq == head and head_sha and sha256_hex(data) != head_sha:
            report.problems.append(
                Problem("altered", name, "the manifest is not the one the gateway sealed as head")
            )
        if public is not None and (why := signature_problem(backend, segment, data, public)):
            kind = "unsigned" if Kind.SIGNATURE not in segment.objects else "altered"
            report.problems.append(Problem(kind, name, why))
        listed = {obj["key"] for obj in manifest["objects"].values()} | {manifest.get("key")}
        listed.add(signature_key(str(manifest.get("key"))))
        for obj in segment.objects.values():
            if obj.key not in listed:
                report.problems.append(Problem("extra", obj.key, f"not listed by manifest {seq}"))
        for kind in DATA_KINDS:
            entry = manifest["objects"].get(kind.name.lower())
            if entry is None:
                report.problems.append(Problem("altered", name, f"manifest lists no {kind} object"))
                continue
            stored = segment.objects.get(kind)
            if stored is None or stored.key != entry["key"]:
                report.problems.append(Problem("missing", entry["key"], "listed by its manifest"))
                continue
            try:
                fetch(backend, entry["key"], entry["sha256"], progress)
            except Altered as e:
                report.problems.append(Problem("altered", entry["key"], str(e)))
    for seq, (manifest, _data) in sorted(manifests.items()):
        name = f"{gateway}-{seq:0{SEQ_DIGITS}d}"
        prev = manifest.get("prev")
        if seq == 1:
            if prev is not None:
                report.problems.append(
                    Problem("chain", name, "the first segment names a predecessor")
                )
            continue
        if prev is None:
            report.problems.append(
                Problem("chain", name, "the chain restarts here (no predecessor hash)")
            )
            continue
        before = manifests.get(seq - 1)
        if before is None:
            continue  # already reported as missing or unreadable
        if prev.get("seq") != seq - 1 or prev.get("sha256") != sha256_hex(before[1]):
            report.problems.append(
                Problem("chain", name, f"predecessor hash does not match manifest {seq - 1}")
            )
    if local is None:
        report.notes.append(
            f"{gateway}: newest segment {last}; without the gateway's spool, removal of the "
            "newest segments cannot be detected"
        )
