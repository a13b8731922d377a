"""holdgate.masking.masks: a table of paths, property tests with canaries, Kubernetes shapes, bodies."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import os
import pathlib
import ssl
import subprocess
import sys
from dataclasses import replace
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holdgate.kube.protobuf import encode_object
from holdgate.masking.masks import (
    EMPTY_MASKS,
    KUBERNETES_SECRET_MASKS,
    LAST_APPLIED,
    MaskError,
    MaskSet,
    MaskStyle,
    WatchMasker,
    compile_masks,
    mask_document,
    mask_headers,
    mask_json_body,
    mask_request_body,
)
from holdgate.sandbox.kube_sim import running_simulator

CANARY = "CANARY-7f3a9c"
KEY = b"test-hmac-secret-0123456789abcdef"
KEYED = MaskStyle.keyed(KEY)
FIXED_B64 = base64.b64encode(b"***").decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def masks(*paths: str, style: MaskStyle | None = None) -> MaskSet:
    return compile_masks(list(paths), [], style)


def generic(mask_set: MaskSet) -> MaskSet:
    """The same masks, every one evaluated by jsonpath-ng's own find (no fast path)."""
    paths = tuple(replace(p, program=None, walk=None, key=None, wild=False) for p in mask_set.paths)
    return replace(mask_set, paths=paths)


def leaks(output: bytes | str | Any, canary: str = CANARY) -> bool:
    """Whether the canary, or its base64, can be found anywhere in the output."""
    if not isinstance(output, bytes | str):
        output = json.dumps(output)
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    return canary in text or b64(canary) in text or b64(canary)[:12] in text


# --- paths: one table -------------------------------------------------------------------------

PATH_CASES = [
    # (id, path, document, expected)
    (
        "field",
        "$.data.password",
        {"data": {"password": "p", "user": "u"}},
        {"data": {"password": "***", "user": "u"}},
    ),
    (
        "wildcard-object",
        "$.data.*",
        {"data": {"a": "1", "b": "2"}, "other": "x"},
        {"data": {"a": "***", "b": "***"}, "other": "x"},
    ),
    (
        "wildcard-brackets",
        "$.data[*]",
        {"data": ["a", "b"]},
        {"data": ["***", "***"]},
    ),
    (
        "nested-lists",
        "$.spec.containers[*].env[*].value",
        {
            "spec": {
                "containers": [
                    {"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y"}]},
                    {"name": "b", "env": [{"name": "Z", "value": "3"}]},
                ]
            }
        },
        {
            "spec": {
                "containers": [
                    {"name": "a", "env": [{"name": "X", "value": "***"}, {"name": "Y"}]},
                    {"name": "b", "env": [{"name": "Z", "value": "***"}]},
                ]
            }
        },
    ),
    (
        "filter-kind",
        '$.items[?(@.kind=="Secret")].data',
        {
            "kind": "List",
            "items": [
                {"kind": "Secret", "data": {"k": "v"}},
                {"kind": "ConfigMap", "data": {"k": "v"}},
            ],
        },
        {
            "kind": "List",
            "items": [
                {"kind": "Secret", "data": "***"},
                {"kind": "ConfigMap", "data": {"k": "v"}},
            ],
        },
    ),
    (
        "filter-regex",
        '$.env[?(@.name=~"^DB_")].value',
        {"env": [{"name": "DB_PASS", "value": "p"}, {"name": "HOME", "value": "/root"}]},
        {"env": [{"name": "DB_PASS", "value": "***"}, {"name": "HOME", "value": "/root"}]},
    ),
    (
        "descendants",
        "..password",
        {"password": "a", "x": {"password": "b", "y": [{"password": "c"}, {"q": 1}]}},
        {"password": "***", "x": {"password": "***", "y": [{"password": "***"}, {"q": 1}]}},
    ),
    (
        "descendants-then-child",
        "$..auth.token",
        {"a": {"auth": {"token": "t", "user": "u"}}, "auth": {"token": "t2"}},
        {"a": {"auth": {"token": "***", "user": "u"}}, "auth": {"token": "***"}},
    ),
    (
        "index-and-negative",
        "$.a[0,-1]",
        {"a": ["x", "y", "z"]},
        {"a": ["***", "y", "***"]},
    ),
    (
        "slice",
        "$.a[1:3]",
        {"a": ["w", "x", "y", "z"]},
        {"a": ["w", "***", "***", "z"]},
    ),
    (
        "several-names",
        '$["user","pass"]',
        {"user": "u", "pass": "p", "host": "h"},
        {"user": "***", "pass": "***", "host": "h"},
    ),
    (
        "quoted-dotted-name",
        '$.metadata.annotations["example.com/token"]',
        {"metadata": {"annotations": {"example.com/token": "t", "other": "o"}}},
        {"metadata": {"annotations": {"example.com/token": "***", "other": "o"}}},
    ),
    (
        "type-sensible",
        "$.v.*",
        {"v": {"s": "x", "i": 7, "f": 1.5, "b": True, "n": None, "o": {"k": "x"}, "l": [1]}},
        {"v": {"s": "***", "i": 0, "f": 0, "b": False, "n": None, "o": "***", "l": "***"}},
    ),
    (
        "matches-nothing",
        "$.spec.nothing.here",
        {"spec": {"something": "else"}, "data": {"k": "v"}},
        {"spec": {"something": "else"}, "data": {"k": "v"}},
    ),
    (
        "wrong-shape-matches-nothing",
        "$.data[0]",
        {"data": {"0": "v"}},
        {"data": {"0": "v"}},
    ),
    ("root", "$", {"a": 1}, "***"),
    (
        "generic-parent",
        "$.creds.token.`parent`",
        {"creds": {"token": "t", "user": "u"}, "x": 1},
        {"creds": "***", "x": 1},
    ),
]


@pytest.mark.parametrize(
    "path, doc, expected", [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES]
)
def test_paths(path: str, doc: Any, expected: Any) -> None:
    original = copy.deepcopy(doc)
    masked, count = mask_document(doc, masks(path))
    assert masked == expected
    assert doc == original, "the input is never modified"
    assert (count > 0) == (masked != original)
    generic_masked, _ = mask_document(doc, generic(masks(path)))
    assert generic_masked == expected


@pytest.mark.parametrize(
    "paths, headers, field, index, message",
    [
        (["$.a", "$.[", "$.b"], [], "paths", 1, "invalid JSONPath"),
        (["$.items.`len`"], [], "paths", 0, "computes a value"),
        (["$.a + $.b"], [], "paths", 0, "computes a value"),
        (['$.a[?(@.b=~"(")]'], [], "paths", 0, "invalid regex"),
        (["$.a", ""], [], "paths", 1, "empty"),
        (["$.a"], ["Set-Cookie", "bad header"], "headers", 1, "invalid header name"),
    ],
)
def test_invalid_masks(
    paths: list[str], headers: list[str], field: str, index: int, message: str
) -> None:
    with pytest.raises(MaskError, match=message) as raised:
        compile_masks(paths, headers)
    assert isinstance(raised.value, ValueError)
    assert (raised.value.field, raised.value.index) == (field, index)


def test_merge_keeps_order_dedupes_and_keeps_style() -> None:
    a = compile_masks(["$.a", "$.b"], ["Authorization"], KEYED)
    b = compile_masks(["$.b", "$.c"], ["set-cookie"])
    merged = a.merge([b, KUBERNETES_SECRET_MASKS])
    assert [p.expression for p in merged.paths] == [
        "$.a",
        "$.b",
        "$.c",
        "$.data.*",
        "$.stringData.*",
    ]
    assert merged.headers == {"authorization", "set-cookie"}
    assert merged.style == KEYED
    assert EMPTY_MASKS.is_empty and not merged.is_empty
    assert KUBERNETES_SECRET_MASKS.with_style(KEYED).style.is_keyed


# --- fast path == jsonpath-ng, on random documents -------------------------------------------

KEYS = ["a", "b", "password", "data", "items", "kind", "x"]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.sampled_from(["", "a", "b", "Secret", "s3"])
)
json_docs = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=4)
    ),
    max_leaves=25,
)
DIFF_PATHS = [
    "$.a",
    "$.a.b",
    "$.*",
    "$.a.*",
    "$[*].a",
    "$..a",
    "$..*",
    "$.a[0]",
    "$.a[-1]",
    "$.a[1:]",
    "$.a[::2]",
    "$..a.b",
    "$.a..b",
    "$..a..b",
    "$..[0]",
    "$.items[*].data",
    '$["a","password"]',
    "$..[?(@.a)]",
    "$.*[?(@.b==1)]",
    '$..[?(@.kind=="Secret")].data',
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=json_docs, path=st.sampled_from(DIFF_PATHS))
def test_fast_paths_agree_with_jsonpath_ng(doc: Any, path: str) -> None:
    fast = masks(path, style=KEYED)
    assert fast.paths[0].program is not None, "every path of this table has a fast path"
    assert mask_document(doc, fast)[0] == mask_document(doc, generic(fast))[0]


# --- canaries: masked paths never leak, everything else is unchanged --------------------------


def plant(doc: Any, depth: int = 0) -> Any:
    """The document with every `password` value replaced by a canary (a string, object or list)."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            if k == "password":
                out[k] = [CANARY, {"k": CANARY}, f"x{CANARY}x", [[CANARY]]][depth % 4]
            else:
                out[k] = plant(v, depth + 1)
        return out
    if isinstance(doc, list):
        return [plant(v, depth + 1) for v in doc]
    return doc


def check_unmasked(original: Any, masked: Any, style: MaskStyle) -> None:
    """Only `password` values changed, into their type-sensible mask."""
    if isinstance(original, dict):
        assert isinstance(masked, dict) and masked.keys() == original.keys()
        for k, v in original.items():
            if k == "password":
                assert masked[k] == style.mask_value(v)
            else:
                check_unmasked(v, masked[k], style)
    elif isinstance(original, list):
        assert isinstance(masked, list) and len(masked) == len(original)
        for a, b in zip(original, masked, strict=True):
            check_unmasked(a, b, style)
    else:
        assert masked == original and type(masked) is type(original)


@settings(max_examples=150, deadline=None)
@given(doc=json_docs, keyed=st.booleans())
def test_canaries_at_masked_paths_never_appear(doc: Any, keyed: bool) -> None:
    style = KEYED if keyed else MaskStyle()
    planted = plant({"wrapper": doc, "password": CANARY})
    result = mask_json_body(json.dumps(planted).encode(), masks("$..password", style=style))
    assert not result.replaced_whole
    assert CANARY.encode() not in result.body
    check_unmasked(planted, json.loads(result.body), style)


secret_values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=0, max_size=12)
secret_data = st.dictionaries(
    st.sampled_from(["password", "token", "tls.key", "x"]), secret_values, min_size=1, max_size=4
)


def make_secret(data: dict[str, str], string_data: dict[str, str], applied: bool) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "prod", "labels": {"app": "db"}},
        "type": "Opaque",
        "data": {k: b64(CANARY + v) for k, v in data.items()},
    }
    if string_data:
        obj["stringData"] = {k: CANARY + v for k, v in string_data.items()}
    if applied:
        copy_of = {k: v for k, v in obj.items() if k != "metadata"}
        copy_of["metadata"] = {"name": "db", "namespace": "prod"}
        annotation = json.dumps(copy_of, separators=(",", ":")) + "\n"
        obj["metadata"]["annotations"] = {LAST_APPLIED: annotation, "team": "payments"}
    return obj


def wrap(obj: dict[str, Any], shape: str) -> dict[str, Any]:
    """The object as a response of the given shape carries it."""
    item = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
    if shape == "object":
        return obj
    if shape == "list":
        return {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": [item]}
    if shape == "mixed-list":
        configmap = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "plain"}}
        return {"kind": "List", "apiVersion": "v1", "items": [configmap, obj]}
    if shape == "table":
        return table([obj], include="Object")
    if shape == "table-metadata":
        return table([obj], include="Metadata")
    assert shape == "event"
    return {"type": "ADDED", "object": obj}


@settings(max_examples=100, deadline=None)
@given(
    data=secret_data,
    string_data=st.dictionaries(st.sampled_from(["a", "b"]), secret_values, max_size=2),
    applied=st.booleans(),
    shape=st.sampled_from(["object", "list", "mixed-list", "table", "table-metadata", "event"]),
    keyed=st.booleans(),
)
def test_secret_canaries_never_appear_in_any_shape(
    data: dict[str, str], string_data: dict[str, str], applied: bool, shape: str, keyed: bool
) -> None:
    style = KEYED if keyed else MaskStyle()
    doc = wrap(make_secret(data, string_data, applied), shape)
    body = json.dumps(doc).encode()
    assert leaks(body) or (shape == "table-metadata" and not applied)
    result = mask_json_body(body, KUBERNETES_SECRET_MASKS.with_style(style))
    assert not result.replaced_whole
    assert not leaks(result.body)
    assert b'"db"' in result.body, "what is not masked stays readable"


# --- Kubernetes shapes ----------------------------------------------------------------------


def table(objs: list[dict[str, Any]], include: str) -> dict[str, Any]:
    """A Table as the apiserver prints Secrets (Name, Type, Data, Age)."""
    rows = []
    for obj in objs:
        row: dict[str, Any] = {
            "cells": [obj["metadata"]["name"], obj.get("type", ""), len(obj.get("data", {})), "5m"]
        }
        if include == "Object":
            row["object"] = obj
        elif include == "Metadata":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": "1"},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name"},
            {"name": "Type", "type": "string", "format": ""},
            {"name": "Data", "type": "string", "format": ""},
            {"name": "Age", "type": "string", "format": ""},
        ],
        "rows": rows,
    }


def test_secret_keeps_keys_and_base64_shape() -> None:
    secret = make_secret({"password": "p", "token": "t"}, {"extra": "e"}, applied=False)
    masked, count = mask_document(secret, KUBERNETES_SECRET_MASKS)
    assert masked["data"] == {"password": FIXED_B64, "token": FIXED_B64}
    assert masked["stringData"] == {"extra": "***"}
    assert masked["metadata"] == secret["metadata"] and masked["type"] == "Opaque"
    assert count == 3
    # Go decodes `data` into []byte: the mask must stay valid base64.
    assert base64.b64decode(masked["data"]["password"], validate=True) == b"***"


def test_secret_list_items_without_kind() -> None:
    doc = wrap(make_secret({"password": "p"}, {}, applied=True), "list")
    masked, _ = mask_document(doc, KUBERNETES_SECRET_MASKS)
    item = masked["items"][0]
    assert item["data"] == {"password": FIXED_B64}
    assert not leaks(masked)


def test_last_applied_annotation_of_kubectl_apply() -> None:
    secret = make_secret({"password": "p"}, {"more": "m"}, applied=True)
    masked, _ = mask_document(secret, KUBERNETES_SECRET_MASKS)
    annotation = masked["metadata"]["annotations"][LAST_APPLIED]
    assert annotation.endswith("\n"), "kubectl's trailing newline is kept"
    inner = json.loads(annotation)
    assert inner["data"] == {"password": FIXED_B64}
    assert inner["stringData"] == {"more": "***"}
    assert inner["metadata"] == {"name": "db", "namespace": "prod"}
    assert masked["metadata"]["annotations"]["team"] == "payments"
    assert not leaks(masked)


def test_last_applied_that_is_not_json_is_masked_whole() -> None:
    secret = make_secret({"password": "p"}, {}, applied=False)
    secret["metadata"]["annotations"] = {LAST_APPLIED: '{"data":{"k":"' + CANARY}
    masked, _ = mask_document(secret, KUBERNETES_SECRET_MASKS)
    assert masked["metadata"]["annotations"][LAST_APPLIED] == "***"


def test_user_masks_apply_inside_last_applied_of_any_kind() -> None:
    applied = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"dsn": CANARY}}
    configmap = {
        "kind": "ConfigMap",
        "metadata": {"name": "c", "annotations": {LAST_APPLIED: json.dumps(applied)}},
        "data": {"dsn": CANARY, "plain": "p"},
    }
    masked, _ = mask_document(configmap, masks("$.data.dsn"))
    assert masked["data"] == {"dsn": "***", "plain": "p"}
    assert not leaks(masked)


def test_mixed_list_only_secrets_get_secret_masks() -> None:
    secret = make_secret({"password": "p"}, {}, applied=False)
    doc = wrap(secret, "mixed-list")
    masked, _ = mask_document(doc, KUBERNETES_SECRET_MASKS)
    configmap, masked_secret = masked["items"]
    assert configmap["data"] == {"k": "plain"}, "ConfigMap data is not a Secret's"
    assert masked_secret["data"] == {"password": FIXED_B64}


def test_configmap_list_untouched_by_secret_masks() -> None:
    doc = {
        "kind": "ConfigMapList",
        "items": [{"metadata": {"name": "c"}, "data": {"k": "v"}}],
    }
    assert mask_document(doc, KUBERNETES_SECRET_MASKS) == (doc, 0)


def test_object_of_unknown_kind_gets_every_mask() -> None:
    # A strategic merge patch of a secret says no kind: fail closed without a hint...
    patch = {"data": {"password": b64(CANARY)}}
    assert not leaks(mask_document(patch, KUBERNETES_SECRET_MASKS)[0])
    # ...and with the request's kind as a hint.
    assert not leaks(mask_document(patch, KUBERNETES_SECRET_MASKS, kind="Secret")[0])
    # A hint of another kind keeps Secret masks off a ConfigMap patch.
    assert mask_document(patch, KUBERNETES_SECRET_MASKS, kind="ConfigMap")[1] == 0


def test_table_with_objects_masks_objects_and_cells_that_show_a_value() -> None:
    pods: list[dict[str, Any]] = [
        {
            "kind": "Pod",
            "metadata": {"name": f"p{i}"},
            "spec": {"serviceAccountName": f"{CANARY}-sa{i}"},
        }
        for i in range(3)
    ]
    doc = {
        "kind": "Table",
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name"},
            {"name": "Account", "type": "string", "format": ""},
            {"name": "Status", "type": "string", "format": ""},
        ],
        "rows": [
            {
                "cells": [
                    p["metadata"]["name"],
                    f"sa: {p['spec']['serviceAccountName']}",
                    "Running",
                ],
                "object": p,
            }
            for p in pods
        ],
    }
    masked, _ = mask_document(doc, masks("$.spec.serviceAccountName"))
    for i, row in enumerate(masked["rows"]):
        assert row["cells"] == [f"p{i}", "***", "Running"]
        assert row["object"]["spec"]["serviceAccountName"] == "***"
    assert not leaks(masked)


def test_table_without_objects_masks_cells_unless_masks_cannot_show() -> None:
    secret = make_secret({"password": "p"}, {}, applied=True)
    for include in ("Metadata", "None"):
        doc = table([secret], include=include)
        # The apiserver's Secret columns never show data: the cells stay readable.
        masked, _ = mask_document(doc, KUBERNETES_SECRET_MASKS)
        assert masked["rows"][0]["cells"] == ["db", "Opaque", 1, "5m"]
        assert not leaks(masked), "the last-applied copy in the metadata is masked"
        # A user mask outside metadata could be any column: all but the name are withheld.
        masked, _ = mask_document(doc, masks("$.spec.token"))
        assert masked["rows"][0]["cells"] == ["db", "***", 0, "***"]
        # A mask confined to metadata is checked against the metadata the row carries; with
        # no metadata at all (None), only the name column is known.
        masked, _ = mask_document(doc, masks("$.metadata.namespace"))
        expected = ["db", "Opaque", 1, "5m"] if include == "Metadata" else ["db", "***", 0, "***"]
        assert masked["rows"][0]["cells"] == expected
        masked, _ = mask_document(doc, masks("$.metadata.name"))
        assert masked["rows"][0]["cells"][0] == "***"


def test_table_watch_events_after_the_first_carry_no_columns() -> None:
    doc = table([make_secret({"password": "p"}, {}, applied=False)], include="Metadata")
    doc["columnDefinitions"] = None
    masked, _ = mask_document({"type": "MODIFIED", "object": doc}, masks("$.spec.token"))
    assert masked["object"]["rows"][0]["cells"] == ["db", "***", 0, "***"]


def test_table_cells_masked_by_a_path_written_for_the_table() -> None:
    doc = table([make_secret({"password": "p"}, {}, applied=False)], include="Object")
    doc["rows"][0]["cells"][1] = "secret-type"
    masked, _ = mask_document(doc, masks("$.rows[*].object.type"))
    assert masked["rows"][0]["object"]["type"] == "***"
    assert masked["rows"][0]["cells"] == ["db", "secret-type", 1, "5m"]
    masked, _ = mask_document(doc, masks("$.rows[*].object.metadata.name"))
    assert masked["rows"][0]["cells"][0] == "***"


def test_watch_event_objects_and_table_events() -> None:
    secret = make_secret({"password": "p"}, {"s": "x"}, applied=True)
    for doc in (
        {"type": "ADDED", "object": secret},
        {"type": "MODIFIED", "object": table([secret], include="Object")},
        {"kind": "WatchEvent", "type": "DELETED", "object": secret},
    ):
        masked, _ = mask_document(doc, KUBERNETES_SECRET_MASKS)
        assert masked["type"] == doc["type"]
        assert not leaks(masked)


def test_input_is_never_mutated() -> None:
    doc = table([make_secret({"password": "p"}, {"x": "y"}, applied=True)], include="Object")
    before = copy.deepcopy(doc)
    mask_document(doc, KUBERNETES_SECRET_MASKS.merge([masks("..password", "$.rows[*].cells")]))
    assert doc == before


# --- keyed style ----------------------------------------------------------------------------


def test_keyed_masks_equal_values_alike_and_keep_types() -> None:
    doc = {"a": {"pw": "same"}, "b": {"pw": "same"}, "c": {"pw": "other"}}
    masked, _ = mask_document(doc, masks("$.*.pw", style=KEYED))
    assert masked["a"]["pw"] == masked["b"]["pw"] != masked["c"]["pw"]
    assert masked["a"]["pw"].startswith("hmac:") and len(masked["a"]["pw"]) == 21
    assert "same" not in json.dumps(masked)
    other_key = mask_document(doc, masks("$.*.pw", style=MaskStyle.keyed(b"x" * 32)))[0]
    assert other_key["a"]["pw"] != masked["a"]["pw"], "the mask depends on the gateway secret"

    typed, _ = mask_document(
        {"v": {"i": 42, "i2": 42, "f": 1.5, "b": True, "n": None, "o": {"k": 1}, "l": [1]}},
        masks("$.v.*", style=KEYED),
    )
    v = typed["v"]
    assert isinstance(v["i"], int) and v["i"] == v["i2"] != 42 and 0 <= v["i"] < 2**48
    assert isinstance(v["f"], int)
    assert v["b"] is False and v["n"] is None
    assert v["o"].startswith("hmac:") and v["l"].startswith("hmac:") and v["o"] != v["l"]


def test_keyed_secret_data_and_string_data_of_one_value_match() -> None:
    secret = {"kind": "Secret", "data": {"a": b64("hunter2")}, "stringData": {"b": "hunter2"}}
    masked, _ = mask_document(secret, KUBERNETES_SECRET_MASKS.with_style(KEYED))
    decoded = base64.b64decode(masked["data"]["a"]).decode()
    assert decoded == masked["stringData"]["b"] == KEYED.mask_text("hunter2")


def test_keyed_value_hashed_once_whether_listed_or_read_alone() -> None:
    keyed = masks("..password", style=KEYED)
    obj = {"kind": "Thing", "metadata": {"name": "t"}, "spec": {"password": "pw"}}
    alone, _ = mask_document(obj, keyed)
    listed, _ = mask_document({"kind": "ThingList", "items": [obj]}, keyed)
    watched, _ = mask_document({"type": "ADDED", "object": obj}, keyed)
    assert alone["spec"] == listed["items"][0]["spec"] == watched["object"]["spec"]
    assert alone["spec"]["password"] == KEYED.mask_text("pw")


def test_keyed_style_needs_a_real_secret() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        MaskStyle.keyed(b"short")
    assert "test-hmac" not in repr(KEYED) and "test-hmac" not in repr(
        KUBERNETES_SECRET_MASKS.with_style(KEYED)
    )


# --- bodies: fail closed --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, reason",
    [
        (
            encode_object({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
            "protobuf",
        ),
        (gzip.compress(b'{"data":{"k":"v"}}', mtime=0), "gzip"),
        (b'{"kind":"Secret","data":{"k":"' + CANARY.encode(), "truncated"),
        (b'{"kind":"Secret","data":{"k":"v"} junk}', "malformed"),
        (b'{"data":{"k":"\xff\xfe' + CANARY.encode() + b'"}}', "UTF-8"),
        (b'{"data":{"k":NaN}}', "NaN is not JSON"),
        (b'{"kind":"ConfigMap","data":{"k":1e400}}', "out of range"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
    ids=["protobuf", "gzip", "truncated", "malformed", "not-utf8", "nan", "inf", "deep"],
)
def test_unparseable_bodies_are_withheld_whole(body: bytes, reason: str) -> None:
    result = mask_json_body(body, KUBERNETES_SECRET_MASKS)
    assert result.replaced_whole and result.masked == 0
    assert reason in result.reason
    assert json.loads(result.body) == {"holdgate": f"body withheld: {result.reason}"}
    assert CANARY.encode() not in result.body


def test_a_mask_that_breaks_on_a_document_withholds_it() -> None:
    result = mask_json_body(b'{"a":1}', masks("$.`parent`"))
    assert result.replaced_whole and "failed" in result.reason
    with pytest.raises(ValueError):
        mask_document({"a": 1}, masks("$.`parent`"))


def test_bodies_pass_when_nothing_to_mask() -> None:
    assert mask_json_body(b"\x1f\x8b binary", EMPTY_MASKS).body == b"\x1f\x8b binary"
    assert mask_json_body(b"", KUBERNETES_SECRET_MASKS).body == b""
    result = mask_json_body(b'{"kind": "ConfigMap", "data": {"k": "v"}}', KUBERNETES_SECRET_MASKS)
    assert (result.body, result.masked, result.replaced_whole) == (
        b'{"kind":"ConfigMap","data":{"k":"v"}}',
        0,
        False,
    )


# --- watch streams --------------------------------------------------------------------------


def watch_lines(n: int) -> list[bytes]:
    lines = []
    for i in range(n):
        obj = make_secret({"password": f"p{i}"}, {}, applied=i % 2 == 0)
        obj["metadata"]["name"] = f"s{i}"
        lines.append(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
    return lines


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=30), tail=st.booleans())
def test_watch_stream_split_anywhere(cuts: list[int], tail: bool) -> None:
    lines = watch_lines(5)
    stream = b"".join(lines)
    if not tail:
        stream = stream[:-1]  # the last line arrives without its newline
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    masker = WatchMasker(KUBERNETES_SECRET_MASKS)
    out = b"".join(masker.feed(stream[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    out += masker.flush()
    assert out.endswith(b"\n") and out.count(b"\n") == len(lines)
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["object"]["metadata"]["name"] for e in events] == [f"s{i}" for i in range(5)]
    assert all(e["object"]["data"] == {"password": FIXED_B64} for e in events)
    assert not leaks(out)
    assert masker.withheld == 0 and masker.masked >= 5


def test_watch_masker_as_a_mitmproxy_stream_never_returns_an_empty_chunk() -> None:
    # mitmproxy sends each returned chunk; an empty one would end a chunked HTTP/1 body.
    lines = watch_lines(2)
    stream = b"".join(lines)
    masker = WatchMasker(KUBERNETES_SECRET_MASKS)
    out: list[bytes] = []
    for i in range(0, len(stream), 7):
        out += masker(stream[i : i + 7])
    out += masker(b"")
    assert all(out) and len(out) == 2
    assert [json.loads(c)["object"]["metadata"]["name"] for c in out] == ["s0", "s1"]
    assert masker(b"") == []


def test_watch_line_that_is_not_json_becomes_an_error_event() -> None:
    good = watch_lines(2)
    masker = WatchMasker(KUBERNETES_SECRET_MASKS)
    out = masker.feed(
        good[0] + b'{"type":"ADDED","object":{"data":{"k":"' + CANARY.encode() + b"\n"
    )
    out += masker.feed(b"\n" + good[1]) + masker.flush()
    lines = out.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5
    error = json.loads(lines[1])
    assert error["type"] == "ERROR" and error["object"]["kind"] == "Status"
    assert error["object"]["code"] == 403 and "withheld" in error["object"]["message"]
    assert lines[2] == b"", "blank lines pass"
    assert json.loads(lines[3])["object"]["metadata"]["name"] == "s1", "the stream goes on"
    assert not leaks(out) and masker.withheld == 1


def test_watch_line_over_the_limit_is_dropped_up_to_its_newline() -> None:
    good = watch_lines(2)
    masker = WatchMasker(KUBERNETES_SECRET_MASKS, max_line=len(good[0]) + 10)
    huge = b'{"type":"ADDED","object":{"data":{"k":"' + CANARY.encode() * 100
    out = masker.feed(good[0]) + masker.feed(huge[:50]) + masker.feed(huge[50:])
    out += masker.feed(b'"}}}\n' + good[1]) + masker.flush()
    lines = out.splitlines()
    assert len(lines) == 3
    assert json.loads(lines[1])["type"] == "ERROR"
    assert json.loads(lines[2])["object"]["metadata"]["name"] == "s1"
    assert not leaks(out)
    # A complete line over the limit in one chunk is withheld the same way.
    masker = WatchMasker(KUBERNETES_SECRET_MASKS, max_line=20)
    assert json.loads(masker.feed(good[0]))["type"] == "ERROR"


def test_watch_truncated_at_end_of_stream_is_withheld() -> None:
    line = watch_lines(1)[0]
    masker = WatchMasker(KUBERNETES_SECRET_MASKS)
    assert masker.feed(line[:40]) == b""
    out = masker.flush()
    assert json.loads(out)["type"] == "ERROR" and out.endswith(b"\n")
    assert masker.flush() == b""


# --- headers --------------------------------------------------------------------------------


def test_headers_masked_case_insensitively_with_auth_scheme_kept() -> None:
    mask_set = compile_masks([], ["Authorization", "set-cookie", "X-Api-Key"])
    headers = [
        ("authorization", "Bearer " + CANARY),
        ("Set-Cookie", f"session={CANARY}; Path=/"),
        ("Set-Cookie", f"csrf={CANARY}"),
        ("X-API-KEY", CANARY),
        ("Content-Type", "application/json"),
    ]
    masked = mask_headers(headers, mask_set)
    assert masked == [
        ("authorization", "Bearer ***"),
        ("Set-Cookie", "***"),
        ("Set-Cookie", "***"),
        ("X-API-KEY", "***"),
        ("Content-Type", "application/json"),
    ]
    assert mask_headers({"X-Api-Key": CANARY, "Accept": "*/*"}, mask_set) == [
        ("X-Api-Key", "***"),
        ("Accept", "*/*"),
    ]
    keyed = mask_headers(headers[:2], mask_set.with_style(KEYED))
    assert keyed[0][1] == "Bearer " + KEYED.mask_text(CANARY)
    assert not leaks(keyed)


# --- request bodies -------------------------------------------------------------------------


def test_request_json_create_with_string_data() -> None:
    secret = make_secret({"password": "p"}, {"token": "t"}, applied=True)
    result = mask_request_body(
        "application/json; charset=utf-8", json.dumps(secret).encode(), KUBERNETES_SECRET_MASKS
    )
    assert not result.replaced_whole and result.masked >= 4
    assert result.content_type == "application/json; charset=utf-8"
    assert not leaks(result.body)


def test_request_merge_patch_uses_the_kind_hint() -> None:
    body = json.dumps({"stringData": {"password": CANARY}}).encode()
    for content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        result = mask_request_body(content_type, body, KUBERNETES_SECRET_MASKS, kind="Secret")
        assert json.loads(result.body) == {"stringData": {"password": "***"}}


@pytest.mark.parametrize(
    "op, expected_value",
    [
        ({"op": "add", "path": "/data/password", "value": b64(CANARY)}, FIXED_B64),
        ({"op": "replace", "path": "/stringData", "value": {"k": CANARY}}, {"k": "***"}),
        ({"op": "replace", "path": "/data/0", "value": b64(CANARY)}, FIXED_B64),
        ({"op": "test", "path": "/data/k", "value": b64(CANARY)}, FIXED_B64),
        (
            {
                "op": "add",
                "path": "/metadata/annotations/" + LAST_APPLIED.replace("/", "~1"),
                "value": json.dumps({"kind": "Secret", "data": {"k": b64(CANARY)}}),
            },
            json.dumps({"kind": "Secret", "data": {"k": FIXED_B64}}, separators=(",", ":")),
        ),
        (
            {"op": "replace", "path": "", "value": {"kind": "Secret", "data": {"k": CANARY}}},
            {"kind": "Secret", "data": {"k": FIXED_B64}},
        ),
        ({"op": "replace", "path": "/metadata/labels/app", "value": "web"}, "web"),
        ({"op": "add", "path": "no-slash", "value": CANARY}, "***"),
    ],
)
def test_request_json_patch_values_masked_where_they_land(
    op: dict[str, Any], expected_value: Any
) -> None:
    body = json.dumps([{"op": "remove", "path": "/data/old"}, op]).encode()
    result = mask_request_body(
        "application/json-patch+json", body, KUBERNETES_SECRET_MASKS, kind="Secret"
    )
    ops = json.loads(result.body)
    assert ops[0] == {"op": "remove", "path": "/data/old"}
    assert ops[1]["value"] == expected_value and ops[1]["path"] == op["path"]
    assert not leaks(result.body)


def test_request_json_patch_into_lists_with_user_masks() -> None:
    mask_set = masks("$.spec.containers[*].env[*].value")
    body = json.dumps(
        [
            {
                "op": "add",
                "path": "/spec/containers/0/env/-",
                "value": {"name": "A", "value": CANARY},
            },
            {"op": "replace", "path": "/spec/containers/1/env/2/value", "value": CANARY},
            {"op": "replace", "path": "/spec/containers/1/image", "value": "nginx:2"},
        ]
    ).encode()
    ops = json.loads(mask_request_body("application/json-patch+json", body, mask_set).body)
    assert ops[0]["value"] == {"name": "A", "value": "***"}
    assert ops[1]["value"] == "***"
    assert ops[2]["value"] == "nginx:2"


def test_request_yaml_apply_patch() -> None:
    doc = make_secret({"password": "p"}, {"token": "t"}, applied=False)
    body = yaml.safe_dump(doc).encode()
    result = mask_request_body("application/apply-patch+yaml", body, KUBERNETES_SECRET_MASKS)
    assert not result.replaced_whole and result.content_type == "application/apply-patch+yaml"
    parsed = yaml.safe_load(result.body)
    assert parsed["data"] == {"password": FIXED_B64} and parsed["stringData"] == {"token": "***"}
    assert not leaks(result.body)
    aliased = b"a: &x {data: {k: v}}\nb: *x\n"
    assert mask_request_body("application/yaml", aliased, KUBERNETES_SECRET_MASKS).replaced_whole
    assert mask_request_body("application/yaml", b"a: [\n", KUBERNETES_SECRET_MASKS).replaced_whole


def test_request_protobuf_decoded_in_full_is_shown_masked() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "sandbox"},
        "type": "Opaque",
        "data": {"password": b64(CANARY)},
        "stringData": {"token": CANARY},
    }
    body = encode_object(secret)
    assert CANARY.encode() in body
    result = mask_request_body("application/vnd.kubernetes.protobuf", body, KUBERNETES_SECRET_MASKS)
    assert not result.replaced_whole and result.content_type == "application/json"
    shown = json.loads(result.body)
    assert shown["metadata"]["name"] == "s" and shown["data"] == {"password": FIXED_B64}
    assert shown["stringData"] == {"token": "***"}
    assert not leaks(result.body)


def test_request_protobuf_that_cannot_be_decoded_in_full_is_withheld() -> None:
    role = encode_object(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "d"}}
    )
    result = mask_request_body("application/vnd.kubernetes.protobuf", role, KUBERNETES_SECRET_MASKS)
    assert result.replaced_whole and "Role" in result.reason
    secret = encode_object({"apiVersion": "v1", "kind": "Secret", "data": {"k": b64(CANARY)}})
    result = mask_request_body(
        "application/vnd.kubernetes.protobuf", secret[:-9], KUBERNETES_SECRET_MASKS
    )
    assert result.replaced_whole and not leaks(result.body)


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("text/plain", f"password={CANARY}".encode()),
        ("application/x-www-form-urlencoded", f"token={CANARY}".encode()),
        ("application/cbor", b"\xa1\x64data" + CANARY.encode()),
        ("application/json", gzip.compress(json.dumps({"data": {"k": CANARY}}).encode(), mtime=0)),
    ],
)
def test_request_bodies_that_cannot_be_parsed_are_withheld(content_type: str, body: bytes) -> None:
    result = mask_request_body(content_type, body, KUBERNETES_SECRET_MASKS)
    assert result.replaced_whole and not leaks(result.body)


# --- the shapes a real apiserver serves: the simulator, a Secret from `kubectl apply` -------

KUBECTL = pathlib.Path(sys.executable).with_name("kubectl")
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
PARTIAL_LIST = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"


@pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl not installed next to python")
def test_simulator_shapes_of_an_applied_secret_never_leak(tmp_path: pathlib.Path) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "applied", "namespace": "default"},
        "data": {"password": b64(CANARY + "-data")},
        "stringData": {"token": CANARY + "-string"},
    }
    with running_simulator("redact-token", tmp_path / "certs") as sim:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(sim.kubeconfig(token="redact-token"))
        env = {**os.environ, "HOME": str(tmp_path), "KUBECACHEDIR": str(tmp_path / "cache")}
        env.pop("KUBECONFIG", None)
        applied = subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(kubeconfig), "--request-timeout=20s"]
            + ["apply", "-f", "-"],
            input=json.dumps(manifest),
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert applied.returncode == 0, applied.stderr
        context = ssl.create_default_context(cafile=str(sim.ca_path))
        with httpx.Client(
            base_url=sim.url,
            verify=context,
            headers={"Authorization": "Bearer redact-token"},
            timeout=10,
        ) as http:
            base = "/api/v1/namespaces/default/secrets"
            bodies = {
                "object": http.get(f"{base}/applied"),
                "list": http.get(base),
                "table-metadata": http.get(base, headers={"Accept": TABLE}),
                "table-object": http.get(
                    base, params={"includeObject": "Object"}, headers={"Accept": TABLE}
                ),
                "partial-list": http.get(base, headers={"Accept": PARTIAL_LIST}),
            }
            with http.stream("GET", base, params={"watch": "1", "timeoutSeconds": "1"}) as watching:
                masker = WatchMasker(KUBERNETES_SECRET_MASKS)
                raw_watch = b""
                streamed: list[bytes] = []
                for chunk in watching.iter_raw():
                    raw_watch += chunk
                    streamed += masker(chunk)
                streamed += masker(b"")
    applied_object = bodies["object"].json()
    assert LAST_APPLIED in applied_object["metadata"]["annotations"]
    for shape, response in bodies.items():
        assert response.status_code == 200, shape
        assert leaks(response.content), f"{shape}: the canary is there before masking"
        result = mask_json_body(response.content, KUBERNETES_SECRET_MASKS, kind="Secret")
        assert not result.replaced_whole, shape
        assert not leaks(result.body), shape
        assert b"applied" in result.body, shape
    assert leaks(raw_watch)
    assert streamed and not leaks(b"".join(streamed))
    assert json.loads(streamed[0])["object"]["metadata"]["name"] == "applied"
