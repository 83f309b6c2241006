"""`make demo`: a staged campaign over ten virtual ESP32 boards, on embedded defaults.

Makes a signing key and two firmware versions of the sensor example (examples/sensor/: a
temperature reading a second, the update service as its guest), boots ten virtual boards in three
groups (test, canary, field) running the real agent over MQTT against `fota serve`'s embedded
broker and SQLite registry. One field board has hardware revision B (the package is for A:
excluded); one canary board has lost its sensor (the self-test reads it out of range: v2 is rolled
back). The campaign runs wave by wave with live progress; the error gate pauses it on the canary
failure, the operator resumes, and a report ends it, then the readings the broker got from each
board in each phase of the campaign and the gap each reboot left in them.

    python -m host_tools.demos.fleet [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from host_tools import resources
from host_tools.demos.readings import Readings
from host_tools.fleet.campaign import COMPLETED, PAUSED, CampaignSpec
from host_tools.fleet.render import render_plan, render_report, render_status
from host_tools.image.build import BuildSpec, build_image
from host_tools.image.keys import generate_key
from host_tools.image.package import Manifest, make_package
from host_tools.server.service import Server, ServerConfig
from host_tools.sim.device import SimDevice
from host_tools.sim.runtime import BoardRun

EXAMPLE = resources.path("examples") / "sensor"  # app/app.py (frozen into the image) and main.py
MAIN = (EXAMPLE / "main.py").read_text()
# group, hardware revision, sensor plugged in
BOARDS = [("test", "A", True)] * 2 + [("canary", "A", True)] * 2 + [("canary", "A", False)] + \
         [("field", "A", True)] * 4 + [("field", "B", True)]


def banner(text: str) -> None:
    print(f"\n==== {text} ====", flush=True)


def app_source(version: str) -> str:
    """The example's app.py at `version` (what the README's walkthrough does with sed before each release)."""
    return re.sub(r'^VERSION = ".*?"', f"VERSION = {version!r}", (EXAMPLE / "app" / "app.py").read_text(), count=1, flags=re.M)


def unplug_sensor(board: SimDevice) -> None:
    """The board's sensor is off: its ADC reads full scale (host_tools/sim/board/machine.py)."""
    board.config["sensor"] = "unplugged"
    (board.path / "config.json").write_text(json.dumps(board.config, indent=2) + "\n")


def build_images(work: Path, signer) -> tuple[bytes, bytes]:
    images = []
    for version in ("1.0.0", "2.0.0"):
        spec = BuildSpec(board="sim", version=version, extra_modules=(("app.py", app_source(version)),),
                         trusted_keys=(signer.public_key,))
        images.append(build_image(spec))
    return images[0], images[1]


def start_boards(home: Path, v1: bytes, port: int, identities) -> tuple[list[SimDevice], list[BoardRun]]:
    """Boot the boards, each provisioned as `fota provision` does: its own broker login and report key."""
    boards, runs = [], []
    for i, (group, hw, sensor_ok) in enumerate(BOARDS):
        board = SimDevice.create(f"{group}-{i}", home, hw_rev=hw)
        board.flash_app(v1)
        board.write_file("main.py", MAIN)
        cred = identities.enroll(board.config["uid"]).device_config()
        board.write_file("config.json", json.dumps({"board": "sim", "chip_id": 0, "hw_rev": hw, "self_test_ms": 5000,
                                                    "server": f"mqtt://127.0.0.1:{port}", "chunk_timeout_ms": 1000, **cred}))
        if not sensor_ok:
            unplug_sensor(board)
        run = BoardRun(board, repl_pty=False)
        run.start()
        boards.append(board)
        runs.append(run)
    return boards, runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path,
                        help="keep keys, boards and the registry here (default: $FOTA_HOME/demo, else a temp dir deleted at the end)")
    parser.add_argument("--serve", action="store_true", help="keep serving the web console after the report (Ctrl-C ends)")
    args = parser.parse_args(argv)
    home, scratch = demo_home(args.home)
    try:
        return run_demo(home, serve=args.serve, keep=not scratch)
    finally:
        if scratch:
            shutil.rmtree(home, ignore_errors=True)


def demo_home(given: Path | None) -> tuple[Path, bool]:
    """Where the demo keeps its files, and whether it is a scratch directory to delete at the end."""
    if given is None and os.environ.get("FOTA_HOME"):
        given = Path(os.environ["FOTA_HOME"]) / "demo"
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return given, False
    return Path(tempfile.mkdtemp(prefix="fota-demo-")), True


def run_demo(home: Path, *, serve: bool = False, keep: bool = True) -> int:
    """Keys, images, the server, ten boards, campaign r2 to its report; `serve`: then keep the console up."""

    banner("keys and two firmware versions")
    signer = generate_key(home / "keys" / "release.pem", overwrite=True)
    v1, v2 = build_images(home, signer)
    manifest = Manifest(sequence=2, version="2.0.0", board="sim", chip_id=0, hw_revs=("A",), image_size=0, image_sha256=b"")
    package = make_package(v2, manifest, signer, encoding="zlib")
    print(f"signing key id {signer.public_key.key_id.hex()}; v1 {len(v1)} B, v2 {len(v2)} B "
          f"(zlib payload {len(package.payload)} B), package for hardware revision A only")

    banner("fota serve: embedded MQTT broker + SQLite registry")
    server = Server(ServerConfig(home / "server", tick_s=0.5, api_port=0))
    server.start()
    print(f"broker {server.broker_url}, data {server.config.data_dir}")
    print(f"console {server.api.url}/console/#token={server.api.tokens.token_for('operator')}", flush=True)
    runs: list[BoardRun] = []
    port = int(server.broker_url.rsplit(":", 1)[1])
    cred = server.identities.server_credentials()
    readings = Readings("127.0.0.1", port, cred.user, cred.password)
    try:
        banner(f"{len(BOARDS)} virtual boards boot v1, report in and publish a reading a second")
        boards, runs = start_boards(home, v1, port, server.identities)
        for board, (group, _, _) in zip(boards, BOARDS):
            server.registry.set_groups(board.config["uid"], [group])
        names = {b.config["uid"]: b.name for b in boards}
        deadline = time.monotonic() + 60
        while len(server.registry.devices()) < len(boards) or any(d["version"] is None for d in server.registry.devices()):
            if time.monotonic() > deadline:
                raise SystemExit("the boards did not report in")
            time.sleep(0.2)
        readings.wait(names, 0, max(1.0, deadline - time.monotonic()))
        for d in server.registry.devices():
            r = readings.latest(d["id"])
            shown = "no reading yet" if r is None else f"{r.c:.1f} degC" if r.c is not None else f"sensor out of range ({r.mv} mV)"
            print(f"  {names[d['id']]:<10} {d['id']}  hw {d['hw_rev']}  v{d['version']}  groups {','.join(d['groups']):<7} {shown}")

        banner("campaign r2: test -> canary -> field, error gate 25 % after 3 finished")
        pid = server.add_package(package.to_bytes())
        spec = CampaignSpec(name="r2", package=pid, waves=["test", "canary", "field"], error_threshold=0.25, min_sample=3,
                            max_in_flight=4, device_timeout_s=120)
        plan = server.campaigns.create(spec)
        print(render_plan(spec, plan))
        readings.phase("r2")
        server.campaigns.start("r2")
        last = follow(server, "r2", names)
        if server.registry.campaign("r2")["status"] == PAUSED:
            readings.phase("paused")
            banner("the gate paused the campaign; the operator looks, then resumes")
            time.sleep(1)
            readings.phase("resumed")
            server.campaigns.resume("r2")
            follow(server, "r2", names, last)

        banner("report")
        print(render_report(server.registry, "r2"))

        ended = time.monotonic()
        readings.phase("after")
        readings.wait(names, ended, 15)  # every board's sensor still (or again) publishing
        banner(f"readings at the broker ({readings.topic}): per phase, and the gap each reboot left")
        print(readings.render(names))
        if serve:
            banner("serving the console until Ctrl-C")
            print(f"console {server.api.url}/console/#token={server.api.tokens.token_for('operator')}", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        readings.close()
        for run in runs:
            run.stop()
        server.stop()
    if keep:
        print(f"\nkeys, boards and registry kept in {home}")
    return 0


def follow(server: Server, name: str, names: dict[str, str], last: str = "", timeout: float = 240) -> str:
    """Print the campaign's progress when it changes (never the frame `last` again), until it completes or
    pauses; returns the last frame printed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = render_status(server.registry, name)
        for uid, label in names.items():
            text = text.replace(f"  {uid:<14}", f"  {label:<14}")
        if text != last:
            print(text, "\n", flush=True)
            last = text
        if server.registry.campaign(name)["status"] in (COMPLETED, PAUSED, "ABORTED"):
            return last
        time.sleep(0.5)
    raise SystemExit(f"campaign {name} did not finish within {timeout} s")


if __name__ == "__main__":
    raise SystemExit(main())
