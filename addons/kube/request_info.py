"""Classify Kubernetes API requests exactly as the apiserver's RequestInfo resolver does.

A port of `NewRequestInfo` (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go) with
APIPrefixes {"api", "apis"} and GrouplessAPIPrefixes {"api"}, together with what it leans
on: Go's `url.URL.Query`, the ListOptions decoding that turns `?watch=` and
`fieldSelector=metadata.name=` into a verb and a name, and the label and field selector
parsers whose failures change that outcome. A request the gateway could read differently
from the apiserver raises `UnsafePath` instead of being guessed at.

The module also reads request bodies (JSON, YAML, Kubernetes protobuf) far enough to name
the object a create makes. It is pure: nothing here imports mitmproxy.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import shlex
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from holdgate.kube.protobuf import (
    CONTENT_TYPE as PROTOBUF_CONTENT_TYPE,
)
from holdgate.kube.protobuf import (
    MAGIC,
    ProtobufError,
    decode_envelope,
    decode_object,
    decodes,
    object_meta,
    parse_fields,
)

API_PREFIXES = frozenset({"api", "apis"})
GROUPLESS_API_PREFIXES = frozenset({"api"})

_SPECIAL_VERBS = frozenset({"proxy", "watch"})
_SPECIAL_VERBS_NO_SUBRESOURCES = frozenset({"proxy"})
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}

# Running a process in a pod or reaching it through the apiserver: privileged whatever the verb.
# exec/attach/portforward arrive as a WebSocket GET (verb get) or a SPDY POST (create).
CONNECT_SUBRESOURCES = frozenset({"exec", "attach", "portforward"})
_PRIVILEGED_POD_SUBRESOURCES = CONNECT_SUBRESOURCES | {"ephemeralcontainers"}
_PROXY_RESOURCES = frozenset({"pods", "services", "nodes"})
# Create-only resources the apiserver answers and never stores (reviews): nothing is created.
REVIEWS = frozenset(
    {
        ("authorization.k8s.io", "selfsubjectaccessreviews"),
        ("authorization.k8s.io", "selfsubjectrulesreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
        ("authorization.k8s.io", "localsubjectaccessreviews"),
        ("authentication.k8s.io", "tokenreviews"),
        ("authentication.k8s.io", "selfsubjectreviews"),
    }
)
_STREAM_SUBRESOURCES = frozenset({"exec", "attach"})

# Go's url.ParseQuery (1.24.12/1.25.6 and later) returns no values at all past this many.
_GO_MAX_QUERY_PARAMS = 10000

_YAML_CONTENT_TYPES = frozenset({"application/yaml", "application/apply-patch+yaml"})


class UnsafePath(ValueError):
    """A request target the gateway must refuse: the apiserver could read it differently."""


@dataclass(frozen=True, slots=True)
class KubeRequest:
    """What the apiserver's RequestInfo says about one request."""

    resource_request: bool
    path: str
    verb: str
    api_prefix: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    parts: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """The fields rules, approval messages and archive records use."""
        return {
            "resource_request": self.resource_request,
            "verb": self.verb,
            "api_group": self.api_group,
            "api_version": self.api_version,
            "namespace": self.namespace,
            "resource": self.resource,
            "subresource": self.subresource,
            "name": self.name,
            "path": self.path,
        }

    @property
    def privileged_subresource(self) -> bool:
        """True for exec, attach, portforward, ephemeral containers, every apiserver proxy and
        service account tokens (minting a credential)."""
        if not self.resource_request:
            return False
        if self.verb == "proxy":
            return True
        # The group is not checked on purpose: an aggregated API serving pods/exec is as dangerous.
        if self.subresource == "proxy" and self.resource in _PROXY_RESOURCES:
            return True
        if self.resource == "serviceaccounts" and self.subresource == "token":
            return True
        return self.resource == "pods" and self.subresource in _PRIVILEGED_POD_SUBRESOURCES

    @property
    def connects(self) -> bool:
        """exec, attach or portforward: a process's streams, over WebSocket or SPDY."""
        return self.resource == "pods" and self.subresource in CONNECT_SUBRESOURCES


def classify(method: str, path: str, query: str = "") -> KubeRequest:
    """Resolve a request as the apiserver's RequestInfoFactory.NewRequestInfo does."""
    raw_path, raw_query = _split_target(path, query)
    decoded_path = _decode_path(raw_path)
    return _resolve(method, decoded_path, _go_query(raw_query))


def safe_path(path: str, query: str = "") -> str:
    """The percent-decoded path of any request target; UnsafePath where a server could read it
    differently (dot or empty segments, encoded slashes or backslashes, control characters)."""
    raw_path, _ = _split_target(path, query)
    return _decode_path(raw_path) or "/"


@dataclass(frozen=True, slots=True)
class ExecCommand:
    """The process a pods/exec (or pods/attach) request starts, as the apiserver decodes it."""

    command: tuple[str, ...]
    container: str
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    @property
    def command_line(self) -> str:
        """The command quoted for a shell, for approval messages."""
        return shlex.join(self.command)

    def as_dict(self) -> dict[str, object]:
        """The command and its flags, for approval messages and archive records."""
        return {
            "command": list(self.command),
            "container": self.container,
            "stdin": self.stdin,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "tty": self.tty,
        }


def exec_command(request: KubeRequest, query: str) -> ExecCommand | None:
    """Decode PodExecOptions / PodAttachOptions from the query of a pods/exec or attach request."""
    if not (
        request.resource_request
        and request.resource == "pods"
        and request.subresource in _STREAM_SUBRESOURCES
    ):
        return None
    values = _go_query(query.removeprefix("?"))
    container = values.get("container", [""])[0]
    command = tuple(values.get("command", [])) if request.subresource == "exec" else ()
    return ExecCommand(
        command=command,
        container=container,
        stdin=_go_bool(values, "stdin"),
        stdout=_go_bool(values, "stdout"),
        stderr=_go_bool(values, "stderr"),
        tty=_go_bool(values, "tty"),
    )


@dataclass(frozen=True, slots=True)
class BodyObject:
    """The object a request body carries, as far as the gateway could read it."""

    api_version: str
    kind: str
    name: str
    namespace: str
    document: dict[str, Any] | None
    error: str


def read_body(content_type: str, content_encoding: str, body: bytes) -> BodyObject | None:
    """Read a request body's object (JSON, YAML or Kubernetes protobuf); never raises."""
    if not body:
        return None
    encoding = content_encoding.strip().lower()
    if encoding and encoding != "identity":
        return _unread(f"body has Content-Encoding {encoding!r}; not decoded")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == PROTOBUF_CONTENT_TYPE:
        return _read_protobuf(body)
    if media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return _read_document(body, _load_json)
    if media_type in _YAML_CONTENT_TYPES:
        return _read_document(body, _load_yaml)
    return _unread(f"unsupported content type {content_type!r}")


def unread_reason(body: BodyObject | None) -> str:
    """Why a body's document cannot be inspected, or "" when it can."""
    if body is None:
        return "the request has no body"
    if body.error:
        return f"the request body could not be read ({body.error})"
    if body.document is None:
        return (
            f"the request body is protobuf and holdgate does not decode {body.api_version} "
            f"{body.kind or 'objects'} (send it as JSON: kubectl create -f, kubectl apply)"
        )
    return ""


def with_body(request: KubeRequest, body: BodyObject | None) -> KubeRequest:
    """Name a create from its body (RequestInfo has no name for a POST to a collection).

    Only the name is taken. The namespace never comes from the body: the apiserver
    rejects a body namespace that differs from the path's, and clears it for
    cluster-scoped kinds, so a body namespace could only mislead a rule.
    """
    if (
        body is None
        or body.error
        or not body.name
        or not request.resource_request
        or request.verb != "create"
        or request.name
        or request.subresource
    ):
        return request
    return dataclasses.replace(request, name=body.name)


# Request target: the path and query the Go server sees.


def _split_target(path: str, query: str) -> tuple[str, str]:
    if "?" in path:
        if query:
            raise UnsafePath("query string given both in the path and separately")
        path, _, query = path.partition("?")
    query = query.removeprefix("?")
    for part, what in ((path, "path"), (query, "query")):
        data = _raw_bytes(part, what)
        if _CONTROL_BYTE.search(data):
            raise UnsafePath(f"control character in the {what}")
        if b"#" in data:
            raise UnsafePath(f"'#' in the {what}")
    return path, query


_CONTROL_BYTE = re.compile(rb"[\x00-\x1f\x7f]")
_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")


def _raw_bytes(text: str, what: str) -> bytes:
    try:
        # mitmproxy hands over undecodable raw bytes as surrogate escapes: recover them.
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        raise UnsafePath(f"the {what} is not UTF-8") from e


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnsafePath(f"the {what} is not UTF-8 once percent-decoded") from e


def _unescape(data: bytes, *, query: bool) -> bytes | None:
    """Go's url.unescape in path or query-component mode; None where Go returns an error."""
    if b"%" not in data and not (query and b"+" in data):
        return data  # nothing to unescape (the common case)
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        if byte == 0x25:  # '%'
            if i + 2 >= n or not (_is_hex(data[i + 1]) and _is_hex(data[i + 2])):
                return None
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
            continue
        out.append(0x20 if query and byte == 0x2B else byte)
        i += 1
    return bytes(out)


def _is_hex(byte: int) -> bool:
    return byte in b"0123456789abcdefABCDEF"


def _decode_path(raw: str) -> str:
    """The percent-decoded path (Go's URL.Path), refusing what the apiserver might read otherwise."""
    if raw == "":
        return ""
    data = _raw_bytes(raw, "path")
    if not data.startswith(b"/"):
        raise UnsafePath("the path does not start with '/'")
    lowered = data.lower()
    if b"%2f" in lowered:
        raise UnsafePath("encoded slash (%2F) in the path")
    if b"\\" in data or b"%5c" in lowered:
        raise UnsafePath("backslash in the path")
    decoded = _unescape(data, query=False)
    if decoded is None:
        raise UnsafePath("invalid percent-encoding in the path")
    path = _utf8(decoded, "path")
    # Format characters (bidi overrides, zero widths) are in no valid name; they could only
    # disguise a path in an approval message. ASCII has control characters but no Cf ones.
    unsafe = (
        _CONTROL_CHAR.search(path)
        if path.isascii()
        else next((c for c in path if unicodedata.category(c) in ("Cc", "Cf")), None)
    )
    if unsafe is not None:
        char = unsafe if isinstance(unsafe, str) else unsafe.group()
        raise UnsafePath(f"control character {char!r} in the path")
    segments = path.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()  # one trailing slash is trimmed by the apiserver's splitPath
    for segment in segments:
        if segment == "":
            raise UnsafePath("empty path segment ('//')")
        if segment in (".", ".."):
            raise UnsafePath(f"dot segment {segment!r} in the path")
    return path


def _go_query(raw: str) -> dict[str, list[str]]:
    """Go's url.ParseQuery as URL.Query uses it: bad pairs are dropped, never an error."""
    data = _raw_bytes(raw, "query")
    if data.count(b"&") >= _GO_MAX_QUERY_PARAMS:
        # Newer Go drops every parameter here, older Go keeps them all: no single reading.
        raise UnsafePath(f"more than {_GO_MAX_QUERY_PARAMS} query parameters")
    values: dict[str, list[str]] = {}
    for pair in data.split(b"&"):
        if not pair or b";" in pair:
            continue
        raw_key, _, raw_value = pair.partition(b"=")
        key = _unescape(raw_key, query=True)
        value = _unescape(raw_value, query=True)
        if key is None or value is None:
            continue
        values.setdefault(_utf8(key, "query"), []).append(_utf8(value, "query"))
    return values


# NewRequestInfo itself.


def _resolve(method: str, path: str, query: Mapping[str, list[str]]) -> KubeRequest:
    parts = _split_path(path)
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        return KubeRequest(resource_request=False, path=path, verb=method.lower())
    api_prefix, parts = parts[0], parts[1:]
    api_group = ""
    if api_prefix not in GROUPLESS_API_PREFIXES:
        if len(parts) < 3:
            return KubeRequest(
                resource_request=False, path=path, verb=method.lower(), api_prefix=api_prefix
            )
        api_group, parts = parts[0], parts[1:]
    api_version, parts = parts[0], parts[1:]

    if parts[0] in _SPECIAL_VERBS:
        if len(parts) < 2:
            # NewRequestInfo errors here and the apiserver answers 500.
            raise UnsafePath(f"the apiserver cannot resolve {path!r}: {parts[0]!r} names nothing")
        verb, parts = parts[0], parts[1:]
    else:
        verb = _METHOD_VERBS.get(method, "")

    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]

    subresource = name = ""
    if len(parts) >= 3 and verb not in _SPECIAL_VERBS_NO_SUBRESOURCES:
        subresource = parts[2]
    if len(parts) >= 2:
        name = parts[1]
    resource = parts[0]

    if not name and verb == "get":
        options = _list_options(query)
        if options is None:
            # The apiserver logs the decoding error, keeps no name and only reads `watch`.
            watch, selected_name = _go_lower_is_true(query.get("watch")), None
        else:
            watch, selected_name = options
        verb = "watch" if watch else "list"
        if selected_name is not None and _valid_path_segment_name(selected_name):
            name = selected_name
    if not name and verb == "delete":
        verb = "deletecollection"

    return KubeRequest(
        resource_request=True,
        path=path,
        verb=verb,
        api_prefix=api_prefix,
        api_group=api_group,
        api_version=api_version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
        parts=tuple(parts),
    )


def _split_path(path: str) -> list[str]:
    trimmed = path.strip("/")
    return trimmed.split("/") if trimmed else []


def _valid_path_segment_name(name: str) -> bool:
    return name not in (".", "..") and "/" not in name and "%" not in name


# metainternalversion.ListOptions as ParameterCodec.DecodeParameters fills it.


def _list_options(query: Mapping[str, list[str]]) -> tuple[bool, str | None] | None:
    """(watch, the metadata.name a field selector pins), or None where decoding fails."""
    if not query:
        return False, None
    if "labelSelector" in query and not _valid_label_selector(query["labelSelector"][0]):
        return None
    selected_name: str | None = None
    if "fieldSelector" in query:
        parsed, selected_name = _field_selector_name(query["fieldSelector"][0])
        if not parsed:
            return None
    for key in ("timeoutSeconds", "limit"):
        if key in query and not _go_parse_int64(query[key][0]):
            return None
    return _go_bool(query, "watch"), selected_name


def _go_bool(query: Mapping[str, list[str]], key: str) -> bool:
    """runtime.Convert_Slice_string_To_bool: absent, "0" and any case of "false" are false."""
    values = query.get(key)
    if not values:
        return False
    return not (values[0] == "0" or _go_equal_fold_false(values[0]))


def _go_equal_fold_false(value: str) -> bool:
    # strings.EqualFold(value, "false"): Unicode simple folding also maps U+017F (ſ) to s.
    return len(value) == 5 and all(
        char in allowed
        for char, allowed in zip(value, ("fF", "aA", "lL", "sSſ", "eE"), strict=True)
    )


def _go_lower_is_true(values: list[str] | None) -> bool:
    """The fallback `watch` test of NewRequestInfo: strings.ToLower(values[0]) not in {false, 0}."""
    if not values:
        return False
    value = values[0]
    return not (value == "0" or (value.isascii() and value.lower() == "false"))


def _go_parse_int64(value: str) -> bool:
    """Whether strconv.ParseInt(value, 10, 64) succeeds."""
    digits = value[1:] if value[:1] in ("+", "-") else value
    if not digits or not all("0" <= char <= "9" for char in digits):
        return False
    significant = digits.lstrip("0")
    if len(significant) > 19:
        return False
    limit = 2**63 if value.startswith("-") else 2**63 - 1
    return int(significant or "0") <= limit


# fields.ParseSelector and Selector.RequiresExactMatch("metadata.name").


def _field_selector_name(selector: str) -> tuple[bool, str | None]:
    """(parsed, the value of the first metadata.name equality in sorted term order)."""
    name: str | None = None
    # Go sorts the terms' bytes; code-point order is the same for valid UTF-8.
    for term in sorted(_split_field_terms(selector)):
        if not term:
            continue
        split = _split_field_term(term)
        if split is None:
            return False, None
        field, operator, raw_value = split
        value = _unescape_field_value(raw_value)
        if value is None:
            return False, None
        if name is None and operator != "!=" and field == "metadata.name":
            name = value
    return True, name


def _split_field_terms(selector: str) -> list[str]:
    if not selector:
        return []
    terms: list[str] = []
    start, in_slash = 0, False
    for index, char in enumerate(selector):
        if in_slash:
            in_slash = False
        elif char == "\\":
            in_slash = True
        elif char == ",":
            terms.append(selector[start:index])
            start = index + 1
    terms.append(selector[start:])
    return terms


def _split_field_term(term: str) -> tuple[str, str, str] | None:
    for index in range(len(term)):
        for operator in ("!=", "==", "="):
            if term.startswith(operator, index):
                return term[:index], operator, term[index + len(operator) :]
    return None


def _unescape_field_value(value: str) -> str | None:
    if not any(char in value for char in "\\,="):
        return value
    out: list[str] = []
    in_slash = False
    for char in value:
        if in_slash:
            if char not in "\\,=":
                return None
            out.append(char)
            in_slash = False
        elif char == "\\":
            in_slash = True
        elif char in ",=":
            return None
        else:
            out.append(char)
    return None if in_slash else "".join(out)


# labels.Parse: only whether it succeeds matters, since a failure drops the selector's name.


class _Token(enum.IntEnum):
    """labels.Token; ERROR is zero because the lexer tests `tok != 0`."""

    ERROR = 0
    END = 1
    CLOSED_PAR = 2
    COMMA = 3
    NOT = 4
    DOUBLE_EQUALS = 5
    EQUALS = 6
    GREATER = 7
    IDENTIFIER = 8
    IN = 9
    LESS = 10
    NOT_EQUALS = 11
    NOT_IN = 12
    OPEN_PAR = 13


_LABEL_TOKENS = {
    b")": _Token.CLOSED_PAR,
    b",": _Token.COMMA,
    b"!": _Token.NOT,
    b"==": _Token.DOUBLE_EQUALS,
    b"=": _Token.EQUALS,
    b">": _Token.GREATER,
    b"in": _Token.IN,
    b"<": _Token.LESS,
    b"!=": _Token.NOT_EQUALS,
    b"notin": _Token.NOT_IN,
    b"(": _Token.OPEN_PAR,
}
_BINARY_OPERATORS = {
    _Token.IN: "in",
    _Token.EQUALS: "=",
    _Token.DOUBLE_EQUALS: "==",
    _Token.GREATER: "gt",
    _Token.LESS: "lt",
    _Token.NOT_IN: "notin",
    _Token.NOT_EQUALS: "!=",
}
_WHITESPACE = b" \t\r\n"
_SPECIAL_SYMBOLS = b"=!(),><"


class _SelectorError(Exception):
    pass


def _valid_label_selector(selector: str) -> bool:
    """Whether labels.Parse accepts the selector."""
    try:
        _LabelSelectorParser(selector.encode("utf-8")).parse()
    except _SelectorError:
        return False
    except IndexError as e:
        # Go would panic here and the apiserver answer 500: no classification to give.
        raise UnsafePath("label selector the apiserver cannot parse") from e
    return True


class _LabelLexer:
    """labels.Lexer: byte-wise, and a NUL byte reads as the end of the string."""

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.pos = 0

    def read(self) -> int:
        if self.pos < len(self.text):
            self.pos += 1
            return self.text[self.pos - 1]
        return 0

    def unread(self) -> None:
        self.pos -= 1

    def lex(self) -> tuple[_Token, bytes]:
        char = self.read()
        while char in _WHITESPACE and char != 0:
            char = self.read()
        if char == 0:
            return _Token.END, b""
        self.unread()
        if char in _SPECIAL_SYMBOLS:
            return self._special_symbol()
        return self._identifier_or_keyword()

    def _identifier_or_keyword(self) -> tuple[_Token, bytes]:
        buffer = bytearray()
        while True:
            char = self.read()
            if char == 0:
                break
            if char in _SPECIAL_SYMBOLS or char in _WHITESPACE:
                self.unread()
                break
            buffer.append(char)
        literal = bytes(buffer)
        return _LABEL_TOKENS.get(literal, _Token.IDENTIFIER), literal

    def _special_symbol(self) -> tuple[_Token, bytes]:
        last: tuple[_Token, bytes] = (_Token.ERROR, b"")
        buffer = bytearray()
        while True:
            char = self.read()
            if char == 0:
                break
            if char not in _SPECIAL_SYMBOLS:
                self.unread()
                break
            buffer.append(char)
            token = _LABEL_TOKENS.get(bytes(buffer))
            if token is not None:
                last = (token, bytes(buffer))
            elif last[0] != _Token.ERROR:
                self.unread()
                break
        return last


class _LabelSelectorParser:
    """labels.Parser with NewRequirement's validation; raises _SelectorError where Go errors."""

    def __init__(self, text: bytes) -> None:
        lexer = _LabelLexer(text)
        self.items: list[tuple[_Token, bytes]] = []
        while True:
            item = lexer.lex()
            self.items.append(item)
            if item[0] == _Token.END:
                break
        self.position = 0

    def lookahead(self, values: bool) -> tuple[_Token, bytes]:
        return self._in_context(self.items[self.position], values)

    def consume(self, values: bool) -> tuple[_Token, bytes]:
        self.position += 1
        return self._in_context(self.items[self.position - 1], values)

    @staticmethod
    def _in_context(item: tuple[_Token, bytes], values: bool) -> tuple[_Token, bytes]:
        token, literal = item
        if values and token in (_Token.IN, _Token.NOT_IN):
            return _Token.IDENTIFIER, literal
        return token, literal

    def parse(self) -> None:
        while True:
            token, _ = self.lookahead(True)
            if token == _Token.END:
                return
            if token not in (_Token.IDENTIFIER, _Token.NOT):
                raise _SelectorError("expected !, identifier or end of string")
            self.requirement()
            token, _ = self.consume(True)
            if token == _Token.END:
                return
            if token != _Token.COMMA:
                raise _SelectorError("expected ',' or end of string")
            if self.lookahead(True)[0] not in (_Token.IDENTIFIER, _Token.NOT):
                raise _SelectorError("expected identifier after ','")

    def requirement(self) -> None:
        key, operator = self.key_and_inferred_operator()
        if operator in ("exists", "!"):
            _check_requirement(key, operator, [])
            return
        token, _ = self.consume(False)
        if token not in _BINARY_OPERATORS:
            raise _SelectorError("expected an operator")
        operator = _BINARY_OPERATORS[token]
        values = self.set_values() if operator in ("in", "notin") else self.exact_value()
        _check_requirement(key, operator, sorted(values))

    def key_and_inferred_operator(self) -> tuple[bytes, str]:
        operator = ""
        token, literal = self.consume(True)
        if token == _Token.NOT:
            operator = "!"
            token, literal = self.consume(True)
        if token != _Token.IDENTIFIER:
            raise _SelectorError("expected identifier")
        if not _valid_label_key(literal):
            raise _SelectorError("invalid label key")
        if self.lookahead(True)[0] in (_Token.END, _Token.COMMA) and operator != "!":
            operator = "exists"
        return literal, operator

    def set_values(self) -> set[bytes]:
        if self.consume(True)[0] != _Token.OPEN_PAR:
            raise _SelectorError("expected '('")
        token, _ = self.lookahead(True)
        if token in (_Token.IDENTIFIER, _Token.COMMA):
            values = self.identifiers()
            if self.consume(True)[0] != _Token.CLOSED_PAR:
                raise _SelectorError("expected ')'")
            return values
        if token == _Token.CLOSED_PAR:
            self.consume(True)
            return {b""}
        raise _SelectorError("expected ',', ')' or identifier")

    def identifiers(self) -> set[bytes]:
        values: set[bytes] = set()
        while True:
            token, literal = self.consume(True)
            if token == _Token.IDENTIFIER:
                values.add(literal)
                following, _ = self.lookahead(True)
                if following == _Token.COMMA:
                    continue
                if following == _Token.CLOSED_PAR:
                    return values
                raise _SelectorError("expected ',' or ')'")
            if token != _Token.COMMA:
                raise _SelectorError("expected ',' or identifier")
            if not values:
                values.add(b"")
            following, _ = self.lookahead(True)
            if following == _Token.CLOSED_PAR:
                values.add(b"")
                return values
            if following == _Token.COMMA:
                values.add(b"")

    def exact_value(self) -> set[bytes]:
        if self.lookahead(True)[0] in (_Token.END, _Token.COMMA):
            return {b""}
        token, literal = self.consume(True)
        if token != _Token.IDENTIFIER:
            raise _SelectorError("expected identifier")
        return {literal}


def _check_requirement(key: bytes, operator: str, values: list[bytes]) -> None:
    """labels.NewRequirement's validation."""
    if not _valid_label_key(key):
        raise _SelectorError("invalid label key")
    if operator in ("in", "notin") and not values:
        raise _SelectorError("empty value set")
    if operator in ("=", "==", "!=") and len(values) != 1:
        raise _SelectorError("exact match needs one value")
    if operator in ("exists", "!") and values:
        raise _SelectorError("exists takes no value")
    if operator in ("gt", "lt") and (
        len(values) != 1 or not all(_go_parse_int64(v.decode("utf-8", "replace")) for v in values)
    ):
        raise _SelectorError("gt and lt need one integer")
    for value in values:
        if len(value) > 63 or (value and not _valid_label_name(value)):
            raise _SelectorError("invalid label value")


def _valid_label_key(key: bytes) -> bool:
    """content.IsLabelKey: [DNS-1123 subdomain '/'] name."""
    prefix, slash, name = key.partition(b"/")
    if not slash:
        prefix, name = b"", key
    elif b"/" in name or not prefix or not _valid_dns_subdomain(prefix):
        return False
    return 0 < len(name) <= 63 and _valid_label_name(name)


def _valid_label_name(name: bytes) -> bool:
    if not name or not _is_alphanumeric(name[0]) or not _is_alphanumeric(name[-1]):
        return False
    return all(_is_alphanumeric(byte) or byte in b"-_." for byte in name)


def _is_alphanumeric(byte: int) -> bool:
    return (0x30 <= byte <= 0x39) or (0x41 <= byte <= 0x5A) or (0x61 <= byte <= 0x7A)


_DNS_LABEL = re.compile(rb"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")


def _valid_dns_subdomain(value: bytes) -> bool:
    """IsDNS1123Subdomain: at most 253 bytes of dot-separated DNS labels (no per-label limit)."""
    return len(value) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in value.split(b"."))


# Bodies.


def _unread(error: str) -> BodyObject:
    return BodyObject(api_version="", kind="", name="", namespace="", document=None, error=error)


def _read_document(body: bytes, load: Callable[[str], Any]) -> BodyObject:
    try:
        text = body.decode("utf-8")
        document = load(text)
    except (ValueError, TypeError, RecursionError, yaml.YAMLError) as e:
        return _unread(f"malformed body: {e}")
    if not isinstance(document, dict):
        return _unread(f"body is a {type(document).__name__}, not an object")
    metadata = document.get("metadata", {})
    if not isinstance(metadata, dict):
        return _unread("metadata is not an object")
    api_version, kind = document.get("apiVersion", ""), document.get("kind", "")
    name, namespace = metadata.get("name", ""), metadata.get("namespace", "")
    for key, value in (
        ("apiVersion", api_version),
        ("kind", kind),
        ("name", name),
        ("namespace", namespace),
    ):
        if not isinstance(value, str):
            return _unread(f"{key} is not a string")
    return BodyObject(
        api_version=api_version,
        kind=kind,
        name=name,
        namespace=namespace,
        document=document,
        error="",
    )


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Go merges a repeated key into the same struct where Python keeps the last: refuse both.
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key!r}")
        document[key] = value
    return document


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _load_json(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader without aliases or duplicate keys, keeping timestamps as strings."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # An alias is shared here but expanded in JSON form: refused, like a YAML bomb must be.
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases are not accepted", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: list[Any] = []
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.append(key)
        return super().construct_mapping(node, deep=deep)


_StrictYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load_yaml(text: str) -> Any:
    document = yaml.load(text, Loader=_StrictYamlLoader)  # a SafeLoader: no arbitrary objects
    # What the apiserver decodes is the JSON form: anything JSON cannot carry is malformed.
    return json.loads(json.dumps(document, allow_nan=False))


def _read_protobuf(body: bytes) -> BodyObject:
    try:
        ambiguity = _protobuf_ambiguity(body)
        if ambiguity:
            return _unread(f"bad protobuf: {ambiguity}")
        envelope = decode_envelope(body)
        if not envelope.raw:
            return _unread("bad protobuf: the envelope carries no object")
        if envelope.content_encoding:
            return _unread(f"protobuf body with content encoding {envelope.content_encoding!r}")
        metadata = object_meta(envelope)
        # Other kinds keep their name (for creates) but no document: see `unread_reason`.
        document = decode_object(envelope) if decodes(envelope.api_version, envelope.kind) else None
    # TypeError: kube_protobuf chokes on a map entry sent with the wrong wire type.
    except (ProtobufError, TypeError) as e:
        return _unread(f"bad protobuf: {e}")
    return BodyObject(
        api_version=envelope.api_version,
        kind=envelope.kind,
        name=str(metadata.get("name", "")),
        namespace=str(metadata.get("namespace", "")),
        document=document,
        error="",
    )


def _protobuf_ambiguity(body: bytes) -> str:
    """Why the apiserver's decoder could see another object than kube_protobuf does, or ""."""
    # Protobuf merges a repeated message field and keeps a repeated scalar's last value, and so
    # does kube_protobuf; no client repeats these, so a body that does is refused outright.
    if not body.startswith(MAGIC):
        return ""  # decode_envelope reports it
    envelope = parse_fields(body[len(MAGIC) :])
    for number, _, value in envelope:
        if number == 1 and isinstance(value, bytes) and _repeats(parse_fields(value), {1, 2}):
            return "repeated field in the envelope's TypeMeta"
    if _repeats(envelope, {1, 2}):
        return "repeated TypeMeta or Raw field in the envelope"
    raw = [value for number, _, value in envelope if number == 2 and isinstance(value, bytes)]
    if raw and _repeats(parse_fields(raw[0]), {1}):
        return "repeated ObjectMeta field"
    return ""


def _repeats(fields: list[tuple[int, int, Any]], numbers: set[int]) -> bool:
    seen = [number for number, _, _ in fields if number in numbers]
    return len(seen) != len(set(seen))
