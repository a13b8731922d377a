"""The wheel, installed without dev extras into a fresh venv: every command works, state stays
in the user's holdgate home, the embedded default runs and answers its health checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy: workers may build at once, and the checkout gets no build/ directory.
    source = work / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "certs", "build", "dist", "*.egg-info", "__pycache__", ".*cache"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(work),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    [wheel] = work.glob("holdgate-*.whl")
    venv = work / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True, timeout=600
    )
    return venv


def holdgate(venv: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOLDGATE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [str(venv / "bin" / "holdgate"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=home.parent,
    )


def test_the_installed_commands_work_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert re.fullmatch(r"holdgate \d+\.\d+\.\d+\n", holdgate(installed, home, "--version").stdout)
    # No dev tool sneaked into the runtime dependencies, and nothing of the checkout is used.
    listing = subprocess.run(
        [str(installed / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True
    ).stdout.lower()
    for dev in ("pytest", "moto", "kubernetes==", "ruff", "mypy"):
        assert dev not in listing, dev
    site = next((installed / "lib").glob("python3.*/site-packages/holdgate"))
    assert (site / "shipped" / "rules" / "config" / "sandbox.yaml").is_file()
    checked = holdgate(installed, home, "check")
    assert checked.returncode == 0 and "rule tests passed" in checked.stdout, checked.stderr
    assert (home / "rules" / "config" / "sandbox.yaml").is_file()  # the embedded default, copied
    explained = holdgate(
        installed, home, "explain", "GET", "https://kubernetes.default.svc/api/v1/namespaces"
    )
    assert explained.returncode == 0, explained.stderr
    for command in (["resources"], ["archive", "verify", "--quiet"], ["archive", "public-key"]):
        result = holdgate(installed, home, *command)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    initialised = holdgate(installed, home, "init", str(tmp_path / "mine"))
    assert initialised.returncode == 0
    assert (tmp_path / "mine" / "rules" / "config" / "production.yaml").is_file()
    assert not list(site.rglob("var")) and not list(site.rglob("certs"))  # nothing written there


def test_the_installed_embedded_default_runs_and_is_ready(installed: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "HOLDGATE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            str(installed / "bin" / "holdgate"),
            "run",
            "--listen-port",
            "0",
            "--",
            "--set",
            "holdgate_approvals_port=0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        url_file = home / "var" / "operations-url"
        deadline = time.monotonic() + 60
        while not url_file.exists():
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the installed gateway never started"
            time.sleep(0.2)
        url = url_file.read_text().strip()
        assert httpx.get(f"{url}healthz", timeout=10).text == "ok\n"
        for _ in range(100):
            ready = httpx.get(f"{url}readyz", timeout=10)
            if ready.status_code == 200:
                break
            time.sleep(0.1)
        assert ready.status_code == 200, ready.text
        assert (home / "certs" / "mitmproxy-ca-cert.pem").is_file()
    finally:
        process.terminate()
        process.wait(30)
