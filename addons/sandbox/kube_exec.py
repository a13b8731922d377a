"""`pods/exec` over WebSocket: the channel.k8s.io framing and a tiny fake shell.

Framing (k8s.io/apimachinery/pkg/util/remotecommand, client-go tools/remotecommand/websocket.go):
binary messages whose first byte is the stream id: 0 stdin, 1 stdout, 2 stderr, 3 error
(a `Status` JSON from v4 on), 4 resize; v5 adds 255 = "close stream N" (kubectl half-closes stdin
with [255, 0]). The base64 variants send text messages: an ASCII digit, then base64 data.
The server ends with the status on channel 3 and a normal (1000) close: kubectl reads its
stdout, stderr and error streams until that close, then exits with the command's code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import WSMsgType, web

Obj = dict[str, Any]

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255

# Preference order when a client offers several (kubectl offers only v5).
PROTOCOLS = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
)

FILES = {
    "/etc/hostname": "{pod}\n",
    "/etc/os-release": 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.22.0\n',
    "/etc/resolv.conf": "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
}
LISTING = "bin\ndev\netc\nhome\nlib\nproc\nroot\nrun\nsys\ntmp\nusr\nvar\n"


@dataclass(frozen=True, slots=True)
class ChannelProtocol:
    """One negotiated channel.k8s.io subprotocol."""

    name: str

    @property
    def base64(self) -> bool:
        """Text frames with base64 payloads."""
        return "base64" in self.name

    @property
    def status_errors(self) -> bool:
        """The error channel carries a `Status` (v4 and later) rather than plain text."""
        return self.name.startswith(("v4.", "v5."))

    @property
    def can_close(self) -> bool:
        """The client may half-close streams (v5)."""
        return self.name.startswith("v5.")

    def encode(self, channel: int, data: bytes) -> bytes | str:
        """One outgoing frame."""
        if self.base64:
            return str(channel) + base64.b64encode(data).decode("ascii")
        return bytes([channel]) + data

    def decode(self, message: bytes | str) -> tuple[int, bytes]:
        """(channel, payload) of one incoming frame; channel -1 if empty."""
        if isinstance(message, str):
            if not message:
                return -1, b""
            if self.base64 and message[0].isdigit():
                return int(message[0]), base64.b64decode(message[1:] or "")
            raw = message.encode()
            return raw[0], raw[1:]
        if not message:
            return -1, b""
        return message[0], bytes(message[1:])


@dataclass(frozen=True, slots=True)
class ExecRecord:
    """One finished `pods/exec` session: what ran where, what it read and how it ended."""

    namespace: str
    pod: str
    container: str
    command: tuple[str, ...]
    protocol: str
    stdin: bytes
    exit_code: int


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """The query of a `pods/exec` request."""

    namespace: str
    pod: str
    container: str
    command: tuple[str, ...]
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    tty: bool = False


def exec_status(request: ExecRequest, exit_code: int) -> Obj:
    """The final `Status` on the error channel (v4+)."""
    if exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": (
            "command terminated with non-zero exit code: error executing command "
            f"[{' '.join(request.command)}], exit code {exit_code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


def status_frame(protocol: ChannelProtocol, request: ExecRequest, exit_code: int) -> bytes:
    """The error-channel payload for this protocol (empty: nothing to send)."""
    status = exec_status(request, exit_code)
    if protocol.status_errors:
        return json.dumps(status, separators=(",", ":")).encode()
    return status.get("message", "").encode()


class ExecStreams(Protocol):
    """What the shell needs from the transport."""

    async def write(self, channel: int, data: bytes) -> None:
        """Send data on an output channel."""
        ...

    async def read_stdin(self) -> bytes | None:
        """The next stdin chunk; None once stdin is closed (or was never opened)."""
        ...


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class FakeShell:
    """A few commands, enough to tell exec works end to end (and what it ran)."""

    request: ExecRequest
    streams: ExecStreams
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        defaults = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME": self.request.pod,
            "HOME": "/root",
            "KUBERNETES_SERVICE_HOST": "10.96.0.1",
            "KUBERNETES_SERVICE_PORT": "443",
            "KUBERNETES_PORT": "tcp://10.96.0.1:443",
        }
        if self.request.tty:
            defaults["TERM"] = "xterm"
        self.env = {**defaults, **self.env}

    async def _out(self, text: str | bytes, channel: int = STDOUT) -> None:
        data = text.encode() if isinstance(text, str) else text
        if self.request.tty:
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            channel = STDOUT
        wanted = self.request.stdout if channel == STDOUT else self.request.stderr
        if data and wanted:
            await self.streams.write(channel, data)

    async def _err(self, text: str) -> None:
        await self._out(text, STDERR)

    async def run(self) -> int:
        """Run the requested argv; the exit code."""
        try:
            return await self._command(list(self.request.command))
        except _Exit as e:
            return e.code

    async def _command(self, argv: list[str]) -> int:
        if not argv:
            return 0
        name, args = argv[0].rsplit("/", 1)[-1], argv[1:]
        if name in ("sh", "bash", "ash"):
            if len(args) >= 2 and args[0] == "-c":
                return await self._script(args[1])
            return await self._interactive()
        if name == "exit":
            raise _Exit(int(args[0]) if args and args[0].lstrip("-").isdigit() else 0)
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            await self._err(f"{argv[0]}: command not found\n")
            return 127
        code: int = await handler(args)
        return code

    async def _script(self, script: str) -> int:
        """`;`, `&&` and `||` lists of simple commands."""
        lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError as e:
            await self._err(f"sh: syntax error: {e}\n")
            return 2
        code, joiner = 0, ";"
        current: list[str] = []
        for token in [*tokens, ";"]:
            if token in (";", "&&", "||"):
                run = (
                    joiner == ";"
                    or (joiner == "&&" and code == 0)
                    or (joiner == "||" and code != 0)
                )
                if run and current:
                    code = await self._command(current)
                current, joiner = [], token
            else:
                current.append(token)
        return code

    async def _interactive(self) -> int:
        """`sh` reading commands from stdin (with a prompt and echo on a tty)."""
        code, buffer = 0, b""
        if self.request.tty:
            await self._out("/ # ")
        while (chunk := await self.streams.read_stdin()) is not None:
            if self.request.tty:
                await self._out(chunk.replace(b"\r", b"\n"))
            buffer += chunk.replace(b"\r", b"\n")
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                code = await self._script(line.decode(errors="replace"))
                if self.request.tty:
                    await self._out("/ # ")
        if buffer.strip():
            code = await self._script(buffer.decode(errors="replace"))
        return code

    # -- commands (each returns its exit code)

    async def _cmd_echo(self, args: list[str]) -> int:
        newline = True
        if args and args[0] == "-n":
            newline, args = False, args[1:]
        await self._out(" ".join(args) + ("\n" if newline else ""))
        return 0

    async def _cmd_hostname(self, args: list[str]) -> int:
        await self._out(f"{self.request.pod}\n")
        return 0

    async def _cmd_cat(self, args: list[str]) -> int:
        if not args or args == ["-"]:
            while (chunk := await self.streams.read_stdin()) is not None:
                await self._out(chunk)
            return 0
        code = 0
        for path in args:
            text = FILES.get(path)
            if text is None:
                await self._err(f"cat: can't open '{path}': No such file or directory\n")
                code = 1
            else:
                await self._out(text.format(pod=self.request.pod, namespace=self.request.namespace))
        return code

    async def _cmd_env(self, args: list[str]) -> int:
        await self._out("".join(f"{k}={v}\n" for k, v in self.env.items()))
        return 0

    async def _cmd_printenv(self, args: list[str]) -> int:
        if not args:
            return await self._cmd_env(args)
        values = [self.env[a] for a in args if a in self.env]
        await self._out("".join(f"{v}\n" for v in values))
        return 0 if len(values) == len(args) else 1

    async def _cmd_true(self, args: list[str]) -> int:
        return 0

    async def _cmd_false(self, args: list[str]) -> int:
        return 1

    async def _cmd_pwd(self, args: list[str]) -> int:
        await self._out("/\n")
        return 0

    async def _cmd_whoami(self, args: list[str]) -> int:
        await self._out("root\n")
        return 0

    async def _cmd_id(self, args: list[str]) -> int:
        await self._out("uid=0(root) gid=0(root) groups=0(root)\n")
        return 0

    async def _cmd_ls(self, args: list[str]) -> int:
        await self._out(LISTING)
        return 0

    async def _cmd_uname(self, args: list[str]) -> int:
        full = f"Linux {self.request.pod} 6.8.0 #1 SMP x86_64 Linux\n"
        await self._out(full if "-a" in args else "Linux\n")
        return 0

    async def _cmd_date(self, args: list[str]) -> int:
        await self._out(datetime.now(UTC).strftime("%a %b %d %H:%M:%S UTC %Y\n"))
        return 0

    async def _cmd_sleep(self, args: list[str]) -> int:
        try:
            seconds = min(float(args[0]), 60.0) if args else 0.0
        except ValueError:
            await self._err(f"sleep: invalid number '{args[0]}'\n")
            return 1
        await asyncio.sleep(seconds)
        return 0


# ---------------------------------------------------------------- the WebSocket session


@dataclass
class WebSocketStreams:
    """The WebSocket side of an exec session: writes frames, pumps stdin and resizes."""

    ws: web.WebSocketResponse
    protocol: ChannelProtocol
    stdin_open: bool
    received: bytearray = field(default_factory=bytearray)
    resizes: list[Obj] = field(default_factory=list)
    _stdin: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)

    async def write(self, channel: int, data: bytes) -> None:
        """Send one frame."""
        frame = self.protocol.encode(channel, data)
        if isinstance(frame, str):
            await self.ws.send_str(frame)
        else:
            await self.ws.send_bytes(frame)

    async def read_stdin(self) -> bytes | None:
        """The next stdin chunk, None at end of input."""
        if not self.stdin_open:
            return None
        chunk = await self._stdin.get()
        if chunk is None:
            self.stdin_open = False
        return chunk

    async def pump(self) -> None:
        """Demultiplex client frames until the socket closes."""
        try:
            async for message in self.ws:
                if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                channel, data = self.protocol.decode(message.data)
                if channel == STDIN:
                    if data:
                        self.received.extend(data)
                        self._stdin.put_nowait(data)
                elif channel == CLOSE and self.protocol.can_close and data[:1] == bytes([STDIN]):
                    self._stdin.put_nowait(None)
                elif channel == RESIZE:
                    with contextlib.suppress(ValueError):
                        self.resizes.append(json.loads(data))
        finally:
            self._stdin.put_nowait(None)


async def serve_exec(ws: web.WebSocketResponse, request: ExecRequest) -> ExecRecord:
    """Run one exec session on a prepared WebSocket: shell, final status, normal close."""
    protocol = ChannelProtocol(ws.ws_protocol or "channel.k8s.io")
    streams = WebSocketStreams(ws, protocol, request.stdin)
    reader = asyncio.create_task(streams.pump())
    exit_code = 1
    try:
        # The apiserver announces the session with an empty frame on the lowest output channel.
        first = STDOUT if request.stdout else STDERR if request.stderr else ERROR
        await streams.write(first, b"")
        exit_code = await FakeShell(request, streams).run()
        frame = status_frame(protocol, request, exit_code)
        if frame:
            await streams.write(ERROR, frame)
        await ws.close(code=1000)
    except ConnectionError:
        pass  # the client went away; the record still says what ran
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return ExecRecord(
        namespace=request.namespace,
        pod=request.pod,
        container=request.container,
        command=request.command,
        protocol=protocol.name,
        stdin=bytes(streams.received),
        exit_code=exit_code,
    )
