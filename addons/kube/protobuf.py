"""Kubernetes protobuf bodies: the `k8s\\0` envelope (runtime.Unknown) and the objects inside.

The wire format is decoded here without generated code, driven by the message table that
`protobuf_schema` builds from Kubernetes' own `generated.proto` files: every built-in kind in
that table (the workloads, Pod, PodTemplate, Secret, ConfigMap, Namespace, ...) is decoded in
full into its JSON form; other kinds yield apiVersion, kind and metadata only. Anything malformed,
or a field the table does not know, raises `ProtobufError`; callers treat that as "unknown body",
never as "empty body".
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from holdgate.kube import protobuf_schema

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ProtobufError(ValueError):
    """The bytes are not a well-formed Kubernetes protobuf message."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """The runtime.Unknown wrapper of every Kubernetes protobuf body."""

    api_version: str
    kind: str
    raw: bytes
    content_encoding: str
    content_type: str


Fields = list[tuple[int, int, Any]]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def parse_fields(data: bytes) -> Fields:
    """Split one message into (field number, wire type, value) triples."""
    fields: Fields = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        value: Any
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire == _I64:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == _I32:
            value, pos = data[pos : pos + 4], pos + 4
        elif wire == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("length-delimited field runs past the end")
            value, pos = data[pos : pos + length], pos + length
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ProtobufError("truncated field")
        fields.append((number, wire, value))
    return fields


def _text(value: Any) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a string field")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtobufError("string field is not UTF-8") from e


def _last(fields: Fields, number: int) -> Any:
    """The last occurrence of a scalar field: protobuf's (and the apiserver's) "last one wins"."""
    found = _last_wire(fields, number)
    return found[1] if found is not None else None


def _message(fields: Fields, number: int) -> bytes | None:
    """An embedded message field: repeated occurrences merge, as the apiserver's decoder does."""
    parts = []
    for n, _, v in fields:
        if n == number:
            if not isinstance(v, bytes):
                raise ProtobufError(f"field {number} is not a message")
            parts.append(v)
    return b"".join(parts) if parts else None


def decode_envelope(body: bytes) -> Envelope:
    """Decode the `k8s\\0` + runtime.Unknown envelope."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing k8s protobuf magic")
    fields = parse_fields(body[len(MAGIC) :])
    type_meta = _message(fields, 1)
    type_fields = parse_fields(type_meta) if type_meta is not None else []
    api_version = _last(type_fields, 1)
    kind = _last(type_fields, 2)
    raw = _last(fields, 2)
    return Envelope(
        api_version=_text(api_version) if api_version is not None else "",
        kind=_text(kind) if kind is not None else "",
        raw=raw if isinstance(raw, bytes) else b"",
        content_encoding=_text(_last(fields, 3) or b""),
        content_type=_text(_last(fields, 4) or b""),
    )


def _signed(value: int, bits: int) -> int:
    """A varint read as Go's int32/int64 conversion does (two's complement, truncated)."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _scalar(type_name: str, wire: int, value: Any, where: str) -> Any:
    if type_name in ("string", "bytes"):
        if wire != _LEN:
            raise ProtobufError(f"{where}: wrong wire type {wire} for {type_name}")
        return _text(value) if type_name == "string" else base64.b64encode(value).decode()
    if wire != _VARINT:
        raise ProtobufError(f"{where}: wrong wire type {wire} for {type_name}")
    if type_name == "bool":
        return bool(value)
    if type_name == "int32":
        return _signed(value, 32)
    if type_name == "int64":
        return _signed(value, 64)
    raise ProtobufError(f"{where}: unsupported type {type_name}")


def _packed(type_name: str, data: bytes, where: str) -> list[Any]:
    """A packed repeated numeric field (proto2 senders may pack; gogo reads both forms)."""
    values, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        values.append(_scalar(type_name, _VARINT, value, where))
    return values


def _go_duration(nanos: int) -> str:
    """metav1.Duration's JSON form: Go's time.Duration.String()."""
    if nanos == 0:
        return "0s"
    sign, nanos = ("-", -nanos) if nanos < 0 else ("", nanos)
    if nanos < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanos >= size:
                return f"{sign}{_trim(nanos / size)}{unit}"
    hours, rest = divmod(nanos, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = _trim(rest / 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    return f"{sign}{minutes}m{seconds}" if minutes else f"{sign}{seconds}"


def _trim(number: float) -> str:
    return f"{number:.9f}".rstrip("0").rstrip(".")


def _special(type_name: str, data: bytes) -> Any:
    """The JSON form of the apimachinery messages that are not plain objects."""
    fields = parse_fields(data)
    short = type_name.rsplit(".", 1)[1]
    if short == "Quantity":
        return _text(_last(fields, 1) or b"")
    if short == "IntOrString":
        if _last(fields, 1):
            return _text(_last(fields, 3) or b"")
        return _signed(_last(fields, 2) or 0, 32)
    if short in ("Time", "MicroTime"):
        if not data:
            return None  # Go's zero time: unset
        seconds = _signed(_last(fields, 1) or 0, 64)
        nanos = _signed(_last(fields, 2) or 0, 32)
        try:
            moment = datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError) as e:
            raise ProtobufError(f"{short} out of range") from e
        if short == "Time":
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos // 1000:06d}Z"
    if short == "Duration":
        return _go_duration(_signed(_last(fields, 1) or 0, 64))
    raw = _last(fields, 1)  # RawExtension, FieldsV1: JSON bytes
    if not raw:
        return None
    try:
        return json.loads(_text(raw))
    except ValueError as e:
        raise ProtobufError(f"{short} does not hold JSON") from e


def _value(type_name: str, wire: int, value: Any, where: str, depth: int) -> Any:
    if "." not in type_name:
        return _scalar(type_name, wire, value, where)
    if wire != _LEN:
        raise ProtobufError(f"{where}: wrong wire type {wire} for a message")
    if type_name in protobuf_schema.SPECIAL:
        return _special(type_name, value)
    return decode_message(type_name, value, depth + 1)


def decode_message(type_name: str, data: bytes, depth: int = 0) -> dict[str, Any]:
    """One message of the shipped table as its JSON object, decoded as the apiserver does.

    Last value wins for scalars, repeated occurrences of a message merge, repeated fields
    append, map entries overwrite by key. A zero value of a Go value field ("", false, 0) is
    left out, as Go's JSON does (it cannot be told from unset); pointer fields keep theirs
    (`runAsUser: 0`, `privileged: false`). A field the table does not know raises: what cannot
    be read is never skipped.
    """
    if depth > _MAX_DEPTH:
        raise ProtobufError("message nesting too deep")
    schema = protobuf_schema.table()["messages"][type_name]
    short = type_name.rsplit(".", 1)[1]
    out: dict[str, Any] = {}
    merged: dict[int, list[bytes]] = {}
    for number, wire, value in parse_fields(data):
        field = schema.get(number)
        if field is None:
            raise ProtobufError(f"field {number} of {short} is not known to holdgate")
        name, field_type, label = field
        where = f"{short}.{name}"
        if label == "map":
            if wire != _LEN:
                raise ProtobufError(f"{where}: wrong wire type {wire} for a map entry")
            key_type, value_type = field_type[4:-1].split(",")
            entry = parse_fields(value)
            key, item = _last_wire(entry, 1), _last_wire(entry, 2)
            out.setdefault(name, {})[_scalar(key_type, key[0], key[1], where) if key else ""] = (
                _value(value_type, item[0], item[1], where, depth) if item else _zero(value_type)
            )
        elif label == "repeated":
            items = out.setdefault(name, [])
            if "." not in field_type and field_type not in ("string", "bytes") and wire == _LEN:
                items.extend(_packed(field_type, value, where))
            else:
                items.append(_value(field_type, wire, value, where, depth))
        elif label == "inline" or ("." in field_type and field_type not in protobuf_schema.SPECIAL):
            if wire != _LEN:
                raise ProtobufError(f"{where}: wrong wire type {wire} for a message")
            merged.setdefault(number, []).append(value)
        else:
            decoded = _value(field_type, wire, value, where, depth)
            if decoded is None or (label == "value" and not decoded):  # zero means unset
                out.pop(name, None)
            else:
                out[name] = decoded
    for number, parts in merged.items():
        name, field_type, label = schema[number]
        decoded = decode_message(field_type, b"".join(parts), depth + 1)
        if label == "inline":  # an embedded Go struct: its fields are the parent's
            out.update(decoded)
        else:
            out[name] = decoded
    return out


_MAX_DEPTH = 64


def _last_wire(fields: Fields, number: int) -> tuple[int, Any] | None:
    """The last occurrence of a field, with its wire type."""
    found = None
    for n, wire, value in fields:
        if n == number:
            found = (wire, value)
    return found


def _zero(type_name: str) -> Any:
    if type_name in ("string", "bytes") or type_name in protobuf_schema.SPECIAL:
        return ""
    if type_name == "bool":
        return False
    return 0 if "." not in type_name else {}


_OBJECT_META = "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def decode_object_meta(data: bytes) -> dict[str, Any]:
    """Decode ObjectMeta into its JSON shape."""
    return decode_message(_OBJECT_META, data)


def object_meta(envelope: Envelope) -> dict[str, Any]:
    """The ObjectMeta of the enveloped object (field 1 of every top-level Kubernetes kind)."""
    meta = _message(parse_fields(envelope.raw), 1)
    return decode_object_meta(meta) if meta is not None else {}


def decodes(api_version: str, kind: str) -> bool:
    """Whether bodies of this kind are decoded in full (the shipped table knows the kind)."""
    return protobuf_schema.message_of(api_version, kind) is not None


def decode_object(envelope: Envelope) -> dict[str, Any]:
    """The enveloped object as JSON: in full for the kinds the table knows, else its metadata."""
    message = protobuf_schema.message_of(envelope.api_version, envelope.kind)
    if message is None:
        return {
            "apiVersion": envelope.api_version,
            "kind": envelope.kind,
            "metadata": object_meta(envelope),
        }
    obj: dict[str, Any] = {"apiVersion": envelope.api_version, "kind": envelope.kind}
    obj.update(decode_message(message, envelope.raw))
    obj.setdefault("metadata", {})
    return obj


# Encoding: used by tests and the sandbox to build bodies exactly as kubectl does.


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _map_entry(number: int, key: str, value: bytes) -> bytes:
    return _field(number, _field(1, key.encode()) + _field(2, value))


def _encode_scalar(type_name: str, number: int, value: Any) -> bytes:
    if type_name == "string":
        return _field(number, str(value).encode())
    if type_name == "bytes":
        return _field(number, base64.b64decode(value))
    if type_name not in ("bool", "int32", "int64"):
        raise ValueError(f"cannot encode type {type_name}")
    return _encode_varint(number << 3 | _VARINT) + _encode_varint(int(value) & (1 << 64) - 1)


def _encode_special(type_name: str, value: Any) -> bytes:
    short = type_name.rsplit(".", 1)[1]
    if short == "Quantity":
        return _field(1, str(value).encode())
    if short == "IntOrString":
        if isinstance(value, str):
            return _encode_scalar("int64", 1, 1) + _field(3, value.encode())
        return _encode_scalar("int64", 1, 0) + _encode_scalar("int32", 2, value)
    if short in ("Time", "MicroTime"):
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return _encode_scalar("int64", 1, int(moment.timestamp()))
    if short in ("RawExtension", "FieldsV1"):
        return _field(1, json.dumps(value).encode())
    raise ValueError(f"cannot encode {short}")


def _encode_value(type_name: str, number: int, value: Any) -> bytes:
    if "." not in type_name:
        return _encode_scalar(type_name, number, value)
    if type_name in protobuf_schema.SPECIAL:
        return _field(number, _encode_special(type_name, value))
    return _field(number, encode_message(type_name, value))


def encode_message(type_name: str, obj: dict[str, Any]) -> bytes:
    """A JSON object as the message the shipped table describes (tests and the sandbox)."""
    messages = protobuf_schema.table()["messages"]
    schema = messages[type_name]
    numbers = {
        name: (number, field_type, label) for number, (name, field_type, label) in schema.items()
    }
    out = b""
    for number, (_, field_type, label) in schema.items():
        if label == "inline":  # the parent's keys that belong to the embedded struct
            names = {f[0] for f in messages[field_type].values()}
            part = {k: obj[k] for k in obj if k in names and k not in numbers}
            obj = {k: v for k, v in obj.items() if k not in part}
            if part:
                out += _field(number, encode_message(field_type, part))
    for key, value in obj.items():
        if value is None:  # JSON null: unset
            continue
        if key not in numbers:
            raise ValueError(f"{type_name} has no field {key!r}")
        number, field_type, label = numbers[key]
        if label == "map":
            key_type, value_type = field_type[4:-1].split(",")
            for k, v in value.items():
                entry = _encode_scalar(key_type, 1, k) + _encode_value(value_type, 2, v)
                out += _field(number, entry)
        elif label == "repeated":
            out += b"".join(_encode_value(field_type, number, item) for item in value)
        else:
            out += _encode_value(field_type, number, value)
    return out


def encode_object(obj: dict[str, Any]) -> bytes:
    """A built-in object as kubectl's protobuf body (tests and the sandbox)."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    message = protobuf_schema.message_of(api_version, kind)
    fields = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    if message is None:
        raw = _field(1, encode_message(_OBJECT_META, fields.get("metadata", {})))
    else:
        raw = encode_message(message, fields)
    type_meta = _field(1, api_version.encode()) + _field(2, kind.encode())
    return MAGIC + _field(1, type_meta) + _field(2, raw) + _field(3, b"") + _field(4, b"")
