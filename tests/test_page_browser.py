"""The live page in a real browser: headless Chromium (Debian's chromium and chromium-driver, which
.ci/run installs) driven by Selenium, against `gpuwatch serve --simulate` on loopback behind TLS and
basic auth.

Nothing here waits on the wall clock's speed: every check waits on a condition with a generous bound
(tests/waiting.py), and scenario time is sped up with --sim-speed. The page is compared with the
``/status`` of the same poll (the poll timestamp it shows). Screenshots are saved for people to look
at (``pytest --update-screenshots`` refreshes those in docs/screenshots/); no pixel is compared.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
import pytest
from certs import make_pki
from conftest import required_tool
from serving import free_port, serve
from waiting import wait_until

pytestmark = pytest.mark.slow

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
USER, PASSWORD = "viewer", "page-test-password"
# What the page shows of the DOM, read in one go so that no update falls between two reads.
READ_PAGE = """
const num = (v) => (v === undefined || v === "" ? null : Number(v));
const poll = document.getElementById("poll");
const verdict = document.getElementById("verdict");
const contact = document.getElementById("contact");
return {
  timestamp: num(poll.dataset.timestamp),
  verdict: verdict.dataset.verdict,
  verdictText: verdict.textContent,
  reasons: [...document.querySelectorAll("#reasons li")].map((li) => li.textContent),
  contact: contact.hidden ? null : contact.textContent,
  gpus: [...document.querySelectorAll("article.card")].map((card) => {
    const temperature = card.querySelector("[data-field=temperature]");
    const power = card.querySelector("[data-field=power]");
    const chart = temperature && temperature.querySelector("svg.chart");
    const maxOperating = chart && chart.querySelector("line.limit.max_operating");
    return {
      index: Number(card.dataset.gpu),
      verdict: card.dataset.verdict,
      temperature: temperature && num(temperature.dataset.value),
      temperatureText: temperature && temperature.querySelector(".value").textContent,
      temperatureLimit: temperature && num(temperature.dataset.limit),
      thresholds: chart ? [...chart.querySelectorAll("line.limit")].map((l) => Number(l.dataset.limit)).sort((a, b) => a - b) : [],
      lastY: chart ? num(chart.dataset.lastY) : null,
      maxOperatingY: maxOperating ? Number(maxOperating.getAttribute("y1")) : null,
      power: power && num(power.dataset.value),
      powerText: power && power.querySelector(".value").textContent,
      powerLimit: power && num(power.dataset.limit),
    };
  }),
};
"""


@pytest.fixture(scope="module")
def chromedriver() -> str:
    required_tool("chromium", "chromium")
    return required_tool("chromedriver", "chromium-driver")


@pytest.fixture(scope="module")
def web_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A web config with TLS and one basic-auth user (bcrypt's lowest cost: the test checks many
    requests, not bcrypt); and the CA that signed the server certificate."""
    directory = tmp_path_factory.mktemp("page-tls")
    pki = make_pki(directory)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    path = directory / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        f"basic_auth_users:\n  {USER}: '{hashed}'\n"
    )
    return path, pki.ca


@pytest.fixture
def browser(chromedriver: str) -> Iterator[Any]:
    options = Options()
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1700",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        # Loopback is never proxied; anything else would go to a closed port and fail, so no
        # request the page might make can leave this machine (and the performance log shows it).
        "--proxy-server=http://127.0.0.1:9",
    ):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium") or "chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.set_capability("acceptInsecureCerts", True)  # the test CA is not in Chromium's store
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.execute_cdp_cmd("Network.enable", {})
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
        yield driver
    finally:
        driver.quit()


def _get_status(url: str, ca: Path) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(ca))
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(url + "/status", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _read(driver: Any) -> dict[str, Any]:
    return driver.execute_script(READ_PAGE)  # type: ignore[no-any-return]


def _save(driver: Any, tmp_path: Path, name: str, update: bool) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000, f"{name}: {len(data)} bytes, not a page"
    if update:
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / name)
    return path


def _requests(driver: Any) -> list[str]:
    """Every URL the browser asked for since the last call (Chromium's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _matches_status(page: dict[str, Any], status: dict[str, Any]) -> None:
    """The page shows what /status says for the same poll."""
    assert page["verdict"] == status["verdict"]
    assert status["verdict"].upper() in page["verdictText"]
    assert page["reasons"] == status["reasons"]
    assert [g["index"] for g in page["gpus"]] == [g["index"] for g in status["gpus"]]
    for shown, gpu in zip(page["gpus"], status["gpus"], strict=True):
        assert shown["verdict"] == gpu["verdict"]
        assert shown["temperature"] == gpu["temperature_celsius"]
        assert shown["temperatureText"].startswith(f"{gpu['temperature_celsius']:.0f} °C")
        assert shown["temperatureLimit"] == gpu["temperature_limit_celsius"]
        assert f"of {gpu['temperature_limit_celsius']:.0f} °C max" in shown["temperatureText"]
        thresholds = gpu["temperature_thresholds_celsius"]
        assert shown["thresholds"] == sorted(thresholds[k] for k in ("max_operating", "slowdown", "shutdown"))
        assert shown["power"] == gpu["power_watts"]
        assert abs(float(shown["powerText"].split(" W")[0]) - gpu["power_watts"]) <= 0.5
        assert shown["powerLimit"] == gpu["power_limit_watts"]
        assert f"of {gpu['power_limit_watts']:.0f} W cap" in shown["powerText"]


def _same_poll(driver: Any, url: str, ca: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The page and /status read at one poll: retried until the two show the same poll timestamp."""
    found: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def read_both() -> bool:
        page = _read(driver)
        status = _get_status(url, ca)
        if page["timestamp"] is not None and page["timestamp"] == status["timestamp"]:
            found.append((page, status))
        return bool(found)

    assert wait_until(read_both, timeout_s=60, every_s=0.05), "the page never showed the poll /status showed"
    return found[0]


def test_the_page_in_chromium_over_tls_and_basic_auth(
    browser: Any, web_config: tuple[Path, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config, ca = web_config
    update = bool(request.config.getoption("--update-screenshots"))
    port = free_port()
    # a poll every 10 simulated seconds, ten times faster than the wall clock: about one a second
    args = (
        "--simulate",
        "inference-host",
        "--sim-speed",
        "10",
        "--poll-interval",
        "10s",
        "--web.config.file",
        str(config),
    )
    context = ssl.create_default_context(cafile=str(ca))
    with serve(tmp_path, *args, ready_context=context, port=port):
        url = f"https://127.0.0.1:{port}"
        browser.get(url + "/")
        assert wait_until(lambda: len(_read(browser)["gpus"]) == 4, timeout_s=60), "no four GPU cards"

        # the verdict line and every GPU's temperature, power and limits are /status's of that poll
        page, status = _same_poll(browser, url, ca)
        _matches_status(page, status)

        # the page follows the daemon: it catches up with the poll /status has now, twice over
        for _ in range(2):
            latest = _get_status(url, ca)["timestamp"]
            assert wait_until(lambda latest=latest: (_read(browser)["timestamp"] or 0) >= latest, timeout_s=30)

        # GPU 2 heats toward its max-operating line: hotter, and its chart's newest point nearer the line
        start = _read(browser)["gpus"][2]
        assert start["temperature"] < start["temperatureLimit"]
        assert wait_until(lambda: _read(browser)["gpus"][2]["temperature"] >= start["temperature"] + 3, timeout_s=120)
        later = _read(browser)["gpus"][2]
        assert later["temperatureLimit"] - later["temperature"] < start["temperatureLimit"] - start["temperature"]
        assert abs(later["lastY"] - later["maxOperatingY"]) < abs(start["lastY"] - start["maxOperatingY"])
        _save(browser, tmp_path, "page-inference-host.png", update)

        # no console errors; every request went to the daemon on loopback
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
        asked = _requests(browser)
        assert any(u.startswith(url + "/api/page") for u in asked) and url + "/page.js" in asked
        assert all(urlsplit(u).hostname == "127.0.0.1" for u in asked if not u.startswith("data:")), asked
        before_restart = _read(browser)["timestamp"]

    # the daemon stops: the page says so, keeps what it had, and recovers when one serves again
    assert wait_until(lambda: _read(browser)["contact"] is not None, timeout_s=30), "no sign of the lost daemon"
    assert len(_read(browser)["gpus"]) == 4
    with serve(tmp_path, *args, ready_context=context, port=port):
        fresh = _get_status(url, ca)["timestamp"]

        def recovered() -> bool:
            page = _read(browser)
            return (
                page["contact"] is None and page["timestamp"] not in (None, before_restart) and len(page["gpus"]) == 4
            )

        assert wait_until(recovered, timeout_s=60), _read(browser)
        assert wait_until(lambda: (_read(browser)["timestamp"] or 0) >= fresh, timeout_s=30)
        page, status = _same_poll(browser, url, ca)
        _matches_status(page, status)
        # while it was away the browser logged the failed fetches (network errors); nothing else
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert all("net::ERR_" in e["message"] or "Failed to fetch" in e["message"] for e in errors), errors
        asked = _requests(browser)
        assert all(urlsplit(u).hostname == "127.0.0.1" for u in asked if not u.startswith("data:")), asked


def test_a_page_without_credentials_is_refused(browser: Any, web_config: tuple[Path, Path], tmp_path: Path) -> None:
    config, ca = web_config
    context = ssl.create_default_context(cafile=str(ca))
    with serve(tmp_path, "--simulate", "--web.config.file", str(config), ready_context=context) as daemon:
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
        browser.get(daemon.url + "/")
        # headless Chromium leaves the password prompt unanswered: an empty document, none of the page
        assert "gpuwatch" not in browser.page_source
        assert browser.find_elements("css selector", "#verdict") == []


# (scenario, simulated minutes) -> screenshot name; docs/screenshots/ has the ones the README shows
SHOTS = [
    ("inference-host", 1, "inference-host-1min.png"),
    ("inference-host", 5, "inference-host-5min.png"),
    ("inference-host", 8, "inference-host-8min.png"),
    ("xid-79", 2, "xid-79.png"),
]


@pytest.mark.parametrize("scenario", sorted({s for s, _, _ in SHOTS}))
def test_screenshots(browser: Any, tmp_path: Path, request: pytest.FixtureRequest, scenario: str) -> None:
    update = bool(request.config.getoption("--update-screenshots"))
    args = ("--simulate", scenario, "--sim-speed", "30", "--poll-interval", "5s")
    with serve(tmp_path, *args) as daemon:
        browser.get(daemon.url + "/")
        assert wait_until(lambda: len(_read(browser)["gpus"]) == 4, timeout_s=60)
        first = _read(browser)["timestamp"]
        for name_scenario, minutes, name in SHOTS:
            if name_scenario != scenario:
                continue
            # the first poll comes at about simulated second 0
            reached = wait_until(lambda m=minutes: (_read(browser)["timestamp"] or 0) >= first + m * 60, timeout_s=180)
            assert reached, f"{scenario} never reached {minutes} simulated minutes"
            _save(browser, tmp_path, name, update)
        if scenario == "xid-79":
            page = _read(browser)
            assert page["verdict"] == "critical"
            assert any("GPU 1" in r for r in page["reasons"])
        if scenario == "inference-host":  # the phone's view of the same page
            browser.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": 390, "height": 1600, "deviceScaleFactor": 1, "mobile": True},
            )
            try:
                assert wait_until(lambda: browser.execute_script("return document.documentElement.scrollWidth") <= 390)
                _save(browser, tmp_path, "phone.png", update)
            finally:
                browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
