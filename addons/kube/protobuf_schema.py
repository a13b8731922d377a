"""The message table kubectl's protobuf bodies are decoded with, built from Kubernetes' own protos.

`protobuf_messages.json` (shipped beside this module) holds, for every message reachable from the
built-in kinds in `ROOT_KINDS`, its fields as `number -> [json name, type, label]`, copied from
the `generated.proto` files of k8s.io/api and k8s.io/apimachinery (go-to-protobuf names each
field by its JSON name). Types are a protobuf scalar, a fully qualified message name, one of the
`SPECIAL` messages that have a JSON form of their own, or `map<K,V>`; label `inline` marks an
embedded Go struct whose fields appear in the parent's JSON object, `value` a Go value field
(its zero value is unset), both read from gogo's `generated.pb.go` beside each proto.

Regenerate it from checkouts of both repositories when Kubernetes adds fields:

    python -m holdgate.kube.protobuf_schema PATH/TO/api PATH/TO/apimachinery
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("protobuf_messages.json")

# apiVersion -> proto package of the built-in groups whose kinds are decoded in full.
PACKAGES = {
    "v1": "k8s.io.api.core.v1",
    "apps/v1": "k8s.io.api.apps.v1",
    "batch/v1": "k8s.io.api.batch.v1",
    "authorization.k8s.io/v1": "k8s.io.api.authorization.v1",
}
ROOT_KINDS = {
    "v1": [
        "Pod", "PodTemplate", "ReplicationController", "Secret", "ConfigMap", "Namespace",
        "Service", "ServiceAccount",
    ],
    "apps/v1": ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"],
    "batch/v1": ["Job", "CronJob"],
    # `kubectl auth can-i` asks in protobuf; the gateway answers from its own policy.
    "authorization.k8s.io/v1": ["SelfSubjectAccessReview", "SelfSubjectRulesReview"],
}  # fmt: skip

# Messages whose JSON form is not an object of their fields (see protobuf.py).
SPECIAL = frozenset(
    {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time",
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime",
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration",
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1",
        "k8s.io.apimachinery.pkg.api.resource.Quantity",
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
        "k8s.io.apimachinery.pkg.runtime.RawExtension",
    }
)

# Go structs embedded in another are inline in its JSON (`json:",inline"`), except the
# ObjectMeta/ListMeta every object embeds as `metadata`. The .proto does not say which fields
# are embedded; gogo's generated Unmarshal does (`m.ProbeHandler.Unmarshal`: a value field named
# after its type) and Kubernetes' round-trip fixtures confirm it (its name never appears in
# their JSON). The tests decode those fixtures' protobuf and compare with their JSON.
NOT_INLINE = frozenset({"ObjectMeta", "ListMeta", "TypeMeta"})

Field = tuple[str, str, str]  # json name, type, label (see LABELS)
Key = tuple[str, int]
# optional: a Go pointer, present when sent; value: a Go value field, whose zero value is unset
# (gogo sends it anyway); repeated; map; inline.
LABELS = ("optional", "value", "repeated", "map", "inline")


@cache
def table() -> dict[str, Any]:
    """The shipped table: {"source", "kinds": {apiVersion/Kind: message}, "messages"}."""
    loaded: dict[str, Any] = json.loads(TABLE.read_text(encoding="utf-8"))
    loaded["messages"] = {
        name: {int(number): tuple(field) for number, field in fields.items()}
        for name, fields in loaded["messages"].items()
    }
    return loaded


def message_of(api_version: str, kind: str) -> str | None:
    """The message name of a built-in kind decoded in full, or None."""
    found: str | None = table()["kinds"].get(f"{api_version}/{kind}")
    return found


# --- generation --------------------------------------------------------------------------------

_PACKAGE = re.compile(r"^package\s+([\w.]+)\s*;", re.M)
_MESSAGE = re.compile(r"^message\s+(\w+)\s*\{(.*?)^\}", re.M | re.S)
_FIELD = re.compile(
    r"^\s*(?:(optional|repeated)\s+([\w.]+)|map<\s*([\w.]+)\s*,\s*([\w.]+)\s*>)"
    r"\s+(\w+)\s*=\s*(\d+)\s*;",
    re.M,
)


def _qualify(package: str, type_name: str) -> str:
    if type_name.startswith("."):
        return type_name[1:]
    if type_name[0].isupper():
        return f"{package}.{type_name}"
    return type_name  # a scalar


def parse_proto(text: str) -> dict[str, dict[int, Field]]:
    """The messages of one go-to-protobuf generated.proto (no nesting, oneofs or enums there)."""
    package_match = _PACKAGE.search(text)
    if package_match is None:
        raise ValueError("no package statement")
    package = package_match.group(1)
    text = re.sub(r"//[^\n]*", "", text)
    messages: dict[str, dict[int, Field]] = {}
    for name, body in _MESSAGE.findall(text):
        if re.search(r"^\s*(message|oneof|enum)\b", body, re.M):
            raise ValueError(f"{package}.{name}: nested declarations are not supported")
        fields: dict[int, Field] = {}
        for label, type_name, key, value, field_name, number in _FIELD.findall(body):
            if label:
                fields[int(number)] = (field_name, _qualify(package, type_name), label)
            else:
                map_type = f"map<{_qualify(package, key)},{_qualify(package, value)}>"
                fields[int(number)] = (field_name, map_type, "map")
        messages[f"{package}.{name}"] = fields
    return messages


_UNMARSHAL = re.compile(
    r"^func \(m \*(\w+)\) Unmarshal\(dAtA \[\]byte\) error \{$(.*?)^\}$", re.M | re.S
)
_CASE = re.compile(r"^\t\tcase (\d+):$", re.M)


def go_fields(generated_go: str, package: str) -> tuple[set[Key], set[tuple[str, int, str]]]:
    """From gogo's generated Unmarshal: (message, field number) of the scalar fields that are Go
    values rather than pointers (a pointer is assigned `m.Field = &v`), and of the embedded
    structs (`m.TypeName.Unmarshal(...)` on a value field)."""
    values: set[Key] = set()
    embedded: set[tuple[str, int, str]] = set()
    for name, body in _UNMARSHAL.findall(generated_go):
        parts = _CASE.split(body)
        for number, block in zip(parts[1::2], parts[2::2], strict=True):
            key = (f"{package}.{name}", int(number))
            if re.search(r"\bm\.\w+ = &", block) is None:
                values.add(key)
                if called := re.search(r"\bm\.(\w+)\.Unmarshal\(", block):
                    embedded.add((*key, called.group(1)))
    return values, embedded


def _types_of(field_type: str) -> list[str]:
    if field_type.startswith("map<"):
        return field_type[4:-1].split(",")
    return [field_type]


def build(api: Path, apimachinery: Path) -> dict[str, Any]:
    """The table for ROOT_KINDS from checkouts of k8s.io/api and k8s.io/apimachinery."""
    every: dict[str, dict[int, Field]] = {}
    values: set[Key] = set()
    embedded: set[tuple[str, int, str]] = set()
    for root in (api, apimachinery):
        for proto in sorted(root.rglob("generated.proto")):
            parsed = parse_proto(proto.read_text(encoding="utf-8"))
            every.update(parsed)
            go = proto.with_name("generated.pb.go")
            if parsed and go.exists():
                package = next(iter(parsed)).rsplit(".", 1)[0]
                found_values, found_embedded = go_fields(go.read_text(encoding="utf-8"), package)
                values |= found_values
                embedded |= found_embedded
    # The JSON of every root kind with every field set (k8s.io/api's round-trip fixtures): an
    # embedded struct whose field name appears there is a named field, not an inline one.
    fixtures = "".join(
        (api / "testdata" / "HEAD" / f"{_fixture_prefix(version)}.{kind}.json").read_text()
        for version, names in ROOT_KINDS.items()
        for kind in names
    )
    for message, fields in every.items():
        for number, (name, field_type, label) in fields.items():
            short = field_type.rsplit(".", 1)[-1]
            if label != "optional":
                continue
            if "." not in field_type and (message, number) in values:
                fields[number] = (name, field_type, "value")
            elif (
                (message, number, short) in embedded
                and short not in NOT_INLINE
                and field_type not in SPECIAL
                and f'"{name}":' not in fixtures
            ):
                fields[number] = (name, field_type, "inline")
    kinds = {
        f"{version}/{kind}": f"{PACKAGES[version]}.{kind}"
        for version, names in ROOT_KINDS.items()
        for kind in names
    }
    reachable: dict[str, dict[int, Field]] = {}
    pending = list(kinds.values())
    while pending:
        name = pending.pop()
        if name in reachable or name in SPECIAL:
            continue
        if name not in every:
            raise ValueError(f"message {name} is not defined in the given protos")
        reachable[name] = every[name]
        for _, field_type, _ in every[name].values():
            pending.extend(t for t in _types_of(field_type) if "." in t)
    return {
        "source": {
            "k8s.io/api": _commit(api),
            "k8s.io/apimachinery": _commit(apimachinery),
        },
        "kinds": kinds,
        "messages": {
            name: {str(number): list(field) for number, field in sorted(fields.items())}
            for name, fields in sorted(reachable.items())
        },
    }


def _fixture_prefix(api_version: str) -> str:
    group, _, version = api_version.rpartition("/")
    return f"{group or 'core'}.{version}"


def _commit(checkout: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(checkout), "log", "-1", "--format=%H %cs"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    built = build(Path(argv[0]), Path(argv[1]))
    TABLE.write_text(json.dumps(built, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{TABLE}: {len(built['messages'])} messages for {len(built['kinds'])} kinds")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
