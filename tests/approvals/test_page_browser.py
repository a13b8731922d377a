"""The approvals page in headless Chromium: a pending request appears, a click approves it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from holdgate.sandbox.kube_sim import KubeSimulator
from tests.conftest import (
    KUBECTL,
    LOCAL_PAGE,
    GatewayProcess,
    kube_target,
    page_address,
    start_gateway,
    write_agent_kubeconfig,
)

RULES = """
rules:
  - id: reads
    action: allow
    verbs: [get, list]
    resources: ["*"]
  - id: discovery
    action: allow
    verbs: [get]
    nonResourceURLs: [/api, /api/*, /apis, /apis/*, /openapi/*]
  - id: approve-secret-writes
    description: Writing a secret needs a human
    action: approve
    resources: [secrets]
    verbs: [create]
    reviewers: [local:admin]
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip(
            "no chromium and chromedriver on this machine (scripts/test installs Debian's "
            "chromium and chromium-driver with apt where it can): the page is not tested in a "
            "browser"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def gateway(tmp_path: Path, simulator: KubeSimulator) -> Iterator[GatewayProcess]:
    approvals = LOCAL_PAGE
    gw = start_gateway(
        tmp_path, {"targets": [kube_target(simulator)], "approvals": approvals}, {"r.yaml": RULES}
    )
    yield gw
    gw.stop()


def test_approve_from_the_page(
    browser: webdriver.Chrome, gateway: GatewayProcess, tmp_path: Path, simulator: KubeSimulator
) -> None:
    url, token = page_address(gateway)
    wait = WebDriverWait(browser, 20)
    browser.get(url)
    wait.until(ec.visibility_of_element_located((By.ID, "token"))).send_keys(token)
    browser.find_element(By.ID, "login-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "signed in as local:admin"))

    kubeconfig = write_agent_kubeconfig(tmp_path / "kc", gateway)
    creating = subprocess.Popen(
        [
            KUBECTL,
            "--kubeconfig",
            str(kubeconfig),
            "create",
            "secret",
            "generic",
            "from-browser",
            "-n",
            "sandbox",
            "--from-literal=password=hunter2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The page updates live: no reload.
        button = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-approve]")))
        card = browser.find_element(By.CSS_SELECTOR, "#pending .hold").text
        assert "create secrets from-browser -n sandbox" in card
        assert "approve-secret-writes" in card and "Writing a secret needs a human" in card
        assert "hunter2" not in browser.page_source
        browser.save_screenshot(str(tmp_path / "pending.png"))
        button.click()
        out, err = creating.communicate(timeout=60)
        assert creating.returncode == 0, err
        assert "secret/from-browser created" in out
        wait.until(
            ec.text_to_be_present_in_element((By.ID, "recent"), "approved by admin (local:admin)")
        )
        assert browser.find_element(By.ID, "count").text == "(0)"
    finally:
        if creating.poll() is None:
            creating.kill()
            creating.wait(timeout=10)
    assert (
        sum(
            1
            for r in simulator.requests
            if r.method == "POST" and r.path == "/api/v1/namespaces/sandbox/secrets"
        )
        >= 1
    )
