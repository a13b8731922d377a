"""`holdgate archive verify` and `holdgate replay` as real commands over a real archive."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mitmproxy import http
from mitmproxy import io as mitmio
from mitmproxy.test import taddons, tflow

from holdgate.archive.addon import ReadOnlyViewer
from holdgate.archive.cli import VIEWER_COLUMNS, ReplayQuery, free_port, main, parse_when
from holdgate.archive.flow_format import split_records
from holdgate.archive.records import Submission
from holdgate.archive.store import ArchiveStore
from holdgate.config.archive_settings import ArchiveSettings
from tests.archive.canaries import assert_no_canary, canary_flow, make_writable

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z


def write_config(home: Path) -> Path:
    """A gateway configuration without an archive section: the local archive under its state."""
    (home / "rules").mkdir(parents=True, exist_ok=True)
    path = home / "holdgate.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "gateway": {"name": "gw-test", "state": "state", "certs": "certs"},
                "rules": ["rules"],
                "targets": [
                    {"name": "sandbox", "kind": "kubernetes", "hosts": ["kubernetes.default.svc"]}
                ],
            }
        )
    )
    return path


def flow_at(n: int, when: float, agent: str, action: str, rule: str, **meta: Any) -> http.HTTPFlow:
    """A canary flow made at `when` by `agent`, decided `action` by `rule`."""
    flow = canary_flow(n, action=action, rule=rule, agent=agent, **meta)
    flow.request.timestamp_start = when
    flow.request.timestamp_end = when + 0.01
    assert flow.response is not None
    flow.response.timestamp_start = when + 0.02
    flow.response.timestamp_end = when + 0.03
    return flow


@pytest.fixture
def archive_home(tmp_path: Path) -> Iterator[tuple[Path, list[http.HTTPFlow]]]:
    """A config and its local archive holding flows of two agents over three hours."""
    config = write_config(tmp_path)
    settings = ArchiveSettings.from_dict({}, tmp_path, tmp_path / "state")
    store = ArchiveStore(settings, "gw-test")
    store.start()
    flows = [
        flow_at(1, T0, "ci-bot", "allow", "allow-reads"),
        flow_at(2, T0 + 3600, "ci-bot", "deny", "deny-prod-secret-reads"),
        flow_at(
            3,
            T0 + 3700,
            "agent-7",
            "approve",
            "approve-exec",
            hold={"state": "approved", "reviews": [{"reviewer": "local:ann", "approve": True}]},
        ),
        flow_at(4, T0 + 7200, "agent-7", "allow", "allow-reads"),
        flow_at(5, T0 + 7300, "ci-bot", "approve", "approve-exec", hold={"state": "expired"}),
    ]
    try:
        for i, flow in enumerate(flows):
            store.submit(Submission(flow.get_state()))
            if i % 2:
                assert store.rotate()
        assert store.drain(timeout=20)
    finally:
        store.stop()
    yield config, flows


def archived_records(root: Path) -> dict[str, bytes]:
    """The exact bytes of every archived flow record, by flow id."""
    records = {}
    for path in root.rglob("*.mitm"):
        for raw, state in split_records(path.read_bytes()):
            records[str(state["id"])] = raw
    return records


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], [1, 2, 3, 4, 5]),
        (["--agent", "ci-*"], [1, 2, 5]),
        (["--decision", "deny"], [2]),
        (["--decision", "approve"], [3, 5]),
        (["--decision", "expired"], [5]),
        # One vocabulary: "denied" is a deny rule or a reviewer's denial, "refused" anything
        # that did not go upstream, "allowed" an allow rule or an approval.
        (["--decision", "denied"], [2]),
        (["--decision", "refused"], [2, 5]),
        (["--rule", "approve-*", "--agent", "agent-7"], [3]),
        (["--target", "sandbox", "--since", "2025-06-15T16:00:00Z"], [2, 3, 4, 5]),
        (["--until", "2025-06-15T16:07:00+00:00"], [1, 2]),
        (["--target", "other"], []),
    ],
)
def test_replay_out_returns_exactly_what_was_archived(
    archive_home: tuple[Path, list[http.HTTPFlow]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: list[int],
) -> None:
    config, flows = archive_home
    out = tmp_path / "replay.mitm"
    code = main(["replay", "--config", str(config), "--out", str(out), "--no-web", *args])
    assert code == 0, capsys.readouterr()
    records = archived_records(config.parent / "state" / "archive")
    chosen = [flows[n - 1] for n in expected]
    assert out.read_bytes() == b"".join(records[f.id] for f in chosen)
    replayed = list(mitmio.FlowReader(io.BytesIO(out.read_bytes())).stream())  # type: ignore[arg-type]
    assert [f.id for f in replayed] == [f.id for f in chosen]
    assert_no_canary(out.read_bytes(), str(out))
    assert f"{len(expected)} flows" in capsys.readouterr().out


def test_replay_leaves_out_and_reports_an_altered_segment(
    archive_home: tuple[Path, list[http.HTTPFlow]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _flows = archive_home
    archive = config.parent / "state" / "archive"
    make_writable(archive)
    victim = sorted(archive.rglob("*.mitm"))[0]
    victim.write_bytes(victim.read_bytes().replace(b"web-1", b"web-9"))
    out = tmp_path / "replay.mitm"
    code = main(["replay", "--config", str(config), "--out", str(out), "--no-web"])
    assert code == 1
    assert "NOT VERIFIED" in capsys.readouterr().err
    assert len(list(mitmio.FlowReader(io.BytesIO(out.read_bytes())).stream())) == 3  # type: ignore[arg-type]


def test_verify_command(
    archive_home: tuple[Path, list[http.HTTPFlow]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _flows = archive_home
    assert main(["archive", "verify", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("ok: ")
        and "3 segments, 5 flows" in out
        and out.endswith("signatures checked, 0 problems\n")
    )
    archive = config.parent / "state" / "archive"
    make_writable(archive)
    sorted(archive.rglob("*.jsonl"))[0].write_text("{}\n")
    (archive / "stray.bin").write_bytes(b"x")
    assert main(["archive", "verify", "--config", str(config), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"]
    assert {p["kind"] for p in report["problems"]} == {"altered", "extra"}


def test_verify_fails_when_sealed_segments_wait_too_long(
    archive_home: tuple[Path, list[http.HTTPFlow]], capsys: pytest.CaptureFixture[str]
) -> None:
    # Uploads failing leave sealed segments in the spool: the archive itself looks intact
    # ("0 problems"), so verify says so with its own exit code.
    config, _flows = archive_home
    spool = config.parent / "state" / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    marker = spool / "seg-000000000042.closed.json"
    marker.write_text("{}")
    old = time.time() - 7200
    os.utime(marker, (old, old))
    try:
        assert main(["archive", "verify", "--config", str(config)]) == 3
        assert "STALE seg-000000000042: waiting 7" in capsys.readouterr().out
        code = main(["archive", "verify", "--config", str(config), "--max-backlog-age", "86400"])
        assert code == 0
    finally:
        marker.unlink()


def test_archive_section_of_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["archive"] = {"directory": "audit", "spool": "spool-dir", "require_for": "all"}
    config.write_text(yaml.safe_dump(data))
    settings = ArchiveSettings.from_dict(data["archive"], tmp_path, tmp_path / "state")
    assert settings.directory == tmp_path / "audit"
    store = ArchiveStore(settings, "gw-test")
    store.start()
    try:
        store.submit(Submission(canary_flow().get_state()))
        assert store.drain(timeout=10)
    finally:
        store.stop()
    assert main(["archive", "verify", "--config", str(config)]) == 0
    assert str(tmp_path / "audit") in capsys.readouterr().out
    data["archive"]["bogus"] = 1
    config.write_text(yaml.safe_dump(data))
    assert main(["archive", "verify", "--config", str(config)]) == 2
    assert "archive.bogus: unknown field" in capsys.readouterr().err


def test_bad_arguments(archive_home: tuple[Path, list[http.HTTPFlow]]) -> None:
    config, _flows = archive_home
    assert main(["replay", "--config", str(config), "--no-web"]) == 2
    assert main(["replay", "--config", str(config), "--since", "yesterday", "--no-web"]) == 2
    assert main(["archive", "verify", "--config", str(config.parent / "missing.yaml")]) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-06-15T15:06:40Z", T0),
        ("2025-06-15T17:06:40+02:00", T0),
        ("2025-06-15T15:06:40", T0),
        ("30m", T0 - 1800),
        ("2h", T0 - 7200),
        ("7d", T0 - 7 * 86400),
    ],
)
def test_parse_when(text: str, expected: float) -> None:
    assert parse_when(text, now=T0) == expected


def test_query_matches_index_lines() -> None:
    entry = {
        "ts": T0,
        "agent": "ci-bot",
        "target": "prod",
        "decision": "approve",
        "outcome": "denied",
        "rule": "r",
    }
    assert ReplayQuery(decision="denied").matches(entry)
    assert ReplayQuery(decision="approve", agent="ci-*").matches(entry)
    assert not ReplayQuery(since=T0 + 1).matches(entry)
    assert not ReplayQuery(agent="other").matches({**entry, "agent": None})


def test_read_only_viewer_refuses_replays_and_the_proxy_server() -> None:
    guard = ReadOnlyViewer()
    with taddons.context(guard) as tctx:
        flow = tflow.tflow()
        flow.is_replay = "request"
        guard.request(flow)
        assert flow.response is not None and flow.response.status_code == 403
        live = tflow.tflow()
        guard.request(live)
        assert live.response is None
        guard.running()
        with pytest.raises(Exception, match="read-only"):
            tctx.configure(guard, server=True)


def test_mitmweb_serves_the_masked_replay_behind_a_password(
    archive_home: tuple[Path, list[http.HTTPFlow]],
) -> None:
    config, flows = archive_home
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "holdgate.archive.cli",
            "replay",
            "--config",
            str(config),
            "--agent",
            "agent-7",
            "--web-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any(line.startswith("password:") for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, lines
            lines.append(process.stdout.readline())
        (url,) = (re.search(r"http://\S+", line)[0] for line in lines if "http://" in line)  # type: ignore[index]
        password = next(line for line in lines if line.startswith("password:")).split()[1]
        assert url == f"http://127.0.0.1:{port}/?token={password}"
        deadline = time.monotonic() + 30
        while True:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/flows", headers={"Authorization": f"Bearer {password}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    served = json.load(response)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "mitmweb never answered"
                time.sleep(0.1)
        assert [f["id"] for f in served] == [flows[2].id, flows[3].id]
        headers = dict(served[0]["request"]["headers"])
        assert headers["Authorization"] == "Bearer <masked>"
        assert served[0]["marked"] and not served[1]["marked"]  # the held flow is marked
        assert served[0]["comment"] == flows[2].comment
        # The flow list leads with the comment column (outcome · rule · agent).
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/options.json",
            headers={"Authorization": f"Bearer {password}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            options = json.load(response)
        assert options["web_columns"]["value"] == list(VIEWER_COLUMNS)
        assert VIEWER_COLUMNS[:2] == ("timestamp", "comment")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/flows", timeout=5)
        assert refused.value.code == 403
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    assert process.stderr is not None
    assert "plaintext password" not in process.stderr.read()  # mitmweb got an argon2 hash


def test_mitmdump_reads_archived_segments(
    archive_home: tuple[Path, list[http.HTTPFlow]],
) -> None:
    config, flows = archive_home
    segment = sorted((config.parent / "state" / "archive").rglob("*.mitm"))[0]
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "mitmdump"),
            "-n",
            "-r",
            str(segment),
            "--flow-detail",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Authorization: Bearer <masked>" in result.stdout
    assert result.stdout.count("/api/v1/namespaces/sandbox/pods/web-") == 2


def test_public_key_and_quiet_verify(
    archive_home: tuple[Path, list[http.HTTPFlow]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _flows = archive_home
    assert main(["archive", "public-key", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("-----BEGIN PUBLIC KEY-----") and "PRIVATE" not in captured.out
    key_file = tmp_path / "archive.pub"
    key_file.write_text(captured.out)
    # An auditor elsewhere: no local key to fall back on, the public key given.
    (config.parent / "state" / "archive-signing-key.pem").rename(tmp_path / "moved.pem")
    args = ["archive", "verify", "--config", str(config), "--quiet"]
    assert main([*args, "--public-key", str(key_file)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no line per object
    assert captured.out.startswith("ok: ") and "signatures checked, 0 problems" in captured.out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "signatures not checked" in out and "note: signatures not checked" in out
    assert main([*args, "--public-key", str(tmp_path / "nope.pem")]) == 2
