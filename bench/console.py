"""The console's overview with 1,000 protocol-level devices during a campaign, against a baseline of 10.

One `fota serve` (its own process, as deployed: API on a free loopback port, mosquitto as the broker) and a
ProtoFleet of 10 devices: the overview is loaded `--loads` times in headless Chromium (the baseline).
Then 990 more devices join and a campaign over all of them runs (so the live feed is busy) while the
overview is loaded again. Prints, for each: the time from navigation to a rendered page, the page's
own fetch + render time, and the /api/devices answer time; then the ratio 1,000 / 10. Target: the
overview renders in under a second with 1,000 devices (not asserted anywhere).

    .venv/bin/python bench/console.py [--devices 1000] [--loads 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from brokers import Mosquitto  # noqa: E402
from host_tools.fleet.protodevice import DeviceSpec  # noqa: E402
from host_tools.fleet.protofleet import ProtoFleet  # noqa: E402
from simkit import app_image, fw_package, session_signer  # noqa: E402


def browser(profile: Path) -> webdriver.Chrome:
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900", "--disable-features=BackForwardCache", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def measure(driver, url: str, api: httpx.Client, loads: int, expect: int) -> dict[str, float]:
    """Median milliseconds over `loads` page loads: navigation to rendered, the page's fetch + render, /api/devices."""
    page, own, answer = [], [], []
    for _ in range(loads):
        driver.get("about:blank")
        driver.get(url)
        try:
            WebDriverWait(driver, 30, poll_frequency=0.01).until(
                lambda d: d.execute_script("return document.querySelectorAll('#devices tbody tr').length") >= expect)
        except Exception:  # noqa: BLE001 - report what the page showed, then fail
            print("page did not render:", driver.find_element("tag name", "main").text[:300], file=sys.stderr)
            raise
        page.append(driver.execute_script("return performance.now()"))
        own.append(driver.execute_script("return window.fotaRenderMs"))
        t0 = time.perf_counter()
        api.get("/api/devices").raise_for_status()
        answer.append((time.perf_counter() - t0) * 1000)
    return {"page_ms": statistics.median(page), "fetch_render_ms": statistics.median(own), "api_devices_ms": statistics.median(answer)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=10)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--no-campaign", action="store_true", help="measure the 1,000 without a campaign running")
    args = parser.parse_args()
    key = session_signer().public_key
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        broker = Mosquitto(home)
        broker.conf.write_text(broker.conf.read_text() + "max_connections -1\n")
        broker.start()
        url = f"mqtt://{broker.host}:{broker.port}"
        data = home / "server"
        log = open(home / "serve.log", "w")
        serve = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "serve", "--data", str(data), "--no-coap", "--broker", url,
                                  "--api-port", "0"], stdout=log, stderr=subprocess.STDOUT)
        fleets, driver = [], None
        try:
            while not (data / "serve.json").exists():
                time.sleep(0.1)
            base_url = json.loads((data / "serve.json").read_text())["api"]
            token = next(t["token"] for t in json.loads((data / "api_tokens.json").read_text())["tokens"] if t["role"] == "operator")
            api = httpx.Client(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {token}"})
            console = f"{base_url}/console/#token={token}"
            count = lambda: api.get("/api/fleet").json()["devices"]  # noqa: E731
            specs = [DeviceSpec(f"d{i:05d}", keys=(key,), seq=1, reboot_delay=0.5) for i in range(args.devices)]
            fleets.append(ProtoFleet(url, specs[: args.baseline], connect_rate=400, max_connecting=50))
            fleets[0].start()
            fleets[0].wait_connected(60)
            while count() < args.baseline:
                time.sleep(0.1)
            driver = browser(home / "profile")
            driver.get(console)  # stores the token for the session
            base = measure(driver, f"{base_url}/console/", api, args.loads, args.baseline)

            fleets.append(ProtoFleet(url, specs[args.baseline :], connect_rate=400, max_connecting=50))
            fleets[1].start()
            fleets[1].wait_connected(120)
            while count() < args.devices:
                time.sleep(0.2)
            pid = api.post("/api/packages", content=fw_package(app_image("2.0.0"), version="2.0.0", sequence=2),
                           headers={"Content-Type": "application/octet-stream"}).json()["id"]
            api.post("/api/campaigns", json={"name": "bench", "package": pid, "preset": "emergency", "max_in_flight": 200}).raise_for_status()
            if not args.no_campaign:
                api.post("/api/campaigns/bench/start").raise_for_status()
                time.sleep(2)  # offers out, events flowing
            big = measure(driver, f"{base_url}/console/", api, args.loads, args.devices)
            status = api.get("/api/campaigns/bench").json()
            done = sum(w["finished"] for w in status["waves"])
        finally:
            if driver is not None:
                driver.quit()
            for fleet in fleets:
                fleet.stop()
            serve.send_signal(signal.SIGTERM)
            serve.wait(30)
            log.close()
            broker.stop()
    print(f"console overview, median of {args.loads} loads (headless Chromium, same server and browser)")
    print(f"  {'':<28} {args.baseline:>8} devices {args.devices:>8} devices   ratio")
    for key_ in ("page_ms", "fetch_render_ms", "api_devices_ms"):
        print(f"  {key_:<28} {base[key_]:>11.1f} ms {big[key_]:>11.1f} ms  {big[key_] / max(base[key_], 1e-9):6.2f}x")
    print(f"  campaign during the second measurement: {done} of {args.devices} devices finished by its end")
    print(f"  target: overview rendered in < 1000 ms with {args.devices} devices: {'met' if big['page_ms'] < 1000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
