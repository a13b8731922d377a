"""Kubernetes protobuf bodies: the `k8s\\0` envelope (runtime.Unknown) and the fields we need.

Only the wire format is decoded here (no generated code): the envelope's apiVersion and kind,
the object's ObjectMeta, and the few kinds the sandbox stores in full (Namespace, Secret,
ConfigMap). Anything malformed raises `ProtobufError`; callers treat that as "unknown body",
never as "empty body".
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

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
    value = None
    for n, _, v in fields:
        if n == number:
            value = v
    return value


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


def _string_map_entry(entry: Any) -> tuple[str, bytes]:
    if not isinstance(entry, bytes):
        raise ProtobufError("map entry is not length-delimited")
    fields = parse_fields(entry)
    key = _last(fields, 1)
    value = _last(fields, 2)
    return _text(key or b""), value if isinstance(value, bytes) else b""


_META_STRINGS = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}


def decode_object_meta(data: bytes) -> dict[str, Any]:
    """Decode ObjectMeta into its JSON shape (the fields a create can carry)."""
    meta: dict[str, Any] = {}
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    finalizers: list[str] = []
    for number, _, value in parse_fields(data):
        # Go encodes unset strings as "": leave them out, as the apiserver's decoder does.
        if number in _META_STRINGS:
            text = _text(value)
            if text:
                meta[_META_STRINGS[number]] = text
        elif number == 11:
            k, v = _string_map_entry(value)
            labels[k] = _text(v)
        elif number == 12:
            k, v = _string_map_entry(value)
            annotations[k] = _text(v)
        elif number == 14:
            finalizers.append(_text(value))
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    if finalizers:
        meta["finalizers"] = finalizers
    return meta


def object_meta(envelope: Envelope) -> dict[str, Any]:
    """The ObjectMeta of the enveloped object (field 1 of every top-level Kubernetes kind)."""
    meta = _message(parse_fields(envelope.raw), 1)
    return decode_object_meta(meta) if meta is not None else {}


def decode_object(envelope: Envelope) -> dict[str, Any]:
    """The enveloped object as JSON: in full for Namespace, Secret and ConfigMap, else its metadata."""
    fields = parse_fields(envelope.raw)
    obj: dict[str, Any] = {"apiVersion": envelope.api_version, "kind": envelope.kind}
    meta = _message(fields, 1)
    obj["metadata"] = decode_object_meta(meta) if meta is not None else {}
    if envelope.kind == "Secret":
        data: dict[str, str] = {}
        string_data: dict[str, str] = {}
        for number, _, value in fields:
            if number == 2:
                k, v = _string_map_entry(value)
                data[k] = base64.b64encode(v).decode("ascii")
            elif number == 3 and (secret_type := _text(value)):
                obj["type"] = secret_type
            elif number == 4:
                k, v = _string_map_entry(value)
                string_data[k] = _text(v)
            elif number == 5:
                obj["immutable"] = bool(value)
        if data:
            obj["data"] = data
        if string_data:
            obj["stringData"] = string_data
    elif envelope.kind == "ConfigMap":
        cm_data: dict[str, str] = {}
        binary: dict[str, str] = {}
        for number, _, value in fields:
            if number == 2:
                k, v = _string_map_entry(value)
                cm_data[k] = _text(v)
            elif number == 3:
                k, v = _string_map_entry(value)
                binary[k] = base64.b64encode(v).decode("ascii")
            elif number == 4:
                obj["immutable"] = bool(value)
        if cm_data:
            obj["data"] = cm_data
        if binary:
            obj["binaryData"] = binary
    elif envelope.kind == "Namespace":
        obj["spec"] = {}
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


def encode_object(obj: dict[str, Any]) -> bytes:
    """Encode a Namespace, Secret or ConfigMap as kubectl's protobuf body (tests and sandbox)."""
    meta = obj.get("metadata", {})
    meta_bytes = b""
    for number, key in ((1, "name"), (2, "generateName"), (3, "namespace")):
        if meta.get(key):
            meta_bytes += _field(number, meta[key].encode())
    for k, v in meta.get("labels", {}).items():
        meta_bytes += _map_entry(11, k, v.encode())
    for k, v in meta.get("annotations", {}).items():
        meta_bytes += _map_entry(12, k, v.encode())
    raw = _field(1, meta_bytes)
    kind = obj.get("kind", "")
    if kind == "Secret":
        for k, v in obj.get("data", {}).items():
            raw += _map_entry(2, k, base64.b64decode(v))
        if obj.get("type"):
            raw += _field(3, obj["type"].encode())
        for k, v in obj.get("stringData", {}).items():
            raw += _map_entry(4, k, v.encode())
    elif kind == "ConfigMap":
        for k, v in obj.get("data", {}).items():
            raw += _map_entry(2, k, v.encode())
    type_meta = _field(1, obj.get("apiVersion", "").encode()) + _field(2, kind.encode())
    return MAGIC + _field(1, type_meta) + _field(2, raw) + _field(3, b"") + _field(4, b"")
