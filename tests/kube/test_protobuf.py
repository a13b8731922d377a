"""holdgate.kube.protobuf: round trips, malformed bodies, and random bytes."""

from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from holdgate.kube.protobuf import (
    CONTENT_TYPE,
    MAGIC,
    Envelope,
    ProtobufError,
    _encode_varint,
    _field,
    decode_envelope,
    decode_message,
    decode_object,
    decode_object_meta,
    encode_message,
    encode_object,
    object_meta,
)
from holdgate.kube.protobuf_schema import go_fields, parse_proto, table

TYPE_META_SECRET = _field(1, _field(1, b"v1") + _field(2, b"Secret"))


def envelope(kind: str, raw: bytes) -> bytes:
    """A `k8s\\0` body around raw object bytes."""
    return MAGIC + _field(1, _field(1, b"v1") + _field(2, kind.encode())) + _field(2, raw)


ROUND_TRIPS = [
    pytest.param(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "db",
                "namespace": "prod",
                "labels": {"app": "web", "tier": ""},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": '{"a":1}'},
            },
            "data": {"password": base64.b64encode(b"\x00hunter2\xff").decode(), "empty": ""},
            "stringData": {"token": "t0k3n"},
            "type": "kubernetes.io/basic-auth",
        },
        id="secret",
    ),
    pytest.param(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"generateName": "db-"}},
        id="secret with generateName only",
    ),
    pytest.param(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cm", "namespace": "ns"},
            "data": {"config.yaml": "a: 1\nb: [x, y]\n", "ünïcode": "✓"},
        },
        id="configmap",
    ),
    pytest.param(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}, "spec": {}},
        id="namespace",
    ),
    pytest.param(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns"},
        },
        id="another kind: metadata only",
    ),
]


@pytest.mark.parametrize("obj", ROUND_TRIPS)
def test_round_trip(obj: dict[str, Any]) -> None:
    body = encode_object(obj)
    assert body.startswith(MAGIC)
    env = decode_envelope(body)
    assert (env.api_version, env.kind, env.content_encoding, env.content_type) == (
        obj["apiVersion"],
        obj["kind"],
        "",
        "",
    )
    assert object_meta(env) == obj["metadata"]
    assert decode_object(env) == obj


def test_content_type() -> None:
    assert CONTENT_TYPE == "application/vnd.kubernetes.protobuf"


def test_envelope_fields() -> None:
    raw = _field(1, _field(1, b"x"))
    body = MAGIC + TYPE_META_SECRET + _field(2, raw) + _field(3, b"gzip") + _field(4, b"ct")
    assert decode_envelope(body) == Envelope("v1", "Secret", raw, "gzip", "ct")


def test_unknown_fields_are_refused_not_skipped() -> None:
    """A field the table does not know could be what a rule is about: never read past it."""
    raw = _field(1, _field(1, b"db")) + _encode_varint(9 << 3 | 1) + b"\x00" * 8
    with pytest.raises(ProtobufError, match="field 9 of Secret is not known"):
        decode_object(decode_envelope(envelope("Secret", raw)))
    in_meta = _field(1, _field(1, b"db") + _encode_varint(99 << 3) + _encode_varint(7))
    with pytest.raises(ProtobufError, match="field 99 of ObjectMeta is not known"):
        decode_object(decode_envelope(envelope("Secret", in_meta)))
    # Kinds decoded for their metadata only never look at the rest of the object.
    other = _field(1, _field(1, b"r")) + _encode_varint(9 << 3 | 1) + b"\x00" * 8
    body = MAGIC + _field(1, _field(1, b"rbac.authorization.k8s.io/v1") + _field(2, b"Role"))
    assert object_meta(decode_envelope(body + _field(2, other))) == {"name": "r"}


def test_empty_envelope() -> None:
    env = decode_envelope(MAGIC)
    assert env == Envelope("", "", b"", "", "")
    assert object_meta(env) == {}


MALFORMED = [
    pytest.param(b"", "missing k8s protobuf magic", id="empty"),
    pytest.param(b"k8s", "missing k8s protobuf magic", id="short magic"),
    pytest.param(b"k8s\x01" + TYPE_META_SECRET, "missing k8s protobuf magic", id="wrong magic"),
    pytest.param(b'{"kind":"Secret"}', "missing k8s protobuf magic", id="json"),
    pytest.param(MAGIC + b"\x0a", "truncated varint", id="key without a length"),
    pytest.param(MAGIC + b"\x0a\x80", "truncated varint", id="truncated length varint"),
    pytest.param(MAGIC + b"\x80", "truncated varint", id="truncated key varint"),
    pytest.param(MAGIC + b"\x08\xff\xff", "truncated varint", id="truncated value varint"),
    pytest.param(MAGIC + b"\x08" + b"\xff" * 10 + b"\x01", "varint too long", id="varint too long"),
    pytest.param(MAGIC + b"\x0a\x05ab", "runs past the end", id="length past the end"),
    pytest.param(MAGIC + b"\x0a\xff\xff\xff\xff\x0f", "runs past the end", id="huge length"),
    pytest.param(MAGIC + TYPE_META_SECRET[:-1], "runs past the end", id="truncated TypeMeta"),
    pytest.param(MAGIC + b"\x09\x00\x00", "truncated field", id="truncated fixed64"),
    pytest.param(MAGIC + b"\x0d\x00", "truncated field", id="truncated fixed32"),
    pytest.param(MAGIC + b"\x00\x00", "field number 0", id="field number 0"),
    pytest.param(MAGIC + b"\x0b", "unsupported wire type 3", id="start group"),
    pytest.param(MAGIC + b"\x0e", "unsupported wire type 6", id="wire type 6"),
    pytest.param(MAGIC + _field(1, b"\x0a\x05ab"), "runs past the end", id="bad TypeMeta"),
    pytest.param(MAGIC + _field(1, _field(2, b"\xff")), "not UTF-8", id="kind not UTF-8"),
    pytest.param(MAGIC + _field(1, b"\x10\x01"), "expected a string field", id="kind as a varint"),
    pytest.param(MAGIC + b"\x18\x01", "expected a string field", id="contentEncoding as a varint"),
]


@pytest.mark.parametrize(("body", "reason"), MALFORMED)
def test_malformed_envelope(body: bytes, reason: str) -> None:
    with pytest.raises(ProtobufError, match=reason):
        decode_envelope(body)


MALFORMED_OBJECTS = [
    pytest.param("Secret", b"\x0a\x05ab", "runs past the end", id="raw length past the end"),
    pytest.param(
        "Secret", _field(1, b"\x0a\x05ab"), "runs past the end", id="ObjectMeta past the end"
    ),
    pytest.param("Secret", _field(1, _field(1, b"\xc3\x28")), "not UTF-8", id="name not UTF-8"),
    pytest.param(
        "Secret", _field(1, b"\x08\x01"), "wrong wire type 0 for string", id="name as a varint"
    ),
    pytest.param(
        "Secret", _field(1, _field(11, b"\x0a")), "truncated varint", id="truncated label"
    ),
    pytest.param("Secret", _field(3, b"\xff"), "not UTF-8", id="type not UTF-8"),
    pytest.param("Secret", _field(2, b"\x12\x09"), "runs past the end", id="truncated data entry"),
    pytest.param(
        "ConfigMap",
        _field(2, _field(1, b"k") + _field(2, b"\xff")),
        "not UTF-8",
        id="data not UTF-8",
    ),
    pytest.param("Pod", b"\x80", "truncated varint", id="truncated pod"),
]


@pytest.mark.parametrize(("kind", "raw", "reason"), MALFORMED_OBJECTS)
def test_malformed_object(kind: str, raw: bytes, reason: str) -> None:
    env = decode_envelope(envelope(kind, raw))
    with pytest.raises(ProtobufError, match=reason):
        decode_object(env)


@given(st.one_of(st.binary(), st.binary().map(lambda tail: MAGIC + tail)))
def test_decode_envelope_on_random_bytes(body: bytes) -> None:
    try:
        env = decode_envelope(body)
    except ProtobufError:
        return
    assert isinstance(env, Envelope)


@settings(report_multiple_bugs=False)
@given(kind=st.sampled_from(["Secret", "ConfigMap", "Namespace", "Pod", ""]), raw=st.binary())
@example(kind="Secret", raw=_encode_varint(2 << 3) + _encode_varint(1))
def test_decode_object_on_random_bytes(kind: str, raw: bytes) -> None:
    try:
        env = decode_envelope(envelope(kind, raw))
        meta = object_meta(env)
        obj = decode_object(env)
    except ProtobufError:
        return
    assert obj["metadata"] == meta


@pytest.mark.parametrize(
    "raw",
    [
        _encode_varint(2 << 3) + _encode_varint(1),
        _field(1, _encode_varint(11 << 3) + _encode_varint(1)),
    ],
    ids=["secret data as a varint", "label as a varint"],
)
def test_map_entry_with_the_wrong_wire_type(raw: bytes) -> None:
    with pytest.raises(ProtobufError):
        decode_object(decode_envelope(envelope("Secret", raw)))


def test_repeated_fields_merge_like_the_apiserver() -> None:
    # gogo-protobuf, which the apiserver uses, merges repeated messages and keeps a scalar's last value.
    body = (
        MAGIC
        + _field(1, _field(1, b"v1") + _field(2, b"ConfigMap"))
        + _field(1, _field(2, b"Secret"))
        + _field(2, _field(1, _field(1, b"a")))
        + _field(2, _field(1, _field(1, b"b")))
    )
    env = decode_envelope(body)
    assert (env.api_version, env.kind, object_meta(env)) == ("v1", "Secret", {"name": "b"})


def test_repeated_scalar_in_object_meta_keeps_the_last() -> None:
    raw = _field(1, _field(1, b"a") + _field(1, b"b") + _field(3, b"x") + _field(3, b"y"))
    assert object_meta(decode_envelope(envelope("Secret", raw))) == {"name": "b", "namespace": "y"}


names = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
string_maps = st.dictionaries(names, names, max_size=4)


@given(
    name=names,
    namespace=names,
    labels=string_maps,
    annotations=string_maps,
    data=st.dictionaries(names, st.binary(max_size=20), max_size=4),
    string_data=string_maps,
    secret_type=names,
)
def test_secret_round_trip(
    name: str,
    namespace: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    data: dict[str, bytes],
    string_data: dict[str, str],
    secret_type: str,
) -> None:
    metadata = {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations}
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {key: value for key, value in metadata.items() if value},
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
        "stringData": string_data,
        "type": secret_type,
    }
    obj = {key: value for key, value in obj.items() if value or key == "metadata"}
    assert decode_object(decode_envelope(encode_object(obj))) == obj


@given(name=names, data=string_maps)
def test_configmap_round_trip(name: str, data: dict[str, str]) -> None:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name} if name else {},
    }
    if data:
        obj["data"] = data
    assert decode_object(decode_envelope(encode_object(obj))) == obj


# Decoding as the apiserver does: the table's types, Go's merge rules and JSON forms.

POD = "k8s.io.api.core.v1.Pod"
CONTAINER = "k8s.io.api.core.v1.Container"
POD_SPEC = "k8s.io.api.core.v1.PodSpec"


def test_workloads_round_trip_in_full() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
            "template": {
                "spec": {
                    "hostPID": True,
                    "securityContext": {"runAsUser": 0, "supplementalGroups": [1, 2]},
                    "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                    "containers": [
                        {
                            "name": "c",
                            "image": "nginx",
                            "resources": {"limits": {"cpu": "500m"}},
                            "securityContext": {
                                "privileged": False,
                                "capabilities": {"add": ["SYS_ADMIN"]},
                                "runAsUser": -1,
                            },
                        }
                    ],
                }
            },
        },
    }
    assert decode_object(decode_envelope(encode_object(deployment))) == deployment


def test_scalars_last_wins_messages_merge_and_repeated_fields_append() -> None:
    first = encode_message(CONTAINER, {"name": "a", "securityContext": {"privileged": True}})
    second = encode_message(CONTAINER, {"name": "b", "securityContext": {"runAsUser": 5}})
    assert decode_message(CONTAINER, first + second) == {
        "name": "b",
        "securityContext": {"privileged": True, "runAsUser": 5},
    }
    spec = encode_message("k8s.io.api.core.v1.PodSpec", {"containers": [{"name": "a"}]})
    twice = decode_message("k8s.io.api.core.v1.PodSpec", spec + spec)
    assert twice == {"containers": [{"name": "a"}, {"name": "a"}]}


def test_packed_repeated_integers_and_negative_int32() -> None:
    packed = bytes([1, 2, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])  # 1, 2, then 2**32-1 read as int64
    context = "k8s.io.api.core.v1.PodSecurityContext"
    number = next(
        n for n, f in table()["messages"][context].items() if f[0] == "supplementalGroups"
    )
    data = _field(number, packed)
    assert decode_message(context, data) == {"supplementalGroups": [1, 2, 2**32 - 1]}
    minus_one = _encode_varint(2**64 - 1)
    probe = "k8s.io.api.core.v1.Probe"
    number = next(n for n, f in table()["messages"][probe].items() if f[0] == "periodSeconds")
    assert decode_message(probe, _encode_varint(number << 3) + minus_one) == {"periodSeconds": -1}


def test_json_forms_of_apimachinery_types() -> None:
    meta = decode_object_meta(_field(8, b""))  # creationTimestamp: Go's zero time
    assert meta == {}
    stamped = decode_object_meta(_field(8, _encode_varint(1 << 3) + _encode_varint(1700000000)))
    assert stamped == {"creationTimestamp": "2023-11-14T22:13:20Z"}
    port = "k8s.io.api.core.v1.ServicePort"
    named = encode_message(port, {"targetPort": "http"})
    numbered = encode_message(port, {"targetPort": 8080})
    assert decode_message(port, named) == {"targetPort": "http"}
    assert decode_message(port, numbered) == {"targetPort": 8080}


def test_wire_type_mismatches_and_unknown_fields_raise() -> None:
    with pytest.raises(ProtobufError, match="wrong wire type 2 for bool"):
        # SecurityContext.privileged (field 2) sent length-delimited
        decode_message("k8s.io.api.core.v1.SecurityContext", _field(2, b"\x01"))
    with pytest.raises(ProtobufError, match="field 200 of Container is not known"):
        decode_message(CONTAINER, _field(200, b""))


def test_the_table_is_built_from_generated_proto_text() -> None:
    proto = """
syntax = "proto2";
package k8s.io.api.core.v1;
// Volume represents a named volume in a pod.
message Volume {
  // name of the volume.
  optional string name = 1;

  optional VolumeSource volumeSource = 2;
}
message VolumeSource {
  optional .k8s.io.apimachinery.pkg.api.resource.Quantity sizeLimit = 3;
  repeated string command = 4;
  map<string, string> labels = 5;
}
"""
    assert parse_proto(proto) == {
        "k8s.io.api.core.v1.Volume": {
            1: ("name", "string", "optional"),
            2: ("volumeSource", "k8s.io.api.core.v1.VolumeSource", "optional"),
        },
        "k8s.io.api.core.v1.VolumeSource": {
            3: ("sizeLimit", "k8s.io.apimachinery.pkg.api.resource.Quantity", "optional"),
            4: ("command", "string", "repeated"),
            5: ("labels", "map<string,string>", "map"),
        },
    }
    # gogo's Unmarshal says which fields are Go values, pointers, or embedded structs.
    unmarshal = """
func (m *Volume) Unmarshal(dAtA []byte) error {
\tfor iNdEx < l {
\t\tswitch fieldNum {
\t\tcase 1:
\t\t\tm.Name = string(dAtA[iNdEx:postIndex])
\t\tcase 2:
\t\t\tif err := m.VolumeSource.Unmarshal(dAtA[iNdEx:postIndex]); err != nil {
\t\tcase 3:
\t\t\tm.ReadOnly = &b
\t\t}
\t}
}
"""
    values, embedded = go_fields(unmarshal, "k8s.io.api.core.v1")
    volume = "k8s.io.api.core.v1.Volume"
    assert values == {(volume, 1), (volume, 2)}
    assert embedded == {(volume, 2, "VolumeSource")}
    shipped = table()
    assert set(shipped["kinds"]) >= {"apps/v1/DaemonSet", "batch/v1/CronJob", "v1/Pod"}
    assert "k8s.io/api" in shipped["source"]
    # From gogo's Unmarshal: pointers keep their zero value, value fields drop it as JSON does.
    security, spec = (
        shipped["messages"][f"k8s.io.api.core.v1.{m}"] for m in ("SecurityContext", "PodSpec")
    )
    assert security[2] == ("privileged", "bool", "optional") and security[4][2] == "optional"
    assert spec[11] == ("hostNetwork", "bool", "value")
    sent = encode_message(POD_SPEC, {"hostNetwork": False, "securityContext": {"runAsUser": 0}})
    assert decode_message(POD_SPEC, sent) == {"securityContext": {"runAsUser": 0}}


# Kubernetes' own round-trip fixtures: every field set, protobuf and JSON of the same object.

FIXTURES = Path(__file__).with_name("protobuf_fixtures") / "roundtrip.tar.xz"


def _fixture_pairs() -> dict[str, tuple[bytes, Any]]:
    with tarfile.open(FIXTURES) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}  # type: ignore[union-attr]
    return {
        name.removesuffix(".pb"): (data, json.loads(files[name.removesuffix(".pb") + ".json"]))
        for name, data in files.items()
        if name.endswith(".pb")
    }


PAIRS = _fixture_pairs()


def _as_go_json(value: Any) -> Any:
    """JSON as Go writes it, less what a zero value and an unset one cannot tell apart."""
    if isinstance(value, dict):
        kept = {k: _as_go_json(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None}
    if isinstance(value, list):
        return [_as_go_json(v) for v in value]
    return value


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_kubernetes_round_trip_fixtures_decode_to_their_json(name: str) -> None:
    data, expected = PAIRS[name]
    decoded = decode_object(decode_envelope(data))
    assert _as_go_json(decoded) == _as_go_json(expected)


def test_every_kind_decoded_in_full_has_a_fixture() -> None:
    kinds = {name.rsplit(".", 1)[1] for name in PAIRS}
    assert kinds == {key.rsplit("/", 1)[1] for key in table()["kinds"]}
