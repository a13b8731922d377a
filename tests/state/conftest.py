"""A real PostgreSQL per test module of the shared state (tests/state/postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.state.postgres import PostgresServer, running_postgres


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server
