"""Every configuration in examples/ is one `holdgate check` accepts, rule tests included."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_there_are_slack_s3_and_oidc_examples() -> None:
    assert {p.stem for p in EXAMPLES} >= {"slack", "s3", "oidc", "replicas"}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_example_checks(example: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SLACK_BOT_TOKEN": "xoxb-example",
        "SLACK_APP_TOKEN": "xapp-example",
        "HOLDGATE_STATE_STORE_PASSWORD": "example",
        "HOLDGATE_HOME": str(tmp_path),
    }
    result = subprocess.run(
        [str(BIN / "holdgate"), "check", "--config", str(example)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule tests passed" in result.stdout
