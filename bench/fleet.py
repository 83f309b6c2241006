"""One campaign over 1,000 protocol-level devices and 10 virtual boards: time, server CPU per device.

`fota serve` runs as its own process against mosquitto (both started here), so
its CPU time can be read from /proc at the end; 10 virtual boards (the real
agent under micropython) are the test wave, 1,000 ProtoDevices (docs/PROTOCOL.md
spoken from CPython, no flash) the field wave. Prints the time from start to
COMPLETED, the server's CPU seconds per device, and the broker traffic.

    .venv/bin/python bench/fleet.py [--devices 1000] [--boards 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from brokers import Mosquitto  # noqa: E402
from host_tools.fleet.campaign import COMPLETED, CampaignSpec  # noqa: E402
from host_tools.fleet.protodevice import DeviceSpec  # noqa: E402
from host_tools.fleet.protofleet import ProtoFleet  # noqa: E402
from host_tools.server.packages import PackageStore  # noqa: E402
from host_tools.server.service import open_registry  # noqa: E402
from host_tools.sim.runtime import BoardRun  # noqa: E402
from mqttkit import device_id, mqtt_board  # noqa: E402
from simkit import fw_image, fw_package, session_signer  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--boards", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=200)
    args = parser.parse_args()
    package = fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        broker = Mosquitto(home)
        broker.conf.write_text(broker.conf.read_text() + "max_connections -1\n")
        broker.start()
        data = home / "server"
        log = open(home / "serve.log", "w")
        serve = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "serve", "--data", str(data), "--no-coap",
                                  "--broker", f"mqtt://{broker.host}:{broker.port}"], stdout=log, stderr=subprocess.STDOUT)
        runs, fleet = [], None
        try:
            wait(lambda: (data / "serve.json").exists(), 30, "fota serve")
            registry = open_registry(data)
            boards = [mqtt_board(home, f"b{i}", host=broker.host, port=broker.port) for i in range(args.boards)]
            runs = [BoardRun(b, repl_pty=False) for b in boards]
            for run in runs:
                run.start()
            specs = [DeviceSpec(f"proto{i:05d}", keys=(session_signer().public_key,)) for i in range(args.devices)]
            fleet = ProtoFleet(f"mqtt://{broker.host}:{broker.port}", specs, connect_rate=400)
            fleet.start()
            fleet.wait_connected(120)
            total = args.devices + args.boards
            wait(lambda: len([d for d in registry.devices() if d["version"]]) >= total, 120, "every device's state")
            for b in boards:
                registry.set_groups(device_id(b), ["test"])
            store = PackageStore(data / "packages")
            pid, parsed = store.add(package)
            registry.add_package(pid, str(store.path(pid)), parsed.manifest)
            spec = CampaignSpec(name="scale", package=pid, waves=["test", "100%"], max_in_flight=args.in_flight,
                                error_threshold=0.5, min_sample=10, device_timeout_s=300)
            from host_tools.fleet.campaign import CampaignRunner

            runner = CampaignRunner(registry, offer=lambda *a, **k: 0, withdraw=lambda d: None)
            runner.create(spec)
            cpu_before = cpu_seconds(serve.pid)
            started = time.monotonic()
            runner.start("scale")  # the serving process picks it up on its next tick
            wait(lambda: registry.campaign("scale")["status"] == COMPLETED, 900, "the campaign")
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(serve.pid) - cpu_before
            rows = registry.campaign_devices("scale")
            outcome = {}
            for row in rows:
                outcome[row["status"]] = outcome.get(row["status"], 0) + 1
            stats = fleet.stats()
        finally:
            if fleet:
                fleet.stop()
            for run in runs:
                run.stop()
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
            log.close()
            broker.stop()
    print(f"campaign over {args.devices} protocol-level devices + {args.boards} virtual boards "
          f"(package {len(package)} B, in-flight cap {args.in_flight}, mosquitto, fota serve in its own process)")
    print(f"  time to complete            {elapsed:8.1f} s")
    print(f"  server CPU                  {cpu:8.2f} s  = {1000 * cpu / total:.2f} ms per device")
    print(f"  outcomes                    {json.dumps(outcome)}")
    print(f"  simulator                   {stats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
