"""mitmproxy's native flow format (tnetstring), as the archive writes and reads it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mitmproxy.io import tnetstring


class Preserialized:
    """A state shared by many flows (a keep-alive connection's), serialized once."""

    __slots__ = ("_data", "state")

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        """The state as a tnetstring (computed on first use)."""
        if self._data is None:
            self._data = dumps(self.state)
        return self._data


def dumps(value: Any) -> bytes:
    """Serialize a flow state as mitmproxy.io.tnetstring.dumps does, byte for byte, faster."""
    parts: list[bytes] = []
    _dump(value, parts)
    return b"".join(parts)


def _dump(v: Any, parts: list[bytes]) -> int:
    # Containers recurse; scalars are formatted inline (this runs for every archived flow).
    t = type(v)
    if t is dict:
        i = len(parts)
        parts.append(b"")
        size = 0
        # mitmproxy writes a mapping's items last to first.
        for key, item in reversed(v.items()):
            if type(key) is str:
                data = key.encode()
                atom = b"%d:%s;" % (len(data), data)
            else:
                atom = _atom(key)
            parts.append(atom)
            size += len(atom)
            ti = type(item)
            if ti is dict or ti is list or ti is tuple or ti is Preserialized:
                size += _dump(item, parts)
            else:
                atom = _atom(item)
                parts.append(atom)
                size += len(atom)
        head = b"%d:" % size
        parts[i] = head
        parts.append(b"}")
        return len(head) + size + 1
    if t is list or t is tuple:
        i = len(parts)
        parts.append(b"")
        size = 0
        for item in v:
            ti = type(item)
            if ti is tuple and len(item) == 2 and type(item[0]) is bytes and type(item[1]) is bytes:
                # A header: (name, value).
                name, value = item
                payload = b"%d:%s,%d:%s," % (len(name), name, len(value), value)
                atom = b"%d:%s]" % (len(payload), payload)
            elif ti is dict or ti is list or ti is tuple or ti is Preserialized:
                size += _dump(item, parts)
                continue
            else:
                atom = _atom(item)
            parts.append(atom)
            size += len(atom)
        head = b"%d:" % size
        parts[i] = head
        parts.append(b"]")
        return len(head) + size + 1
    if t is Preserialized:
        parts.append(v.data)
        return len(v.data)
    atom = _atom(v)
    parts.append(atom)
    return len(atom)


_NONE, _TRUE, _FALSE = b"0:~", b"4:true!", b"5:false!"


def _atom(v: Any) -> bytes:
    t = type(v)
    if t is str:
        data = v.encode()
        return b"%d:%s;" % (len(data), data)
    if t is bytes:
        return b"%d:%s," % (len(v), v)
    if v is None:
        return _NONE
    if v is True:
        return _TRUE
    if v is False:
        return _FALSE
    if isinstance(v, int):
        data = str(int(v)).encode()
        return b"%d:%s#" % (len(data), data)
    if isinstance(v, float):
        data = repr(float(v)).encode()
        return b"%d:%s^" % (len(data), data)
    if isinstance(v, bytes):
        return _atom(bytes(v))
    if isinstance(v, str):
        return _atom(str.__str__(v))
    if isinstance(v, list | tuple | dict):
        parts: list[bytes] = []
        _dump(dict(v.items()) if isinstance(v, dict) else list(v), parts)
        return b"".join(parts)
    raise ValueError(f"unserializable object: {v!r} ({type(v)})")


def connection_state(state: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A flow state's client_conn or server_conn, whether shared (Preserialized) or plain."""
    conn = state.get(key)
    if isinstance(conn, Preserialized):
        return conn.state
    return conn if isinstance(conn, Mapping) else {}


def split_records(data: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Each complete flow record of a segment: its exact bytes and its state.

    Stops at the first incomplete or unreadable record (a crash's torn tail).
    """
    view = memoryview(data)
    while view:
        try:
            state, rest = tnetstring.pop(view)
        except (ValueError, TypeError, IndexError):
            return
        if not isinstance(state, dict):
            return
        size = len(view) - len(rest)
        yield bytes(view[:size]), state
        view = rest
