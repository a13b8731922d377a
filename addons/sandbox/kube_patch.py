"""The three patch formats of the apiserver: JSON merge (RFC 7386), JSON (RFC 6902), strategic merge.

Strategic merge follows k8s.io/apimachinery/pkg/util/strategicpatch for the directives kubectl
sends (`$patch`, `$retainKeys`, `$setElementOrder/`, `$deleteFromPrimitiveList/`); which lists
merge, and by which key, comes from a `PatchSchema` (the simulator's OpenAPI v3 components).
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
APPLY_PATCH_CBOR = "application/apply-patch+cbor"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)


class PatchError(ValueError):
    """The patch cannot be applied (the apiserver answers 422 or 400)."""


class PatchSchema(Protocol):
    """Navigates the schema of the patched object: where lists merge and by which key."""

    def field(self, key: str) -> PatchSchema:
        """The schema of a property."""
        ...

    def items(self) -> PatchSchema:
        """The schema of a list's items."""
        ...

    def list_strategy(self) -> tuple[bool, str]:
        """(merge?, merge key) of this list; (False, "") means replace it whole."""
        ...


class NoSchema:
    """A schema that knows nothing: every list is replaced, like a JSON merge patch."""

    def field(self, key: str) -> PatchSchema:
        """Nothing known below."""
        return self

    def items(self) -> PatchSchema:
        """Nothing known below."""
        return self

    def list_strategy(self) -> tuple[bool, str]:
        """Replace."""
        return False, ""


# ---------------------------------------------------------------- JSON merge patch


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------- JSON patch


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f'invalid JSON pointer "{path}"')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"doc is missing path: {path}: missing value")
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"doc is missing path: {path}: missing value")


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError(f"doc is missing path: {path}: missing value")


def _add(doc: Any, path: str, value: Any, *, replace: bool = False) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise PatchError(f"doc is missing key: {path}: missing value")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise PatchError(f"unable to access invalid index: {last}: invalid index referenced")
    else:
        raise PatchError(f"doc is missing path: {path}: missing value")
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 on a copy of doc."""
    if not isinstance(operations, list):
        raise PatchError("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "path" not in op:
            raise PatchError("json patch operation must be an object with a path")
        kind, path = op.get("op"), str(op["path"])
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op.get("value")), replace=True)
        elif kind == "move":
            value = _remove(doc, str(op.get("from", "")))
            doc = _add(doc, path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, str(op.get("from", "")))))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {kind}")
    return doc


# ---------------------------------------------------------------- strategic merge patch

_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"


def _strip(value: Any) -> Any:
    """A patch value without directives, to store as is."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def strategic_merge(original: Obj, patch: Obj, schema: PatchSchema) -> Obj:
    """Apply a strategic merge patch to a copy of original."""
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object")
    return _merge_map(copy.deepcopy(original), patch, schema)


def _merge_map(original: Obj, patch: Obj, schema: PatchSchema) -> Obj:
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip(patch)
    if directive not in (None, "merge", "delete"):
        raise PatchError(f"Unknown patch type: {directive}")
    result = original
    orders: list[tuple[str, list[Any]]] = []
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith(_ORDER):
            orders.append((key[len(_ORDER) :], value if isinstance(value, list) else []))
            continue
        if key.startswith(_DELETE_PRIMITIVE):
            field = key[len(_DELETE_PRIMITIVE) :]
            drop = value if isinstance(value, list) else []
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in drop]
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        sub = schema.field(key)
        if isinstance(value, dict):
            if value.get("$patch") == "delete":
                result.pop(key, None)
            elif isinstance(current, dict):
                result[key] = _merge_map(current, value, sub)
            else:
                result[key] = _merge_map({}, value, sub)
        elif isinstance(value, list):
            merge, merge_key = sub.list_strategy()
            if merge and isinstance(current, list):
                result[key] = _merge_list(current, value, merge_key, sub.items())
            else:
                result[key] = [_strip(v) for v in value if not _is_directive_only(v)]
        else:
            result[key] = value
    for field, order in orders:
        merge_key = schema.field(field).list_strategy()[1]
        if isinstance(result.get(field), list):
            result[field] = _reorder(result[field], order, merge_key)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _is_directive_only(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(k.startswith("$") for k in value)


def _merge_list(
    current: list[Any], patch: list[Any], merge_key: str, items: PatchSchema
) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [_strip(p) for p in patch if not _is_directive_only(p)]
    result = list(current)
    if not merge_key:
        for value in patch:
            if value not in result:
                result.append(copy.deepcopy(value))
        return result
    for value in patch:
        if not isinstance(value, dict):
            result.append(value)
            continue
        key = value.get(merge_key)
        index = next(
            (i for i, e in enumerate(result) if isinstance(e, dict) and e.get(merge_key) == key),
            None,
        )
        if value.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is not None:
            result[index] = _merge_map(result[index], value, items)
        else:
            result.append(_merge_map({}, value, items))
    return result


def _reorder(values: list[Any], order: list[Any], merge_key: str) -> list[Any]:
    def ident(value: Any) -> Any:
        return value.get(merge_key) if merge_key and isinstance(value, dict) else value

    wanted = [ident(o) for o in order]
    ranked = [v for w in wanted for v in values if ident(v) == w]
    rest = [v for v in values if ident(v) not in wanted]
    return ranked + rest
