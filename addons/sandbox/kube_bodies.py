"""Request bodies as the apiserver decodes them: JSON, YAML and Kubernetes protobuf.

Protobuf envelopes go through `holdgate.kube.protobuf`, which decodes every built-in workload
kind in full, so the stored object is the one kubectl meant.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from holdgate.kube import protobuf as kube_protobuf
from holdgate.kube.protobuf import ProtobufError
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
        obj = kube_protobuf.decode_object(kube_protobuf.decode_envelope(body))
    except ProtobufError as e:
        raise StatusError.bad_request(f"failed to decode protobuf body: {e}") from e
    pruned: Obj = _prune(obj)
    return pruned
