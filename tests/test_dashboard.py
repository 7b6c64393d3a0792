"""The dashboard in real headless Chromium (Debian's /usr/bin/chromium driven
by Playwright) against a real router and fake-engine miner processes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from netutil import Network
from test_network import chat

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Chromium is missing: `make install-dev` installs Debian's chromium when run as root",
)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_dashboard(browser: sync_api.Browser, net: Network) -> tuple[sync_api.Page, list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(net.base_url + "/dashboard")
    return page, errors


def chart_points(page: sync_api.Page, chart: str) -> int:
    return int(page.get_attribute(f"#chart-{chart}", "data-points") or 0)


def wait_for_more_points(page: sync_api.Page, chart: str, than: int) -> None:
    """Wait until the chart has more seconds with a value than ``than``; on a
    timeout, say what the page showed."""
    script = f"Number(document.querySelector('#chart-{chart}').dataset.points) > {than}"
    try:
        page.wait_for_function(script)
    except sync_api.TimeoutError:
        shown = {
            "connection": page.text_content("#connection"),
            "points": {c: chart_points(page, c) for c in ("throughput", "latency", "load")},
            "tokens": page.text_content("#stat-tokens"),
        }
        raise AssertionError(f"the {chart} chart did not grow past {than}: {shown}") from None


def load(net: Network, requests: int, max_tokens: int = 30) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: chat(net, max_tokens=max_tokens), range(requests)))


def test_dashboard_follows_miners_charts_and_streams_the_playground(
    net: Network, browser: sync_api.Browser, tmp_path: Path
) -> None:
    net.start_router()
    net.start_miner("m1", "--slots", "2", "--fake-speed", "60")
    net.wait_miners(1)
    page, errors = open_dashboard(browser, net)
    page.wait_for_selector("#connection[data-state=live]")
    page.wait_for_selector("tr[data-miner=m1]")

    m2 = net.start_miner("m2", "--fake-speed", "60")
    page.wait_for_selector("tr[data-miner=m2]")
    page.wait_for_selector("#events li[data-kind=join]:has-text('m2')")
    m2.stop()
    page.wait_for_selector("tr[data-miner=m2]", state="detached")
    page.wait_for_selector("#events li[data-kind=leave]:has-text('m2')")

    before = chart_points(page, "throughput")
    load(net, 8)
    wait_for_more_points(page, "throughput", before)
    wait_for_more_points(page, "latency", 0)
    assert page.text_content("#stat-tokens") != "0.0"

    page.wait_for_selector("#pg-model option[value=fake-model]", state="attached")
    page.fill("#pg-max", "12")
    page.click("#pg-send")
    page.wait_for_selector("#pg-meta:has-text('served by miner m1')")
    output = page.text_content("#pg-output") or ""
    assert output.split() == [f"w{i}" for i in range(12)]
    # The answer arrived in pieces as it was generated, not in one block.
    assert int(page.get_attribute("#pg-output", "data-chunks") or 0) > 1

    # A screenshot with the network at work; for docs/dashboard.png, a longer
    # history (INFERSWARM_DASHBOARD_SCREENSHOT=path) so the charts show a shape.
    target = os.environ.get("INFERSWARM_DASHBOARD_SCREENSHOT")
    if target:
        for rounds in range(1, 12):
            load(net, 4 * rounds, 40)
    with ThreadPoolExecutor(1) as pool:
        busy_before = chart_points(page, "load")
        busy = pool.submit(load, net, 12, 60)
        wait_for_more_points(page, "load", busy_before)  # seconds with busy slots: it is working
        if target:  # for the picture, also catch a moment with requests in flight
            page.wait_for_function(
                "Number(document.querySelector('#stat-inflight').textContent) > 0"
            )
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        busy.result()
    if target:
        shutil.copyfile(tmp_path / "dashboard.png", target)
    page.close()
    assert errors == []


def test_dashboard_asks_for_the_api_key_when_auth_is_on(
    net: Network, browser: sync_api.Browser
) -> None:
    net.api_key = "sk-dashboard"
    net.start_router()
    net.start_miner("m1")
    net.wait_miners(1)
    page, errors = open_dashboard(browser, net)
    page.wait_for_selector("#connection[data-state=error]:has-text('API key')")
    page.fill("#api-key", "sk-dashboard")
    page.click("#key-form button")
    page.wait_for_selector("#connection[data-state=live]")
    page.wait_for_selector("tr[data-miner=m1]")
    page.reload()  # the key is kept in localStorage
    page.wait_for_selector("tr[data-miner=m1]")
    page.close()
    # The 401 before the key was entered is the only error the page logged.
    assert all("401" in e for e in errors), errors
