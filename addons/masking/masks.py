"""What gets masked: JSONPath masks over JSON documents, Kubernetes-aware. Pure: no mitmproxy here.

A mask is a JSONPath (jsonpath-ng's extended syntax) written for one object. Kubernetes shapes
are unwrapped so the same mask reaches every object a response carries: each `items[*]` of a
`*List`, each Table row's `object`, each watch event's `object`, and the JSON copy of the object
inside the `kubectl.kubernetes.io/last-applied-configuration` annotation. A mask is also applied
once to the document as written, so `$.items[?(@.kind=="Secret")].data` works on a list.

Replacements keep the JSON type sensible (`MaskStyle`): strings become the mask text, numbers
0, booleans false, null stays null (it hides nothing), and objects or arrays become the mask
text as a whole. A keyed style replaces strings, objects and arrays by `hmac:` + 16 hex digits
of HMAC-SHA256 over the value's canonical JSON and numbers by an integer from the same digest,
so equal values give equal masks. Secret `data` values are base64 in the API (Go decodes them
into []byte, and `kubectl describe` fails on anything else), so there the mask is base64 too,
and the keyed hash is taken over the decoded text: a `data` and a `stringData` value holding
the same secret get the same mask.

A mask may be limited to kinds (the Secret built-ins are). An object's kind is its own `kind`,
else its list's (`SecretList` items are Secrets), else the caller's hint (the kind the request
asked for); an object whose kind cannot be told gets every mask.

Table cells are printed from the object by the apiserver, which does not say which field a
column shows. A cell is masked when it shows a masked value: it equals one, or (for text) it
contains a masked string or number verbatim. A row without its full object (`includeObject`
`Metadata`, kubectl's default, or `None`) hides the values, so every cell but the name column
(the first one when a watch event omits the column definitions) is masked, unless each mask
that could apply is confined to `metadata` (which a `Metadata` row carries; of a `None` row only
the name cell is known) or never printed for its kind (the Secret built-ins: the apiserver
prints a Secret's name, type, key count and age).

Fail closed: a body that cannot be parsed (protobuf, compressed, malformed, truncated, not
UTF-8) is replaced whole by a placeholder; a watch line that cannot be parsed becomes a watch
`ERROR` event; a last-applied annotation that is not JSON is masked whole; a mask that cannot
be applied to a document withholds the document. Clear text of a masked field is never returned.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from jsonpath_ng import (
    Child,
    Descendants,
    Fields,
    Index,
    JSONPath,
    Parent,
    Root,
    Slice,
    This,
    Where,
    WhereNot,
)
from jsonpath_ng.ext import parse as parse_jsonpath
from jsonpath_ng.ext.filter import And, Expression, Filter, Or
from jsonpath_ng.jsonpath import Wildcard, _Union

from holdgate.kube import protobuf as kube_protobuf

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
DEFAULT_MASK_TEXT = "***"
MAX_WATCH_LINE = 16 * 1024 * 1024
MIN_HMAC_KEY = 16

_JSON_SEPARATORS = (",", ":")
# Compact and ASCII-only (faster than UTF-8 output, equally valid); NaN is not JSON.
_ENCODER = json.JSONEncoder(separators=_JSON_SEPARATORS, allow_nan=False)
_PROTOBUF_MAGIC = kube_protobuf.MAGIC
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Table columns the apiserver prints from metadata.name; a masked name is caught by value.
_NAME_FORMAT = "name"
_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_YAML_TYPES = frozenset(
    {"application/yaml", "application/x-yaml", "text/yaml", "application/apply-patch+yaml"}
)
_JSON_PATCH_TYPE = "application/json-patch+json"
_SPARSE_INDEX_LIMIT = 10_000

_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class MaskError(ValueError):
    """A mask that cannot be compiled; `field` and `index` say which entry of the list it was."""

    def __init__(self, message: str, field: str = "paths", index: int = 0) -> None:
        super().__init__(message)
        self.field = field
        self.index = index


class _NotJSON(ValueError):
    """Text Python's parser accepts but JSON does not (NaN, Infinity)."""


def _reject_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class _Unmaskable(Exception):
    """A mask matched something it cannot replace: the document is withheld instead."""


# --- style ----------------------------------------------------------------------------------


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=_JSON_SEPARATORS, ensure_ascii=False, default=str
)


def _canonical(value: Any) -> bytes:
    """The bytes a keyed mask hashes: compact JSON with sorted keys, UTF-8."""
    return _CANONICAL.encode(value).encode("utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class MaskStyle:
    """How a masked value is replaced: fixed text, or a keyed hash when `hmac_key` is set."""

    text: str = DEFAULT_MASK_TEXT
    hmac_key: bytes | None = field(default=None, repr=False)
    # The keyed state, copied per value (cheaper than keying HMAC-SHA256 each time).
    _keyed: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ValueError("mask text must be a string")
        if self.hmac_key is not None:
            if not isinstance(self.hmac_key, bytes) or len(self.hmac_key) < MIN_HMAC_KEY:
                raise ValueError(f"mask hash secret must be at least {MIN_HMAC_KEY} bytes")
            object.__setattr__(self, "_keyed", hmac.new(self.hmac_key, digestmod="sha256"))

    def __repr__(self) -> str:
        return "MaskStyle(keyed)" if self.hmac_key is not None else f"MaskStyle({self.text!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (MaskStyle, (self.text, self.hmac_key))

    def __deepcopy__(self, memo: dict[int, Any]) -> MaskStyle:
        return self  # immutable

    @classmethod
    def keyed(cls, secret: bytes) -> MaskStyle:
        """A keyed-hash style: equal values give equal masks, without showing the value."""
        return cls(hmac_key=secret)

    @property
    def is_keyed(self) -> bool:
        return self.hmac_key is not None

    def _digest(self, data: bytes) -> str:
        keyed = self._keyed.copy()
        keyed.update(data)
        return keyed.hexdigest()[:16]

    def mask_text(self, value: Any) -> str:
        """The text that stands for `value` (whatever its type)."""
        if self.hmac_key is None:
            return self.text
        return "hmac:" + self._digest(_canonical(value))

    def mask_value(self, value: Any) -> Any:
        """The type-sensible replacement of one JSON value."""
        if value is None:
            return None
        if isinstance(value, bool):
            return False
        if isinstance(value, int | float):
            if self.hmac_key is None:
                return 0
            # 48 bits: exact in every JSON reader, including JavaScript's doubles.
            return int(self._digest(_canonical(value))[:12], 16)
        return self.mask_text(value)

    def mask_base64(self, value: Any) -> str:
        """The replacement of a base64 field (a Secret's `data`): the mask text, base64-encoded."""
        if self.hmac_key is None:
            return _b64_text(self.text)
        hashed: Any = value
        if isinstance(value, str):
            try:
                hashed = binascii.a2b_base64(value, strict_mode=True).decode("utf-8")
            except (binascii.Error, ValueError):
                hashed = {"base64": value}
        return _b64_text(self.mask_text(hashed))


def _b64_text(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# --- compiled masks -------------------------------------------------------------------------

# Fast-path program steps: (op, argument). A program is the steps after `$`.
_FIELDS, _WILD, _INDEX, _SLICE, _DESC, _FILTER = range(6)
Step = tuple[int, Any]

# Nodes that denote locations (they can be replaced); anything else computes a value.
_LOCATION_LEAVES = (Root, This, Fields, Wildcard, Index, Slice, Filter, Parent)


@dataclass(frozen=True, slots=True)
class MaskPath:
    """One compiled JSONPath mask, optionally only for some kinds."""

    expression: str
    kinds: frozenset[str] = frozenset()
    base64: bool = False
    # True when the apiserver's table printer for these kinds never shows the masked fields.
    table_safe: bool = False
    jsonpath: JSONPath | None = field(default=None, compare=False, repr=False)
    program: tuple[Step, ...] | None = field(default=None, compare=False, repr=False)
    metadata_only: bool = field(default=False, compare=False, repr=False)
    # The shape of most masks, walked without the generic finder: names, then a last name
    # (`key`) or every child (`wild`).
    walk: tuple[str, ...] | None = field(default=None, compare=False, repr=False)
    key: str | None = field(default=None, compare=False, repr=False)
    wild: bool = field(default=False, compare=False, repr=False)

    def applies_to(self, kind: str | None) -> bool:
        """Whether the mask applies to an object of `kind` (None: cannot tell, so it does)."""
        return not self.kinds or kind is None or kind in self.kinds


def _check_location(node: JSONPath, expression: str) -> None:
    if isinstance(node, Child | Descendants | _Union):
        _check_location(node.left, expression)
        _check_location(node.right, expression)
    elif isinstance(node, Where | WhereNot):
        _check_location(node.left, expression)
    elif isinstance(node, Filter):
        for e in node.expressions:
            _check_filter(e, expression)
    elif not isinstance(node, _LOCATION_LEAVES):
        raise MaskError(
            f"JSONPath {expression!r}: `{node}` computes a value; a mask needs a location"
        )


def _check_filter(node: Any, expression: str) -> None:
    if isinstance(node, And | Or):
        for operand in node.operands:
            _check_filter(operand, expression)
    elif isinstance(node, Expression) and node.op == "=~":
        try:
            re.compile(node.value)
        except (re.error, TypeError) as e:
            raise MaskError(f"JSONPath {expression!r}: invalid regex {node.value!r}: {e}") from e


def _program(node: JSONPath) -> list[Step] | None:
    """The fast-path steps of an absolute or relative path, or None when it needs jsonpath-ng."""
    if isinstance(node, Root | This):
        return []
    if isinstance(node, Child):
        left, right = _program(node.left), _relative(node.right)
        if left is None or right is None:
            return None
        return _append(left, right)
    if isinstance(node, Descendants):
        left, right = _program(node.left), _relative(node.right)
        if left is None or right is None or not right:
            return None
        return _append(left, [(_DESC, right)])
    return _relative(node)


def _relative(node: JSONPath) -> list[Step] | None:
    if isinstance(node, Root | This):
        return None
    if isinstance(node, Fields):
        if getattr(node, "_deprecated_wildcard_use", False):
            return None
        return [(_FIELDS, tuple(node.fields))]
    if isinstance(node, Wildcard):
        return [(_WILD, None)]
    if isinstance(node, Index):
        return [(_INDEX, tuple(node.indices))]
    if isinstance(node, Slice):
        if getattr(node, "_deprecated_wildcard_use", False):
            return None
        return [(_SLICE, slice(node.start, node.end, node.step))]
    if isinstance(node, Filter):
        if node._references_root():
            return None
        return [(_FILTER, tuple(node.expressions))]
    if isinstance(node, Child | Descendants):
        if _contains_root(node):
            return None
        return _program(node)
    return None


def _contains_root(node: JSONPath) -> bool:
    if isinstance(node, Root | This):
        return True
    if isinstance(node, Child | Descendants):
        return _contains_root(node.left) or _contains_root(node.right)
    return False


def _append(program: list[Step], steps: list[Step]) -> list[Step]:
    """Append `steps` after `program`; after a `..` they continue inside its body."""
    if program and program[-1][0] == _DESC:
        body = _append(list(program[-1][1]), steps)
        return program[:-1] + [(_DESC, body)]
    return program + steps


def _freeze(program: list[Step]) -> tuple[Step, ...]:
    return tuple((op, _freeze(arg) if op == _DESC else arg) for op, arg in program)


def compile_mask_path(
    expression: str,
    kinds: Iterable[str] = (),
    *,
    base64: bool = False,
    table_safe: bool = False,
) -> MaskPath:
    """Compile one JSONPath mask; raise `MaskError` when it is not a valid location path."""
    if not isinstance(expression, str) or not expression.strip():
        raise MaskError(f"JSONPath {expression!r}: empty")
    if expression.startswith("."):
        expression = "$" + expression  # `..password`, as kubectl's JSONPath allows
    try:
        parsed = parse_jsonpath(expression)
    except Exception as e:  # jsonpath-ng raises several unrelated types for bad syntax
        raise MaskError(f"invalid JSONPath {expression!r}: {e}") from e
    _check_location(parsed, expression)
    steps = _program(parsed)
    program = _freeze(steps) if steps is not None else None
    first = program[0] if program else None
    return MaskPath(
        expression=expression,
        kinds=frozenset(kinds),
        base64=base64,
        table_safe=table_safe,
        jsonpath=parsed,
        program=program,
        metadata_only=first is not None and first == (_FIELDS, ("metadata",)),
        **_simple_shape(program),
    )


def _simple_shape(program: tuple[Step, ...] | None) -> dict[str, Any]:
    """`walk`/`key`/`wild` of a program made of single names, optionally ending in `*`."""
    if not program:
        return {}
    wild = program[-1][0] == _WILD
    names = program[:-1] if wild else program
    if not all(op == _FIELDS and len(arg) == 1 for op, arg in names):
        return {}
    chain = tuple(arg[0] for _, arg in names)
    if wild:
        return {"walk": chain, "wild": True}
    return {"walk": chain[:-1], "key": chain[-1]}


@dataclass(frozen=True, slots=True)
class MaskSet:
    """Compiled masks: JSONPaths, header names (lowercase) and the replacement style."""

    paths: tuple[MaskPath, ...] = ()
    headers: frozenset[str] = frozenset()
    style: MaskStyle = MaskStyle()

    @property
    def is_empty(self) -> bool:
        return not self.paths and not self.headers

    def merge(self, others: Iterable[MaskSet]) -> MaskSet:
        """All masks of this set and `others` (paths in order, deduplicated); this set's style."""
        paths = list(self.paths)
        seen = set(paths)
        headers = set(self.headers)
        for other in others:
            headers |= other.headers
            for p in other.paths:
                if p not in seen:
                    seen.add(p)
                    paths.append(p)
        return MaskSet(paths=tuple(paths), headers=frozenset(headers), style=self.style)

    def with_style(self, style: MaskStyle) -> MaskSet:
        """The same masks with another replacement style."""
        return replace(self, style=style)

    def cell_risk(self, kind: str | None, metadata_seen: bool = True) -> bool:
        """Whether a table row of `kind` without its object may show a masked field unseen."""
        return any(
            p.applies_to(kind) and not p.table_safe and not (metadata_seen and p.metadata_only)
            for p in self.paths
        )


@dataclass(frozen=True, slots=True)
class Masking:
    """What to mask for one request, and which mask rules said so."""

    masks: MaskSet
    rules: tuple[str, ...]
    secret_builtins: bool

    @property
    def active(self) -> bool:
        """Whether anything is masked."""
        return not self.masks.is_empty


def compile_masks(
    paths: Iterable[str],
    headers: Iterable[str] = (),
    style: MaskStyle | None = None,
    *,
    kinds: Iterable[str] = (),
) -> MaskSet:
    """Compile a rule's masks; `MaskError` (a ValueError) names the entry that is invalid."""
    compiled = []
    kind_set = frozenset(kinds)
    for i, expression in enumerate(paths):
        try:
            compiled.append(compile_mask_path(expression, kind_set))
        except MaskError as e:
            raise MaskError(str(e), "paths", i) from e
    names = []
    for i, name in enumerate(headers):
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise MaskError(f"invalid header name {name!r}", "headers", i)
        names.append(name.lower())
    return MaskSet(paths=tuple(compiled), headers=frozenset(names), style=style or MaskStyle())


EMPTY_MASKS = MaskSet()

KUBERNETES_SECRET_MASKS = MaskSet(
    paths=(
        compile_mask_path("$.data.*", ("Secret",), base64=True, table_safe=True),
        compile_mask_path("$.stringData.*", ("Secret",), table_safe=True),
    )
)
"""Every value of a Secret's `data` and `stringData` (keys stay visible), also inside the
last-applied annotation, which every mask set covers."""


# --- finding --------------------------------------------------------------------------------

Site = tuple[Any, Any]  # (parent container, key or index)
_MISSING = object()
_GONE = object()


def _find(node: Any, steps: tuple[Step, ...], i: int, out: list[Site]) -> None:
    """Collect the sites `steps[i:]` selects under `node`, in jsonpath-ng's order."""
    op, arg = steps[i]
    last = i + 1 == len(steps)
    if op == _FIELDS:
        if isinstance(node, dict):
            for name in arg:
                if name in node:
                    if last:
                        out.append((node, name))
                    else:
                        _find(node[name], steps, i + 1, out)
    elif op == _WILD:
        if isinstance(node, dict):
            if last:
                out.extend((node, k) for k in node)
            else:
                for child in node.values():
                    _find(child, steps, i + 1, out)
        elif isinstance(node, list):
            if last:
                out.extend((node, k) for k in range(len(node)))
            else:
                for child in node:
                    _find(child, steps, i + 1, out)
    elif op == _INDEX:
        if isinstance(node, list):
            n = len(node)
            for index in arg:
                if -n <= index < n:
                    if last:
                        out.append((node, index % n))
                    else:
                        _find(node[index], steps, i + 1, out)
    elif op == _SLICE:
        if isinstance(node, list) and arg.step != 0:
            bounds: slice = arg
            window = range(len(node))[bounds]
            for index in window:
                if last:
                    out.append((node, index))
                else:
                    _find(node[index], steps, i + 1, out)
    elif op == _FILTER:
        candidates: Iterable[tuple[Any, Any]]
        if isinstance(node, dict):
            candidates = node.items()
        elif isinstance(node, list):
            candidates = enumerate(node)
        else:
            return
        for key, child in candidates:
            if all(e.find(child) for e in arg):
                if last:
                    out.append((node, key))
                else:
                    _find(child, steps, i + 1, out)
    else:  # _DESC: the body at this node and at every descendant, pre-order
        stack = [node]
        while stack:
            current = stack.pop()
            _find(current, arg, 0, out)
            if isinstance(current, list):
                stack.extend(reversed(current))
            elif isinstance(current, dict):
                stack.extend(reversed(current.values()))


def _find_generic(node: Any, path: MaskPath) -> list[Site | None]:
    """Sites via jsonpath-ng's own `find`; None stands for the node itself."""
    assert path.jsonpath is not None
    try:
        matches = path.jsonpath.find(node)
    except Exception as e:  # a path that breaks on this shape is not applied silently
        raise _Unmaskable(f"mask {path.expression!r} failed: {type(e).__name__}") from e
    sites: list[Site | None] = []
    for match in matches:
        context = match.context
        if context is None:
            sites.append(None)
            continue
        parent, step = context.value, match.path
        if isinstance(step, Fields) and len(step.fields) == 1 and isinstance(parent, dict):
            sites.append((parent, step.fields[0]))
        elif isinstance(step, Index) and len(step.indices) == 1 and isinstance(parent, list):
            sites.append((parent, step.indices[0] % len(parent)))
        else:
            raise _Unmaskable(f"mask {path.expression!r} matched {step!r}, which cannot be set")
    return sites


# --- masking --------------------------------------------------------------------------------


def _fixed(value: Any, text: str) -> Any:
    """The fixed-text replacement of a value that is not a string."""
    if value is None or value is False:
        return value
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return 0
    return text


class _Masker:
    """The state of one masking run over documents the run may modify in place."""

    __slots__ = (
        "masks",
        "paths",
        "style",
        "hint",
        "count",
        "done",
        "recording",
        "collect",
        "_b64",
        "_hashed",
    )

    def __init__(self, masks: MaskSet, hint: str | None) -> None:
        self.masks = masks
        self.paths = masks.paths
        self.style = masks.style
        self.hint = hint
        self.count = 0
        # Sites masked by a pass over a container; later passes over its objects skip them, so a
        # value is hashed once. Values keep parents alive: their ids cannot be reused meanwhile.
        self.done: dict[tuple[int, Any], Any] = {}
        self.recording = False
        # (id of the parent, original value) of each masked value, while a Table needs them.
        self.collect: list[tuple[int, Any]] | None = None
        self._b64 = None if masks.style.is_keyed else _b64_text(masks.style.text)
        self._hashed: dict[tuple[bool, str], str] = {}

    def _replace(self, parent: Any, key: Any, base64_field: bool) -> None:
        done = self.done
        if done or self.recording:
            site = (id(parent), key)
            if site in done:
                return
            if self.recording:
                done[site] = parent
        value = parent[key]
        if self.collect is not None:
            self.collect.append((id(parent), value))
        self.count += 1
        if self._b64 is not None:  # fixed text: the common case, without a call per value
            if value is None:
                return
            if isinstance(value, bool):
                parent[key] = False
            elif isinstance(value, int | float):
                parent[key] = 0
            else:
                parent[key] = self._b64 if base64_field else self.style.text
        elif type(value) is str:
            # Keyed: a document repeats its values (last-applied copies them), hash each once.
            cached = self._hashed.get((base64_field, value))
            if cached is None:
                style = self.style
                cached = style.mask_base64(value) if base64_field else style.mask_value(value)
                self._hashed[(base64_field, value)] = cached
            parent[key] = cached
        elif base64_field and not isinstance(value, bool | int | float | type(None)):
            parent[key] = self.style.mask_base64(value)
        else:
            parent[key] = self.style.mask_value(value)

    def _replace_root(self, node: Any, base64_field: bool) -> Any:
        if self.collect is not None:
            self.collect.append((0, node))
        self.count += 1
        if base64_field and isinstance(node, str):
            return self.style.mask_base64(node)
        return self.style.mask_value(node)

    def _replace_children(self, container: Any, base64_field: bool) -> None:
        if self._b64 is None or self.done or self.recording or self.collect is not None:
            if isinstance(container, dict):
                for key in list(container):
                    self._replace(container, key, base64_field)
            elif isinstance(container, list):
                for index in range(len(container)):
                    self._replace(container, index, base64_field)
            return
        # Fixed text, nothing to record: the common case, without a call per value.
        text = self._b64 if base64_field else self.style.text
        if isinstance(container, dict):
            self.count += len(container)
            for key, value in container.items():  # replacing values keeps the dict's size
                container[key] = text if type(value) is str else _fixed(value, text)
        elif isinstance(container, list):
            self.count += len(container)
            for index, value in enumerate(container):
                container[index] = text if type(value) is str else _fixed(value, text)

    def apply(self, node: Any, kind: str | None) -> Any:
        """Apply every mask for `kind` at `node`; returns the node (or its replacement)."""
        for path in self.paths:
            if path.kinds and kind is not None and kind not in path.kinds:
                continue
            walk = path.walk
            if walk is not None:
                target = node
                for name in walk:
                    if not isinstance(target, dict):
                        break
                    target = target.get(name, _MISSING)
                else:
                    if path.wild:
                        self._replace_children(target, path.base64)
                    elif isinstance(target, dict) and path.key in target:
                        self._replace(target, path.key, path.base64)
                continue
            program = path.program
            if program is not None:
                if not program:
                    return self._replace_root(node, path.base64)
                sites: list[Any] = []
                _find(node, program, 0, sites)
            else:
                sites = _find_generic(node, path)
            for site in sites:
                if site is None:
                    return self._replace_root(node, path.base64)
                self._replace(site[0], site[1], path.base64)
        return node

    def node(self, node: Any, kind: str | None) -> Any:
        """Mask one document node: an object, a list, a Table or a watch event."""
        if not isinstance(node, dict):
            return self.apply(node, kind)
        own = node.get("kind")
        if isinstance(own, str) and own:
            kind = own
        elif own is not None:
            kind = None  # a kind that is not a name: cannot tell, so every mask applies
        items = node.get("items")
        named = own if isinstance(own, str) and own else ""
        if isinstance(items, list) and (not named or named.endswith("List")):
            if not named:
                item_kind = self.hint  # a list that does not say: its items are what was asked
            elif named == "List":
                item_kind = None  # mixed kinds: an item without its own kind gets every mask
            else:
                item_kind = named[: -len("List")]
            return self._container(node, kind, "items", item_kind)
        if kind == "Table" and isinstance(node.get("rows"), list):
            return self._table(node)
        if (
            own in (None, "WatchEvent")
            and isinstance(node.get("object"), dict)
            and isinstance(node.get("type"), str)
        ):
            return self._container(node, None, "object", self.hint)
        return self.object(node, kind)

    def object(self, obj: Any, kind: str | None) -> Any:
        """Mask one Kubernetes object: its last-applied copy, then the masks for its kind."""
        if isinstance(obj, dict):
            self._last_applied(obj)
        return self.apply(obj, kind)

    def _container(
        self, node: dict[str, Any], kind: str | None, key: str, inner: str | None
    ) -> Any:
        self._last_applied(node)
        node = self._recorded_pass(node, kind)
        if not isinstance(node, dict):
            return node
        children = node.get(key)
        if isinstance(children, list):
            for i, child in enumerate(children):
                masked = self.node(child, inner)
                if masked is not child:
                    children[i] = masked
        elif isinstance(children, dict):
            masked = self.node(children, inner)
            if masked is not children:
                node[key] = masked
        return node

    def _recorded_pass(self, node: Any, kind: str | None) -> Any:
        recording, self.recording = self.recording, True
        try:
            return self.apply(node, kind)
        finally:
            self.recording = recording

    def _table(self, table: dict[str, Any]) -> Any:
        self._last_applied(table)
        outer, self.collect = self.collect, []
        try:
            table = self._recorded_pass(table, "Table")
            hits = self.collect
        finally:
            self.collect = outer
        if outer is not None:
            outer.extend(hits)
        if not isinstance(table, dict):
            return table
        columns = table.get("columnDefinitions")
        if isinstance(columns, list) and columns:
            name_columns = {
                i
                for i, c in enumerate(columns)
                if isinstance(c, dict) and c.get("format") == _NAME_FORMAT
            }
        else:
            name_columns = {0}  # watch events after the first omit the columns; Name comes first
        rows = [r for r in table.get("rows") or [] if isinstance(r, dict)]
        # Values masked by a path written against the Table itself belong to the row holding
        # their parent; the rest (outside every row) may show in any row.
        by_parent: dict[int, list[Any]] = {}
        for parent_id, value in hits:
            by_parent.setdefault(parent_id, []).append(value)
        row_hits: list[list[Any]] = [[] for _ in rows]
        if by_parent:
            for i, row in enumerate(rows):
                for container_id in _container_ids(row):
                    row_hits[i].extend(by_parent.pop(container_id, ()))
        shared = [v for values in by_parent.values() for v in values]
        for row, values in zip(rows, row_hits, strict=True):
            self._row(row, shared + values, name_columns)
        return table

    def _row(self, row: dict[str, Any], values: list[Any], name_columns: set[int]) -> None:
        obj = row.get("object")
        cells = row.get("cells")
        full = isinstance(obj, dict) and obj.get("kind") != "PartialObjectMetadata"
        if obj is None and isinstance(cells, list):
            # No object (includeObject=None): the name column is all that is known of it.
            names = [cells[i] for i in sorted(name_columns) if i < len(cells)]
            if names and isinstance(names[0], str):
                probe: dict[str, Any] = {"metadata": {"name": names[0]}}
                outer, self.collect = self.collect, []
                try:
                    self.node(probe, self.hint)
                    values = values + [v for _, v in self.collect]
                finally:
                    self.collect = outer
        elif obj is not None:
            outer, self.collect = self.collect, []
            try:
                masked = self.node(obj, self.hint)
                hits = self.collect
            finally:
                self.collect = outer
            if masked is not obj:
                row["object"] = masked
            if outer is not None:
                outer.extend(hits)
            values = values + [v for _, v in hits]
        if not isinstance(cells, list):
            return
        blind = not full and self.masks.cell_risk(self.hint, metadata_seen=obj is not None)
        shown = _Shown(values)
        for i, cell in enumerate(cells):
            if cell is None:
                continue
            if (blind and i not in name_columns) or shown.in_cell(cell):
                cells[i] = self.style.mask_value(cell)
                self.count += 1

    def _last_applied(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            return
        annotations = meta.get("annotations")
        if not isinstance(annotations, dict) or LAST_APPLIED not in annotations:
            return
        if self.done and (id(annotations), LAST_APPLIED) in self.done:
            return
        text = annotations[LAST_APPLIED]
        try:
            if not isinstance(text, str):
                raise ValueError("not a string")
            inner = _DECODER.decode(text)
        except (ValueError, RecursionError):
            self._replace(annotations, LAST_APPLIED, False)
            return
        before = self.count
        inner = self.node(inner, None)  # kubectl writes the kind; without one, every mask applies
        if self.count != before:
            rendered = _ENCODER.encode(inner)
            annotations[LAST_APPLIED] = rendered + "\n" if text.endswith("\n") else rendered


def _container_ids(value: Any) -> Iterable[int]:
    """The ids of every object and array in `value`, itself included."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            yield id(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            yield id(v)
            stack.extend(v)


def _leaves(value: Any, out: list[Any]) -> None:
    """Append the scalar leaves of `value` that could be printed (not null, not empty)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif v is not None and v != "":
            out.append(v)


class _Shown:
    """Masked values, indexed for the question "does this table cell show one of them?"."""

    def __init__(self, values: list[Any]) -> None:
        self.exact: set[tuple[str, Any]] = set()
        self.texts: set[str] = set()
        leaves: list[Any] = []
        for value in values:
            _leaves(value, leaves)
        for v in leaves:
            if isinstance(v, bool):
                self.exact.add(("bool", v))
                self.exact.add(("str", "true" if v else "false"))
            elif isinstance(v, int | float):
                self.exact.add(("num", v))
                self.texts.add(str(v))
            else:
                self.texts.add(str(v))

    def in_cell(self, cell: Any) -> bool:
        if not self.exact and not self.texts:
            return False
        if isinstance(cell, bool):
            return ("bool", cell) in self.exact
        if isinstance(cell, int | float):
            return ("num", cell) in self.exact or str(cell) in self.texts
        if isinstance(cell, str):
            return ("str", cell) in self.exact or any(t in cell for t in self.texts)
        leaves: list[Any] = []
        _leaves(cell, leaves)
        return any(self.in_cell(leaf) for leaf in leaves if not isinstance(leaf, dict | list))


def _json_copy(value: Any) -> Any:
    """A deep copy of a JSON value (faster than copy.deepcopy for JSON shapes)."""
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value


def mask_document(doc: Any, masks: MaskSet, *, kind: str | None = None) -> tuple[Any, int]:
    """Mask a copy of a JSON document (object, list, Table or watch event): (copy, values masked).

    `kind` is the kind of the objects the document is about where it does not say (the
    request's resource, e.g. "Secret" for a strategic merge patch of a secret); an object whose
    kind cannot be told gets every mask. Raises `ValueError` when a mask cannot be applied.
    """
    copy = _json_copy(doc)
    if not masks.paths:
        return copy, 0
    masker = _Masker(masks, kind)
    try:
        masked = masker.node(copy, kind)
    except _Unmaskable as e:
        raise ValueError(str(e)) from e
    return masked, masker.count


# --- bodies ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaskResult:
    """A masked body; `replaced_whole` when it could not be masked and was withheld."""

    body: bytes
    masked: int
    replaced_whole: bool = False
    reason: str = ""
    content_type: str = "application/json"


def withheld_body(reason: str) -> bytes:
    """The JSON placeholder that replaces a body which could not be masked."""
    return json.dumps(
        {"holdgate": f"body withheld: {reason}"}, separators=_JSON_SEPARATORS
    ).encode()


def _withheld(reason: str) -> MaskResult:
    return MaskResult(withheld_body(reason), 0, True, reason)


def _why(body: bytes, error: BaseException) -> str:
    """Why `body` could not be masked, in words that never quote the body."""
    if body.startswith(_PROTOBUF_MAGIC):
        return "protobuf body"
    if body.startswith(_GZIP_MAGIC):
        return "compressed body (gzip)"
    if body.startswith(_ZSTD_MAGIC):
        return "compressed body (zstd)"
    if isinstance(error, _Unmaskable):
        return str(error)
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    if isinstance(error, _NotJSON):
        return f"not JSON ({error})"
    if isinstance(error, json.JSONDecodeError):
        if error.pos >= len(error.doc.rstrip()) or error.msg.startswith("Unterminated string"):
            return "truncated JSON"
        return f"malformed JSON ({error.msg} at line {error.lineno} column {error.colno})"
    if isinstance(error, ValueError) and "JSON compliant" in str(error):
        return "JSON number out of range"
    # Any other failure is a bug here; its message could quote data, so only its type is given.
    return f"masking failed ({type(error).__name__})"


def _parse_json(body: bytes) -> Any:
    return _DECODER.decode(body.decode("utf-8"))


def _render_json(doc: Any) -> bytes:
    return _ENCODER.encode(doc).encode("utf-8")


def _mask_json(body: bytes, masks: MaskSet, kind: str | None) -> tuple[bytes, int]:
    masker = _Masker(masks, kind)
    masked = masker.node(_parse_json(body), kind)
    return _render_json(masked), masker.count


def mask_json_body(body: bytes, masks: MaskSet, *, kind: str | None = None) -> MaskResult:
    """Parse, mask and re-serialize a JSON body compactly; what cannot be masked is withheld."""
    if not masks.paths or not body:
        return MaskResult(body, 0)
    try:
        rendered, count = _mask_json(body, masks, kind)
    except Exception as e:  # fail closed: whatever went wrong, the clear text stays here
        return _withheld(_why(body, e))
    return MaskResult(rendered, count)


def withheld_watch_event(reason: str) -> bytes:
    """A watch `ERROR` event (a Forbidden Status) standing for a line that was withheld."""
    event = {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"holdgate: watch event withheld: {reason}",
            "reason": "Forbidden",
            "code": 403,
        },
    }
    return json.dumps(event, separators=_JSON_SEPARATORS).encode() + b"\n"


class WatchMasker:
    """Masks a watch stream of JSON lines as it arrives, one complete line at a time.

    A line that is not a JSON event, or is longer than `max_line`, becomes a watch `ERROR`
    event (`withheld_watch_event`) and the stream goes on with the next line. Blank lines pass
    unchanged. Every line returned ends in a newline.
    """

    def __init__(
        self, masks: MaskSet, *, kind: str | None = None, max_line: int = MAX_WATCH_LINE
    ) -> None:
        self.masks = masks
        self.kind = kind
        self.max_line = max_line
        self.masked = 0
        self.withheld = 0
        self._buffer = bytearray()
        self._discarding = False

    def __call__(self, chunk: bytes) -> list[bytes]:
        """mitmproxy's stream convention: an empty chunk ends the stream. Returns a list, empty
        while a line is incomplete: an empty chunk would end a chunked HTTP/1 body."""
        out = self.feed(chunk) if chunk else self.flush()
        return [out] if out else []

    def feed(self, chunk: bytes) -> bytes:
        """The masked complete lines received so far; a trailing partial line is kept."""
        if self._discarding:
            end = chunk.find(b"\n")
            if end < 0:
                return b""
            self._discarding = False
            chunk = chunk[end + 1 :]
        end = chunk.rfind(b"\n")
        if end < 0:
            self._buffer += chunk
            return self._overflow()
        if self._buffer:
            self._buffer += chunk[: end + 1]
            complete = bytes(self._buffer)
            self._buffer.clear()
        else:
            complete = chunk[: end + 1]
        self._buffer += chunk[end + 1 :]
        out = [self._line(line) for line in complete.split(b"\n")[:-1]]
        out.append(self._overflow())
        return b"".join(out)

    def flush(self) -> bytes:
        """The end of the stream: a last line without newline is masked (or withheld) too."""
        discarding, self._discarding = self._discarding, False
        if discarding or not self._buffer:
            return b""
        line = bytes(self._buffer)
        self._buffer.clear()
        return self._line(line)

    def _overflow(self) -> bytes:
        if len(self._buffer) <= self.max_line:
            return b""
        self._buffer.clear()
        self._discarding = True
        self.withheld += 1
        return withheld_watch_event(f"line longer than {self.max_line} bytes")

    def _line(self, line: bytes) -> bytes:
        if not self.masks.paths or not line or line.isspace():
            return line + b"\n"
        if len(line) > self.max_line:
            self.withheld += 1
            return withheld_watch_event(f"line longer than {self.max_line} bytes")
        try:
            rendered, count = _mask_json(line, self.masks, self.kind)
        except Exception as e:  # fail closed, event by event
            self.withheld += 1
            return withheld_watch_event(_why(line, e))
        self.masked += count
        return rendered + b"\n"


# --- headers --------------------------------------------------------------------------------

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def mask_headers(headers: Headers, masks: MaskSet) -> list[tuple[str, str]]:
    """The headers with the values of masked names replaced (an auth scheme stays readable).

    Pass repeated headers as pairs (mitmproxy: `headers.items(multi=True)`).
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in pairs:
        lowered = name.lower()
        if lowered in masks.headers:
            scheme, sep, credential = value.strip().partition(" ")
            if lowered in _AUTH_HEADERS and sep and scheme.isalpha() and credential.strip():
                value = f"{scheme} {masks.style.mask_text(credential.strip())}"
            else:
                value = masks.style.mask_text(value)
        out.append((name, value))
    return out


# --- request bodies -------------------------------------------------------------------------


def mask_request_body(
    content_type: str, body: bytes, masks: MaskSet, *, kind: str | None = None
) -> MaskResult:
    """A request body fit to show or store: JSON, JSON Patch and YAML masked by path, protobuf
    shown as masked JSON when decoded in full; anything else withheld whole."""
    if not masks.paths or not body:
        return MaskResult(body, 0, content_type=content_type)
    media = content_type.partition(";")[0].strip().lower()
    try:
        if media == kube_protobuf.CONTENT_TYPE or body.startswith(_PROTOBUF_MAGIC):
            return _mask_protobuf(body, masks, kind)
        if media in _YAML_TYPES:
            return _mask_yaml(body, masks, kind, content_type)
        if media == _JSON_PATCH_TYPE:
            return _mask_json_patch(body, masks, kind, content_type)
        rendered, count = _mask_json(body, masks, kind)
    except Exception as e:  # fail closed
        return _withheld(_why(body, e))
    return MaskResult(rendered, count, content_type=content_type)


def _mask_protobuf(body: bytes, masks: MaskSet, kind: str | None) -> MaskResult:
    try:
        envelope = kube_protobuf.decode_envelope(body)
        if envelope.content_encoding:
            return _withheld(f"protobuf body with content encoding {envelope.content_encoding!r}")
        if not kube_protobuf.decodes(envelope.api_version, envelope.kind):
            return _withheld(f"protobuf {envelope.kind or 'body'} cannot be decoded in full")
        doc = kube_protobuf.decode_object(envelope)
    except kube_protobuf.ProtobufError as e:
        return _withheld(f"protobuf body cannot be decoded ({e})")
    masker = _Masker(masks, kind)
    rendered = _render_json(masker.node(doc, kind))
    return MaskResult(rendered, masker.count, False, "protobuf body shown as decoded JSON")


def _shares_containers(doc: Any) -> bool:
    """Whether a YAML document reuses a node through an alias (a walk could blow up)."""
    seen: set[int] = set()
    stack = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, dict | list):
            if id(v) in seen:
                return True
            seen.add(id(v))
            stack.extend(v.values() if isinstance(v, dict) else v)
    return False


def _mask_yaml(body: bytes, masks: MaskSet, kind: str | None, content_type: str) -> MaskResult:
    try:
        doc = yaml.load(body.decode("utf-8"), Loader=_YAML_LOADER)
    except UnicodeDecodeError:
        return _withheld("not UTF-8")
    except yaml.YAMLError as e:
        return _withheld(f"malformed YAML ({type(e).__name__})")
    if _shares_containers(doc):
        return _withheld("YAML aliases are not supported under masks")
    masker = _Masker(masks, kind)
    masked = masker.node(doc, kind)
    rendered = yaml.dump(masked, Dumper=_YAML_DUMPER, sort_keys=False, allow_unicode=True)
    return MaskResult(rendered.encode("utf-8"), masker.count, content_type=content_type)


# JSON Patch (RFC 6902): an operation's value is masked as if it stood at its `path` in an
# object. A numeric token may be an array index or an object key: both readings are tried,
# and when they disagree the value is masked whole.


def _mask_json_patch(
    body: bytes, masks: MaskSet, kind: str | None, content_type: str
) -> MaskResult:
    ops = _parse_json(body)
    if not isinstance(ops, list):
        rendered, count = _mask_json(body, masks, kind)
        return MaskResult(rendered, count, content_type=content_type)
    masker = _Masker(masks, kind)
    masked = [_mask_patch_op(op, masker, kind) for op in ops]
    return MaskResult(_render_json(masked), masker.count, content_type=content_type)


def _pointer(path: Any) -> list[str] | None:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        return None
    if not path:
        return []
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _sparse(tokens: list[str], value: Any, lists: bool) -> Any:
    """The smallest document with `value` at `tokens`; numeric tokens as indexes when `lists`."""
    node = value
    for token in reversed(tokens):
        if lists and token == "-":
            node = [node]
        elif lists and token.isdigit() and int(token) <= _SPARSE_INDEX_LIMIT:
            node = [None] * int(token) + [node]
        else:
            node = {token: node}
    return node


def _at(doc: Any, tokens: list[str], lists: bool) -> Any:
    for token in tokens:
        if lists and isinstance(doc, list) and doc:
            doc = doc[-1]
        elif isinstance(doc, dict) and token in doc:
            doc = doc[token]
        else:
            return _GONE  # an ancestor was masked whole
    return doc


def _mask_patch_op(op: Any, masker: _Masker, kind: str | None) -> Any:
    if not isinstance(op, dict) or "value" not in op:
        return op
    value = op["value"]
    tokens = _pointer(op.get("path"))
    if tokens is None:
        masker.count += 1
        return {**op, "value": masker.style.mask_value(value)}
    readings = []
    shapes = (False, True) if any(t.isdigit() or t == "-" for t in tokens) else (False,)
    for lists in shapes:
        probe = _Masker(masker.masks, kind)
        doc = probe.node(_sparse(tokens, _json_copy(value), lists), kind)
        if probe.count:
            readings.append((_at(doc, tokens, lists), probe.count))
    if not readings:
        return op
    masked, count = readings[0]
    if masked is _GONE or any(r[0] is _GONE or r[0] != masked for r in readings[1:]):
        masker.count += 1
        return {**op, "value": masker.style.mask_value(value)}
    masker.count += count
    return {**op, "value": masked}
