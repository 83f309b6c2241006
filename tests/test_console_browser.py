"""The web console in a real browser: Debian's headless Chromium driven by Selenium through /usr/bin/chromedriver.

Against a running `fota serve` (its own process) with virtual boards (the real agent under
micropython) in a campaign: the overview lists the boards, the campaign page shows a wave's progress
moving without a reload, pausing from the page pauses the campaign (checked in the registry), and a
device page shows a rolled-back board's reason. Screenshots of the three pages go to
build/artifacts/console/ (the path is printed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from host_tools.demos.fleet import MAIN, app_source, unplug_sensor
from host_tools.image.build import BuildSpec, build_image
from host_tools.image.package import Manifest, make_package
from host_tools.server.identity import Identities
from host_tools.server.service import open_registry
from host_tools.sim.device import SimDevice
from host_tools.sim.runtime import BoardRun
from mqttkit import wait_until
from simkit import session_signer

pytestmark = [pytest.mark.fw, pytest.mark.timeout(300)]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "artifacts" / "console"
# name, group, sensor plugged in: the unplugged sensor fails v2's self-test (rolled back)
BOARDS = [("b0", "canary", True), ("b1", "canary", False), ("b2", "field", True), ("b3", "field", True)]

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("needs Debian's chromium and chromium-driver (make system-deps installs them)", allow_module_level=True)


def chrome(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def serve(tmp_path):
    data = tmp_path / "server"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "serve", "--data", str(data), "--api-port", "0", "--no-coap"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        info = wait_until(lambda: (data / "serve.json").exists() and json.loads((data / "serve.json").read_text()), 30, "fota serve")
        tokens = {t["role"]: t["token"] for t in json.loads((data / "api_tokens.json").read_text())["tokens"]}
        yield data, info, tokens
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def start_boards(home: Path, v1: bytes, broker_port: int, identities: Identities) -> list[tuple[SimDevice, BoardRun]]:
    """The boards, each enrolled (its own broker login and report key, docs/SECURITY.md) as fota provision does."""
    out = []
    for name, _, sensor_ok in BOARDS:
        board = SimDevice.create(name, home, hw_rev="A")
        board.flash_app(v1)
        board.write_file("main.py", MAIN)
        board.write_file("config.json", json.dumps({"board": "sim", "chip_id": 0, "hw_rev": "A", "self_test_ms": 3000,
                                                    "server": f"mqtt://127.0.0.1:{broker_port}", "chunk_timeout_ms": 1000}
                                                   | identities.enroll(board.config["uid"]).device_config()))
        if not sensor_ok:
            unplug_sensor(board)
        run = BoardRun(board, repl_pty=False)
        run.start()
        out.append((board, run))
    return out


def shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def test_console_overview_campaign_pause_and_rolled_back_device(serve, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    data, info, tokens = serve
    api = httpx.Client(base_url=info["api"], timeout=15, headers={"Authorization": f"Bearer {tokens['operator']}"})
    signer = session_signer()
    images = [build_image(BuildSpec(board="sim", version=v, extra_modules=(("app.py", app_source(v)),),
                                    trusted_keys=(signer.public_key,))) for v in ("1.0.0", "2.0.0")]
    manifest = Manifest(sequence=2, version="2.0.0", board="sim", chip_id=0, hw_revs=("A",), image_size=0, image_sha256=b"")
    package = make_package(images[1], manifest, signer, encoding="zlib").to_bytes()
    boards = start_boards(tmp_path / "boards", images[0], int(info["broker"].rsplit(":", 1)[1]), Identities(open_registry(data)))
    driver = None
    try:
        ids = {name: board.config["uid"] for (board, _), (name, _, _) in zip(boards, BOARDS)}
        registry = open_registry(data)
        wait_until(lambda: all((d := registry.device(i)) and d["version"] == "1.0.0" for i in ids.values()), 90, "boards report v1")
        for name, group, _ in BOARDS:
            api.put(f"/api/devices/{ids[name]}/groups", json={"names": [group]}).raise_for_status()
        pid = api.post("/api/packages", content=package, headers={"Content-Type": "application/octet-stream"}).json()["id"]
        spec = {"name": "web1", "package": pid, "waves": ["canary", "field"], "error_threshold": 1.0, "min_sample": 10,
                "max_in_flight": 1, "device_timeout_s": 120}
        api.post("/api/campaigns", json=spec).raise_for_status()

        driver = chrome(tmp_path / "chromium-profile")
        live = (StaleElementReferenceException,)  # the live feed re-renders rows between a find and a read: look again
        wait = WebDriverWait(driver, 60, poll_frequency=0.1, ignored_exceptions=live)
        driver.get(f"{info['api']}/console/#token={tokens['operator']}")
        seen = wait.until(lambda d: len(found := d.find_elements(By.CSS_SELECTOR, "#devices tbody tr[data-device]")) == 4
                          and {r.get_attribute("data-device") for r in found})
        assert seen == set(ids.values())
        assert "1.0.0" in wait.until(lambda d: d.find_element(By.ID, "versions").text)
        wait.until(lambda d: d.find_element(By.ID, "live").text == "live")
        shot(driver, "overview")

        driver.get(f"{info['api']}/console/campaign.html?name=web1")
        wave0 = lambda d: d.find_element(By.CSS_SELECTOR, 'tr.wave[data-wave="0"]')  # noqa: E731
        wait.until(lambda d: wave0(d).get_attribute("data-total") == "2" and d.find_element(By.ID, "live").text == "live")
        assert wait.until(lambda d: wave0(d).get_attribute("data-finished")) == "0"  # read again if the feed re-rendered it
        api.post("/api/campaigns/web1/start").raise_for_status()
        # the page is not reloaded: the live feed moves the wave's progress
        WebDriverWait(driver, 120, poll_frequency=0.1, ignored_exceptions=live).until(lambda d: int(wave0(d).get_attribute("data-finished")) >= 1)
        wait.until(lambda d: d.find_element(By.ID, "btn-pause").is_enabled())
        wait.until(lambda d: d.find_element(By.ID, "btn-pause").click() or True)
        wait_until(lambda: registry.campaign("web1")["status"] == "PAUSED", 30, "PAUSED in the registry")
        assert "paused by operator (operator)" in registry.campaign("web1")["note"]
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-status") == "PAUSED")
        wait.until(lambda d: "Paused: paused by operator" in d.find_element(By.ID, "paused-because").text)
        wait.until(lambda d: not d.find_element(By.ID, "btn-pause").is_enabled())
        shot(driver, "campaign")
        # on to the end of the canary wave: b1 rolls back (a click on a disabled button would do nothing)
        wait.until(lambda d: (b := d.find_element(By.ID, "btn-resume")).is_enabled() and (b.click() or True))
        wait_until(lambda: registry.campaign("web1")["status"] == "RUNNING", 30, "RUNNING again")
        broken = ids["b1"]
        wait_until(lambda: any(o.status == "ROLLED_BACK" for o in registry.offers(broken)), 150, "b1 rolled back", interval=0.5)

        driver.get(f"{info['api']}/console/device.html?id={broken}")
        reason = wait.until(lambda d: (r := d.find_elements(By.CSS_SELECTOR, "#offers td.reason")) and r[0].text)
        assert "SELF_TEST_FAILED" in reason
        # the table's header is text too: wait for the rolled_back row itself
        events = wait.until(lambda d: "rolled_back" in (t := d.find_element(By.ID, "events").text) and t)
        assert "SELF_TEST_FAILED" in events
        shot(driver, "device")
        audit = api.get("/api/audit", params={"action": "campaign.pause"}).json()
        assert audit[0]["who"] == "operator" and audit[0]["target"] == "web1"
    finally:
        if driver is not None:
            driver.quit()
        for _, run in boards:
            run.stop()
        api.close()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
