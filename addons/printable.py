"""Outside text made safe to print: names, paths, commands and reasons from agents or tokens.

An agent chooses its URLs, exec commands, reasons, OIDC claims and body keys. Written raw into
the gateway's log or a CLI table, a newline would forge a log line and a control sequence
would rewrite the terminal. `printable` escapes them and bounds the length; it imports
nothing of holdgate's, so every layer can use it.
"""

from __future__ import annotations

import re

# C0/C1 controls, DEL, and Unicode format characters (bidi overrides, zero widths).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
LIMIT = 500


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, limit: int = LIMIT) -> str:
    """`text` with control and format characters escaped, cut to `limit` characters."""
    value = str(text)
    if len(value) > limit:
        value = value[:limit] + f"...(+{len(value) - limit} chars)"
    if value.isascii() and value.isprintable():
        return value
    return _UNSAFE.sub(_escape, value)
