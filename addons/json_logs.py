"""`--log-format json`: one JSON object per log line, for log pipelines.

Every line has `time` (UTC, RFC 3339 with milliseconds), `level`, `logger` and `message`; the
gateway's decision and hold lines add `agent`, `run_id`, `target`, `verb`, `resource`,
`namespace`, `name`, `decision`, `rule` and `hold` (passed as `extra={"holdgate": {...}}`).
Imports nothing of holdgate's, so any folder may use it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

FIELDS = (
    "agent",
    "run_id",
    "target",
    "verb",
    "resource",
    "namespace",
    "name",
    "decision",
    "rule",
    "hold",
)


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON (control characters escaped by JSON itself)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "holdgate", None)
        if isinstance(fields, dict):
            out.update({k: fields[k] for k in FIELDS if fields.get(k) not in (None, "")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def use_json(handlers: list[logging.Handler], on: bool, text: logging.Formatter) -> None:
    """Give these handlers the JSON formatter (or back the text one)."""
    for handler in handlers:
        handler.setFormatter(JsonFormatter() if on else text)
