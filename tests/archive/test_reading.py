"""Verify over a directory archive: every kind of tampering reported, what it cannot see noted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from holdgate.archive import signing
from holdgate.archive.backends import DirectoryBackend
from holdgate.archive.layout import canonical_json, sha256_hex
from holdgate.archive.reading import verify
from holdgate.archive.records import Submission
from holdgate.archive.store import ArchiveStore
from holdgate.config.archive_settings import ArchiveSettings
from tests.archive.canaries import archived_paths, canary_flow, make_writable, settings_for


def _three_segments(tmp_path: Path, store_factory: Callable[..., ArchiveStore]) -> ArchiveSettings:
    settings = settings_for(tmp_path)
    store = store_factory(settings)
    for segment in range(3):
        for i in range(4):
            store.submit(Submission(canary_flow(segment * 10 + i).get_state()))
        assert store.drain(timeout=10)
    return settings


def _alter_flows(root: Path) -> None:
    victim = archived_paths(root, ".mitm")[1]
    victim.write_bytes(victim.read_bytes().replace(b"web-11", b"web-99"))


def _delete_index(root: Path) -> None:
    archived_paths(root, ".jsonl")[0].unlink()


def _add_object(root: Path) -> None:
    (root / "2020/01/01/00").mkdir(parents=True)
    (root / "2020/01/01/00/gw-test-0000000009.mitm").write_bytes(b"x")


def _add_stray_file(root: Path) -> None:
    (root / "notes.txt").write_text("x")


def _delete_segment(seq: int) -> Callable[[Path], None]:
    def delete(root: Path) -> None:
        for path in root.rglob(f"gw-test-{seq:010d}.*"):
            path.unlink()

    return delete


def _replace_manifest(root: Path) -> None:
    victim = archived_paths(root, ".manifest.json")[1]
    victim.write_bytes(victim.read_bytes().replace(b'"flows":4', b'"flows":3'))


TAMPERING: dict[str, tuple[Callable[[Path], None], set[str]]] = {
    "alter a flow file": (_alter_flows, {"altered"}),
    "delete an index": (_delete_index, {"missing"}),
    "add an object": (_add_object, {"extra", "missing"}),
    "add a stray file": (_add_stray_file, {"extra"}),
    "delete a middle segment": (_delete_segment(2), {"missing"}),
    "replace a manifest": (_replace_manifest, {"chain"}),
    "delete the newest segment": (_delete_segment(3), {"missing"}),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_reports_tampering(
    case: str, tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = _three_segments(tmp_path, store_factory)
    backend = DirectoryBackend(settings.directory)
    assert verify(backend, settings.spool).ok
    make_writable(settings.directory)
    tamper, kinds = TAMPERING[case]
    tamper(settings.directory)
    report = verify(backend, settings.spool)
    assert not report.ok
    assert {p.kind for p in report.problems} == kinds, [str(p) for p in report.problems]


def test_verify_without_the_spool_notes_what_it_cannot_see(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = _three_segments(tmp_path, store_factory)
    report = verify(DirectoryBackend(settings.directory), None)
    assert report.ok and report.segments == 3 and report.flows == 12
    assert "cannot be detected" in report.notes[0]


def _rewrite_newest_segment(root: Path) -> None:
    """What a bucket writer can do: change the newest segment's flows and re-hash its manifest,
    chain link intact (nothing after it names its hash)."""
    manifest_path = archived_paths(root, ".manifest.json")[-1]
    manifest = json.loads(manifest_path.read_bytes())
    flows_entry = manifest["objects"]["flows"]
    flows_path = root / flows_entry["key"]
    forged = flows_path.read_bytes().replace(b"web-21", b"web-66")
    flows_path.write_bytes(forged)
    flows_entry["sha256"], flows_entry["bytes"] = sha256_hex(forged), len(forged)
    manifest_path.write_bytes(canonical_json(manifest))


def test_a_rewrite_of_the_newest_segment_is_caught(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = _three_segments(tmp_path, store_factory)
    assert settings.signing_key is not None
    assert oct(settings.signing_key.stat().st_mode & 0o777) == "0o600"
    assert not list(settings.directory.rglob("*.pem"))  # the key never leaves the state dir
    public = signing.load_public(settings.signing_key.read_bytes())
    backend = DirectoryBackend(settings.directory)
    assert verify(backend, settings.spool, public=public).ok
    make_writable(settings.directory)
    _rewrite_newest_segment(settings.directory)
    newest = "gw-test-0000000003"
    # The gateway's own head (its spool) and the segment's signature each catch it.
    by_head = verify(backend, settings.spool)
    assert [(p.kind, p.where) for p in by_head.problems] == [("altered", newest)]
    by_signature = verify(backend, None, public=public)
    assert [(p.kind, p.where) for p in by_signature.problems] == [("altered", newest)]
    assert "does not match the manifest" in by_signature.problems[0].detail
    # Without either, nothing can tell; verify says what it did not check.
    blind = verify(backend, None)
    assert blind.ok and any("signatures not checked" in n for n in blind.notes)
    # Another key, or a removed signature, is no better for the forger.
    other = signing.load_public(signing.public_pem(Ed25519PrivateKey.generate()))
    assert "signed by key" in verify(backend, None, public=other).problems[0].detail
    for signature in settings.directory.rglob(f"{newest}.sig"):
        signature.unlink()
    [unsigned] = verify(backend, None, public=public).problems
    assert (unsigned.kind, unsigned.where) == ("unsigned", newest)
