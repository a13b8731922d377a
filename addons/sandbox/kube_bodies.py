"""Request bodies as the apiserver decodes them: JSON, YAML and Kubernetes protobuf.

Protobuf envelopes go through `holdgate.kube.protobuf`; for Pods and Deployments (what
`kubectl run` and `kubectl create deployment` send) the few spec fields those generators set
are decoded here too, so the stored object is the one kubectl meant.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from holdgate.kube import protobuf as kube_protobuf
from holdgate.kube.protobuf import Fields, ProtobufError, parse_fields
from holdgate.sandbox.kube_status import StatusError

Obj = dict[str, Any]

JSON = "application/json"
YAML = "application/yaml"
PROTOBUF = kube_protobuf.CONTENT_TYPE
BODY_TYPES = [JSON, YAML, PROTOBUF]


def media_type(content_type: str) -> str:
    """The lower-case media type without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def decode_json(body: bytes) -> Any:
    """JSON, or 400 like the apiserver."""
    try:
        return json.loads(body or b"null")
    except ValueError as e:
        raise StatusError.bad_request(f"couldn't get version/kind; json parse error: {e}") from e


def decode_yaml(body: bytes) -> Any:
    """YAML, or 400."""
    try:
        return yaml.safe_load(body or b"")
    except yaml.YAMLError as e:
        raise StatusError.bad_request(f"error converting YAML to JSON: {e}") from e


def decode_object(content_type: str, body: bytes) -> Obj:
    """The object a POST or PUT carries; 415 for media types the server does not read."""
    kind = media_type(content_type)
    value: Any
    if kind in (JSON, ""):
        value = decode_json(body)
    elif kind == YAML:
        value = decode_yaml(body)
    elif kind == PROTOBUF:
        value = decode_protobuf(body)
    else:
        raise StatusError.unsupported_media_type(content_type, BODY_TYPES)
    if not isinstance(value, dict):
        raise StatusError.bad_request("Object 'Kind' is missing in the request body")
    return value


_VALUE_MAPS = frozenset(
    {"data", "stringData", "binaryData", "labels", "annotations", "nodeSelector", "matchLabels"}
)


def _prune(value: Any) -> Any:
    """Drop empty strings: gogo protobuf always encodes them, Go reads them as unset.

    Map-valued fields (data, labels, ...) keep their entries: "" is a legitimate value there.
    """
    if isinstance(value, dict):
        return {
            k: (v if k in _VALUE_MAPS else _prune(v))
            for k, v in value.items()
            if v != "" and v is not None
        }
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def decode_protobuf(body: bytes) -> Obj:
    """A `k8s\\0` envelope as JSON; 400 when malformed (never an empty object)."""
    try:
        envelope = kube_protobuf.decode_envelope(body)
        obj = kube_protobuf.decode_object(envelope)
        raw = parse_fields(envelope.raw)
        spec = _first(raw, 2)
        if isinstance(spec, bytes):
            if envelope.kind == "Pod":
                obj["spec"] = _pod_spec(spec)
            elif envelope.kind == "Deployment":
                obj["spec"] = _deployment_spec(spec)
    except ProtobufError as e:
        raise StatusError.bad_request(f"failed to decode protobuf body: {e}") from e
    pruned: Obj = _prune(obj)
    return pruned


def _first(fields: Fields, number: int) -> Any:
    return next((v for n, _, v in fields if n == number), None)


def _all(fields: Fields, number: int) -> list[Any]:
    return [v for n, _, v in fields if n == number]


def _text(value: Any) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a string field")
    return value.decode("utf-8", errors="strict")


def _string_map(fields: Fields, number: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in _all(fields, number):
        entry_fields = parse_fields(entry)
        out[_text(_first(entry_fields, 1) or b"")] = _text(_first(entry_fields, 2) or b"")
    return out


def _container(data: bytes) -> Obj:
    fields = parse_fields(data)
    container: Obj = {}
    for number, key in ((1, "name"), (2, "image"), (5, "workingDir"), (14, "imagePullPolicy")):
        if (value := _first(fields, number)) is not None:
            container[key] = _text(value)
    for number, key in ((3, "command"), (4, "args")):
        if values := _all(fields, number):
            container[key] = [_text(v) for v in values]
    ports = []
    for raw in _all(fields, 6):
        pf = parse_fields(raw)
        port: Obj = {}
        if (name := _first(pf, 1)) is not None:
            port["name"] = _text(name)
        if (container_port := _first(pf, 3)) is not None:
            port["containerPort"] = int(container_port)
        if (protocol := _first(pf, 4)) is not None:
            port["protocol"] = _text(protocol)
        ports.append(port)
    if ports:
        container["ports"] = ports
    env = []
    for raw in _all(fields, 7):
        ef = parse_fields(raw)
        env.append({"name": _text(_first(ef, 1) or b""), "value": _text(_first(ef, 2) or b"")})
    if env:
        container["env"] = env
    resources = _first(fields, 8)
    if isinstance(resources, bytes):
        rf = parse_fields(resources)
        out: Obj = {}
        for number, key in ((1, "limits"), (2, "requests")):
            quantities = {}
            for entry in _all(rf, number):
                ef = parse_fields(entry)
                quantity = _first(ef, 2)
                amount = _first(parse_fields(quantity), 1) if isinstance(quantity, bytes) else None
                quantities[_text(_first(ef, 1) or b"")] = _text(amount or b"")
            if quantities:
                out[key] = quantities
        container["resources"] = out
    for number, key in ((16, "stdin"), (17, "stdinOnce"), (18, "tty")):
        if _first(fields, number):
            container[key] = True
    return container


def _pod_spec(data: bytes) -> Obj:
    fields = parse_fields(data)
    spec: Obj = {"containers": [_container(c) for c in _all(fields, 2)]}
    for number, key in (
        (3, "restartPolicy"),
        (6, "dnsPolicy"),
        (8, "serviceAccountName"),
        (10, "nodeName"),
    ):
        if (value := _first(fields, number)) is not None:
            spec[key] = _text(value)
    if (grace := _first(fields, 4)) is not None:
        spec["terminationGracePeriodSeconds"] = int(grace)
    if selector := _string_map(fields, 7):
        spec["nodeSelector"] = selector
    return spec


def _deployment_spec(data: bytes) -> Obj:
    fields = parse_fields(data)
    spec: Obj = {}
    if (replicas := _first(fields, 1)) is not None:
        spec["replicas"] = int(replicas)
    selector = _first(fields, 2)
    if isinstance(selector, bytes):
        spec["selector"] = {"matchLabels": _string_map(parse_fields(selector), 1)}
    template = _first(fields, 3)
    if isinstance(template, bytes):
        tf = parse_fields(template)
        meta = _first(tf, 1)
        pod_spec = _first(tf, 2)
        spec["template"] = {
            "metadata": kube_protobuf.decode_object_meta(meta) if isinstance(meta, bytes) else {},
            "spec": _pod_spec(pod_spec) if isinstance(pod_spec, bytes) else {},
        }
    strategy = _first(fields, 4)
    if isinstance(strategy, bytes) and (kind := _first(parse_fields(strategy), 1)) is not None:
        spec["strategy"] = {"type": _text(kind)}
    return spec
