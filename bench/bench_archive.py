"""Benchmark: throughput with the archive on vs off, in the same run.

1. In-process: the archive's cost on the event loop per flow (state copy, pickle, pipe write;
   the writer process does the rest) and how many flows per second the writer makes durable.
2. Through real mitmdump subprocesses (reverse proxy to a loopback upstream in its own
   process), keep-alive clients, alternating rounds: off, on (the defaults: each response waits
   until its record is fsynced), and on without that wait. Prints the ratio of medians to off
   (goal >= 0.95) and the CPU each request costs mitmdump and the archive writer process.

    .venv/bin/python bench/bench_archive.py [--seconds 4] [--rounds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

import rig  # noqa: E402

HARNESS = '''
import json
import os
from pathlib import Path


class Decide:
    """What the gateway leaves on every flow: facts, decision, a comment."""

    def request(self, flow):
        flow.metadata["holdgate"] = {
            "request": {
                "target": "svc",
                "method": flow.request.method,
                "host": flow.request.host,
                "port": flow.request.port,
                "path": flow.request.path,
                "identity": {"agent": "bench", "owner": "", "groups": [], "run_id": ""},
            },
            "decision": {"action": "allow", "rule": "allow-all", "reason": "bench"},
        }
        flow.comment = "allow: " + flow.request.path


addons = [Decide()]
if os.environ.get("BENCH_ARCHIVE"):
    from holdgate.archive.addon import Archive
    from holdgate.config.archive_settings import ArchiveSettings

    base = Path(os.environ["BENCH_BASE"])
    archive = Archive()
    archive.configure_settings(
        ArchiveSettings.from_dict(json.loads(os.environ["BENCH_ARCHIVE"]), base, base / "state"),
        "bench",
    )
    addons.append(archive)
'''

UPSTREAM = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"bench"}}' * 8


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


ARCHIVE: dict[str, object] = {"rotate_bytes": 4 * 1024 * 1024, "rotate_seconds": 5}


def start_proxy(
    work: Path, upstream: int, archive: dict[str, object] | None
) -> tuple[subprocess.Popen[bytes], int]:
    """mitmdump in reverse mode, with or without the archive addon."""
    script = work / "bench_harness.py"
    script.write_text(HARNESS)
    port = rig.free_port()
    env = {
        **os.environ,
        "BENCH_BASE": str(work),
        "BENCH_ARCHIVE": json.dumps(archive) if archive else "",
    }
    process = subprocess.Popen(
        [
            str(BIN / "mitmdump"),
            "--mode",
            f"reverse:http://127.0.0.1:{upstream}",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "-s",
            str(script),
            "--set",
            f"confdir={work / 'conf'}",
            "--set",
            "flow_detail=0",
            "--set",
            "termlog_verbosity=warn",
        ],
        env=env,
        cwd=ROOT,
    )
    rig.wait_for_port(port, process)
    return process, port


def load(port: int, clients: int, seconds: float) -> float:
    """Requests per second from `clients` keep-alive connections for `seconds`."""
    counts = [0] * clients
    stop = threading.Event()

    def client(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while not stop.is_set():
            connection.request("GET", f"/api/v1/namespaces/bench/pods/web-{i}-{n}")
            response = connection.getresponse()
            response.read()
            n += 1
        counts[i] = n
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    return sum(counts) / (time.perf_counter() - start)


def children(pid: int) -> list[int]:
    """The child processes of a process (the archive writer)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


MODES: dict[str, dict[str, object] | None] = {
    "off": None,
    "on": {},
    "on, no fsync wait": {"fsync_before_response": False},
}


def bench_mitmdump(
    seconds: float, rounds: int, clients: int, extra: dict[str, object] | None = None
) -> None:
    """Alternate off/on rounds through real mitmdump processes; print medians and the ratio."""
    extra = extra or {}
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE, text=True)
    assert upstream.stdout is not None
    upstream_port = int(upstream.stdout.readline())
    rps: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
            for r in range(rounds):
                for i, (mode, settings) in enumerate(MODES.items()):
                    work = Path(tmp) / f"{r}-{i}"
                    work.mkdir()
                    archive = None if settings is None else {**ARCHIVE, **settings, **extra}
                    process, port = start_proxy(work, upstream_port, archive)
                    try:
                        load(port, clients, 0.5)  # warm up
                        writers = children(process.pid)
                        before = rig.cpu_seconds(process.pid), sum(map(rig.cpu_seconds, writers))
                        started = time.perf_counter()
                        rate = load(port, clients, seconds)
                        elapsed = time.perf_counter() - started
                        after = rig.cpu_seconds(process.pid), sum(map(rig.cpu_seconds, writers))
                    finally:
                        process.terminate()
                        process.wait(30)
                    requests = rate * elapsed
                    gateway_us = (after[0] - before[0]) / requests * 1e6
                    writer_us = (after[1] - before[1]) / requests * 1e6
                    rps[mode].append(rate)
                    cpu[mode].append((gateway_us, writer_us))
                    print(
                        f"  round {r + 1} {mode:18}: {rate:6.0f} req/s, CPU per request: "
                        f"mitmdump {gateway_us:5.0f} us, archive writer {writer_us:4.0f} us"
                    )
    finally:
        upstream.terminate()
        upstream.wait(10)
    off = statistics.median(rps["off"])
    off_cpu = statistics.median(c[0] for c in cpu["off"])
    print(f"mitmdump, {clients} keep-alive clients, plain HTTP, median of {rounds} rounds:")
    for mode in MODES:
        median = statistics.median(rps[mode])
        gateway = statistics.median(c[0] for c in cpu[mode])
        line = f"  {mode:18}: {median:6.0f} req/s"
        if mode != "off":
            ratio = median / off
            verdict = "" if ratio >= 0.95 else "  BELOW GOAL"
            line += (
                f", RATIO {ratio:.3f} (goal >= 0.95){verdict}; mitmdump CPU per request "
                f"{gateway - off_cpu:+.0f} us"
            )
        print(line)
    print(
        "  (throughput on a shared machine is noisy; the archive writer runs in its own process,"
        " so on a machine with a spare core its CPU does not compete with mitmdump's)"
    )


def bench_in_process(count: int) -> None:
    """The archive's cost on the event loop per flow, and the writer process's throughput."""
    from mitmproxy.test import tflow

    from holdgate.archive.addon import Archive
    from holdgate.config.archive_settings import ArchiveSettings

    client, server = tflow.tclient_conn(), tflow.tserver_conn()  # one keep-alive connection
    flows = []
    for i in range(count):
        flow = tflow.tflow(resp=True, client_conn=client, server_conn=server)
        flow.request.path = f"/api/v1/namespaces/bench/pods/web-{i}"
        flow.request.headers["Authorization"] = "Bearer token"
        assert flow.response is not None
        flow.response.content = b'{"kind":"Pod","metadata":{"name":"web"}}' * 8
        flow.metadata["holdgate"] = {
            "request": {"target": "svc", "method": "GET", "path": flow.request.path},
            "decision": {"action": "allow", "rule": "allow-all", "reason": "bench"},
        }
        flows.append(flow)

    async def run(archive: Archive) -> tuple[float, float]:
        start = time.perf_counter()
        loop_time = 0.0
        pending = []
        for flow in flows:
            t = time.perf_counter()
            waiter = archive._record(flow, wait=True)
            loop_time += time.perf_counter() - t
            if waiter is not None:
                pending.append(waiter)
        await asyncio.gather(*pending)
        return loop_time, time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        archive = Archive()
        archive.configure_settings(
            ArchiveSettings.from_dict({}, Path(tmp), Path(tmp) / "state"), "bench"
        )
        loop_time, total = asyncio.run(run(archive))
        archive.done()
    print(
        f"in-process, {count} flows: {loop_time / count * 1e6:.0f} us per flow on the event loop, "
        f"{count / total:.0f} flows/s durable in the spool (writer process)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--flows", type=int, default=5000, help="flows for the in-process part")
    parser.add_argument(
        "--archive", default="{}", help="extra archive settings as JSON, e.g. '{\"s3\": {...}}'"
    )
    args = parser.parse_args()
    bench_in_process(args.flows)
    bench_mitmdump(args.seconds, args.rounds, args.clients, json.loads(args.archive))


if __name__ == "__main__":
    main()
