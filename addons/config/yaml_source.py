"""YAML documents that remember where each value came from, so every error can say FILE:LINE."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class SourceError(Exception):
    """A problem in a configuration or rule file, located at FILE:LINE."""

    def __init__(self, path: Path | str, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(f"{self.path}:{self.line}: {message}")


class SourceErrors(Exception):
    """Several located problems, reported together."""

    def __init__(self, errors: list[SourceError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


Location = tuple[str | int, ...]


@dataclass(frozen=True)
class Document:
    """A parsed YAML file and the line of every mapping key and sequence item in it."""

    path: Path
    data: Any
    lines: dict[Location, int] = field(default_factory=dict)

    def line_of(self, location: Location) -> int:
        """The line of the value at `location`, or of its nearest enclosing value."""
        loc = tuple(location)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 1)

    def error(self, location: Location, message: str) -> SourceError:
        """A SourceError at the line of `location`."""
        return SourceError(self.path, self.line_of(location), message)


def _index_lines(
    node: yaml.Node, path: Path, location: Location, lines: dict[Location, int]
) -> None:
    lines.setdefault(location, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            # PyYAML silently keeps the last of duplicate keys; a policy file must not.
            if key in seen:
                raise SourceError(path, line, f"duplicate key {key!r} (first at line {seen[key]})")
            seen[key] = line
            lines[location + (key,)] = line
            _index_lines(value_node, path, location + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[location + (i,)] = item.start_mark.line + 1
            _index_lines(item, path, location + (i,), lines)


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str, path: Path) -> Document:
    """Parse one YAML document, raising SourceError with the file and line of a syntax error."""
    try:
        # One parse, by libyaml when present: the node tree gives lines, then the data.
        loader = _LOADER(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return Document(path, None, {(): 1})
            lines: dict[Location, int] = {}
            _index_lines(node, path, (), lines)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        message = f"invalid YAML: {e.problem or e.context}"
        if e.context and e.context_mark and e.context_mark.line + 1 != line:
            message += f" ({e.context} started at line {e.context_mark.line + 1})"
        raise SourceError(path, line, message) from e
    except yaml.YAMLError as e:
        raise SourceError(path, 1, f"invalid YAML: {e}") from e
    return Document(path, data, lines)


def load_yaml(path: Path) -> Document:
    """Read and parse a YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(path, 1, f"cannot read: {e}") from e
    return parse_yaml(text, path)
