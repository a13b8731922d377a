"""The loopback rig of the gateway benchmarks: a fast HTTPS upstream, proxies, keep-alive clients.

Everything listens on 127.0.0.1 and is stopped by whoever started it. The upstream runs in its
own process (`python bench/rig.py upstream CERT KEY`), answers every GET with a small
ConfigMap, and records when requests under `/api/v1/namespaces/bench/secrets/` arrived
(`GET /_bench/arrivals`), which is how the approval resume latency is measured.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import platform
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LISTENING = re.compile(r"proxy listening at (\*|\[?[0-9a-f.:]+?\]?):(\d+)")
PAGE = re.compile(r"approvals page listening at (\S+) \(admin token in (\S+)\)")
RECORDED_PREFIX = b"/api/v1/namespaces/bench/secrets/"
CONFIGMAP = json.dumps(
    {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "x", "namespace": "bench", "resourceVersion": "42"},
        "data": {"color": "blue", "password": "hunter2", "replicas": "3"},
    },
    separators=(",", ":"),
).encode()
START_TIMEOUT = 180.0


# --- the upstream ---------------------------------------------------------------------------


async def _serve_upstream(cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    arrivals: dict[str, float] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrived = time.time()
                target = head.split(b" ", 2)[1]
                length = _content_length(head)
                if length:
                    await reader.readexactly(length)
                if target.startswith(RECORDED_PREFIX):
                    arrivals[target.decode()] = arrived
                    body = CONFIGMAP
                elif target.startswith(b"/_bench/arrivals"):
                    body = json.dumps(arrivals).encode()
                    if b"clear" in target:
                        arrivals.clear()
                else:
                    body = CONFIGMAP
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            ssl.SSLError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def _content_length(head: bytes) -> int:
    i = head.lower().find(b"\r\ncontent-length:")
    if i < 0:
        return 0
    end = head.index(b"\r\n", i + 2)
    return int(head[i + 17 : end])


@dataclass
class Upstream:
    """The upstream process."""

    process: subprocess.Popen[str]
    port: int
    ca: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


@contextmanager
def running_upstream(work: Path) -> Iterator[Upstream]:
    """Start the upstream with its own CA and server certificate (the sandbox's TLS helper:
    localhost, 127.0.0.1 and kubernetes.default.svc); stopped on exit."""
    from holdgate.sandbox.kube_tls import ensure_tls

    tls = ensure_tls(work / "upstream-tls")
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__)), "upstream", str(tls.cert), str(tls.key)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        stop_process(process)
        raise RuntimeError(f"upstream did not start: {line!r}")
    upstream = Upstream(process, int(line), tls.ca_cert)
    try:
        yield upstream
    finally:
        upstream.stop()


# --- proxies --------------------------------------------------------------------------------


@dataclass
class Proxy:
    """A proxy process (plain mitmdump or holdgate) and where it listens."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    ca: Path
    log: Path
    started_in: float
    page_url: str = ""
    admin_token: str = ""

    def rss_mib(self) -> float:
        """The process's resident memory (VmRSS) in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process used so far."""
        return cpu_seconds(self.process.pid)

    def tree_cpu_seconds(self) -> float:
        """CPU time of the process and its live descendants (the archive's writer process)."""
        total = 0.0
        for pid in [self.process.pid, *self.descendants()]:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def descendants(self) -> list[int]:
        """Live descendant processes (the archive's writer), parents first."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = [], list(children.get(self.process.pid, []))
        while todo:
            pid = todo.pop(0)
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def stop(self) -> None:
        stop_process(self.process)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """Terminate, then kill if it does not exit within 30 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_for_log(
    process: subprocess.Popen[bytes], log: Path, pattern: re.Pattern[str]
) -> re.Match[str]:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if m := pattern.search(text):
            return m
        if process.poll() is not None:
            raise RuntimeError(f"proxy exited ({process.returncode}):\n{text[-3000:]}")
        time.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"proxy never printed {pattern.pattern!r}:\n{log.read_text()[-3000:]}")


def start_holdgate(
    home: Path, config: Path, *extra: str, env: dict[str, str] | None = None, workers: int = 1
) -> Proxy:
    """`holdgate run --config FILE --listen-port 0 [--workers N]`, its output going to
    home/gateway.log (`env`: extra environment variables)."""
    log = home / "gateway.log"
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(BIN / "holdgate"),
                "run",
                "--config",
                str(config),
                "--listen-port",
                "0",
                *(["--workers", str(workers)] if workers > 1 else []),
                "--",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
    port = int(_wait_for_log(process, log, LISTENING).group(2))
    proxy = Proxy("holdgate", process, port, home / "certs" / "mitmproxy-ca-cert.pem", log, 0.0)
    if "approvals:" in config.read_text():
        m = _wait_for_log(process, log, PAGE)
        proxy.page_url, proxy.admin_token = (
            m.group(1).rstrip("/"),
            Path(m.group(2)).read_text().strip(),
        )
    proxy.started_in = time.monotonic() - started
    return proxy


def start_mitmdump(home: Path, upstream_ca: Path) -> Proxy:
    """Plain mitmdump, no addons: `-q`, lazy connections, verifying the upstream against its CA."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / "mitmdump.log"
    port = free_port()
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(BIN / "mitmdump"),
                "-q",
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                str(port),
                "--set",
                f"confdir={home / 'certs'}",
                "--set",
                f"ssl_verify_upstream_trusted_ca={upstream_ca}",
                "--set",
                "connection_strategy=lazy",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home,
        )
    wait_for_port(port, process)
    proxy = Proxy("mitmdump", process, port, home / "certs" / "mitmproxy-ca-cert.pem", log, 0.0)
    proxy.started_in = time.monotonic() - started
    return proxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.05)


# --- clients --------------------------------------------------------------------------------


def client_context(ca: Path) -> ssl.SSLContext:
    """What an agent configures: trust the proxy's CA, speak HTTP/1.1."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["http/1.1"])
    return context


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Tunnel:
    """One keep-alive HTTPS connection, through a proxy's CONNECT tunnel or direct."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
    ) -> None:
        self.reader, self.writer, self.host = reader, writer, host.encode()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        proxy_port: int | None = None,
        proxy_authorization: str | None = None,
    ) -> Tunnel:
        """CONNECT host:port through 127.0.0.1:proxy_port and start TLS, or connect direct."""
        if proxy_port is None:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=host
            )
            return cls(reader, writer, host)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        auth = f"Proxy-Authorization: {proxy_authorization}\r\n" if proxy_authorization else ""
        writer.write(
            f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            writer.close()
            raise RuntimeError(f"CONNECT refused: {head[:200]!r}")
        await writer.start_tls(context, server_hostname=host)
        return cls(reader, writer, host)

    def send_get(self, path: str, extra: bytes = b"") -> None:
        self.writer.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n"
            b"User-Agent: holdgate-bench\r\n%s\r\n" % (path.encode(), self.host, extra)
        )

    async def read_response(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        if b"\r\ntransfer-encoding: chunked" in head.lower():
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    return status, body
                body += chunk[:-2]
        return status, await self.reader.readexactly(_content_length(head))

    async def get(self, path: str) -> tuple[int, bytes]:
        self.send_get(path)
        return await self.read_response()

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Requests per second and latency percentiles of one load run."""

    clients: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    # The proxy's CPU time per request over the whole run (warm-up included), if measured,
    # and that of the proxy with its child processes (the archive's writer).
    cpu_us: float = float("nan")
    tree_cpu_us: float = float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


async def run_load(
    open_tunnel: Callable[[], Awaitable[Tunnel]],
    path: str,
    clients: int,
    seconds: float,
    warmup: float = 0.5,
    check: Callable[[int, bytes], bool] = lambda status, body: status == 200,
    proxy: Proxy | None = None,
) -> LoadResult:
    """`clients` keep-alive connections doing GETs back to back; counts what completes in the window."""
    tunnels = [await open_tunnel() for _ in range(clients)]
    for t in tunnels:  # the first request of a connection opens the upstream side: not timed
        status, body = await t.get(path)
        if not check(status, body):
            raise RuntimeError(f"unexpected answer {status}: {body[:300]!r}")
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup
    end = begin + seconds
    errors = total = 0

    async def worker(tunnel: Tunnel) -> list[float]:
        nonlocal errors, total
        latencies = []
        while True:
            t0 = time.perf_counter()
            now = loop.time()
            if now >= end:
                return latencies
            status, body = await tunnel.get(path)
            total += 1
            if status != 200:
                errors += 1
            if now >= begin and loop.time() <= end:
                latencies.append(time.perf_counter() - t0)

    cpu_before = proxy.cpu_seconds() if proxy else 0.0
    tree_before = proxy.tree_cpu_seconds() if proxy else 0.0
    try:
        results = await asyncio.gather(*(worker(t) for t in tunnels))
    finally:
        for t in tunnels:
            t.close()
    nan = float("nan")
    cpu = (proxy.cpu_seconds() - cpu_before) / total * 1e6 if proxy and total else nan
    tree = (proxy.tree_cpu_seconds() - tree_before) / total * 1e6 if proxy and total else nan
    latencies = [x for r in results for x in r]
    return LoadResult(
        clients,
        len(latencies),
        seconds,
        percentile(latencies, 50) * 1e3,
        percentile(latencies, 99) * 1e3,
        errors,
        cpu,
        tree,
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What RESULTS.md says about where the figures come from."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    from mitmproxy import version

    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
        "mitmproxy": version.VERSION,
        "kernel": platform.release(),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["upstream"]:
        asyncio.run(_serve_upstream(sys.argv[2], sys.argv[3]))
