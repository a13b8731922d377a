"""Files the gateway keeps in its state directory that only its own user may read."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

ADMIN_TOKEN_ENV = "HOLDGATE_ADMIN_TOKEN"


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file created with mode 0600 (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def secret_file(path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> str:
    """A random secret kept in a 0600 file: created once, then read back."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make())
    return path.read_text().strip()


def admin_token(state_dir: Path) -> str:
    """The admin token: from $HOLDGATE_ADMIN_TOKEN, else created once in the state directory."""
    if os.environ.get(ADMIN_TOKEN_ENV):
        return os.environ[ADMIN_TOKEN_ENV]
    return secret_file(admin_token_path(state_dir))


def admin_token_path(state_dir: Path) -> Path:
    """Where the admin token is kept (mode 0600)."""
    return state_dir / "admin-token"
