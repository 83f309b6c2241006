"""Issue 19: several `fota serve` workers on one PostgreSQL registry and one mosquitto; one dies mid-campaign.

Each run: a fresh database, mosquitto with the password and ACL files `fota broker-files` writes,
protocol-level devices (two of them fail their self-test) and one virtual board running the real
agent, then a campaign. Once with a single worker; once with three, one of which is killed with
SIGKILL while the campaign is under way. The campaign completes; each device got one offer per
attempt; each outcome was recorded once; and the report is the single worker's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apikit import device_specs, wait_until
from brokers import start_mosquitto
from host_tools.fleet.campaign import COMPLETED, CampaignRunner, CampaignSpec, report
from host_tools.fleet.protodevice import enroll
from host_tools.fleet.protofleet import ProtoFleet
from host_tools.server.identity import Identities
from host_tools.server.registry import Registry
from host_tools.server.workers import SharedPackageStore
from host_tools.sim.runtime import BoardRun
from mqttkit import device_id, mqtt_board
from pgcluster import fresh_database
from simkit import fw_image, fw_package

pytestmark = [pytest.mark.host, pytest.mark.fw]

DEVICES = 40
FAILING = ("dev-07", "dev-23")  # fail-self-test: rolled back, in both runs


def _worker(name: str, data: Path, database: str, broker: str) -> subprocess.Popen:
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "serve.log", "w") as log:  # the worker keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "host_tools.cli", "serve", "--worker", name, "--database", database,
                                 "--broker", broker, "--data", str(data), "--no-coap", "--no-api"],
                                stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"})


def _run(tmp: Path, database: str, workers: int, kill_after: int | None) -> dict:
    """One campaign over the fleet with `workers` workers; SIGKILL the first once `kill_after` devices finished."""
    tmp.mkdir()
    broker = start_mosquitto(tmp, auth=True)
    reg = Registry(database)
    ids = Identities(reg)
    ids.server_credentials()  # the workers' login (one credential for them all)
    behaviours = {f"dev-{i:02d}": ("fail-self-test" if f"dev-{i:02d}" in FAILING else "ok", "A") for i in range(DEVICES)}
    specs = enroll(device_specs(behaviours), ids)
    board = mqtt_board(tmp, "board0", host=broker.host, port=broker.port, ids=ids)
    broker.sync(ids)  # what `fota broker-files` writes, reloaded
    procs = [_worker(f"w{i}", tmp / f"w{i}", database, broker.server_url) for i in range(workers)]
    fleet, run = ProtoFleet(broker.url, specs, connect_rate=200), BoardRun(board, repl_pty=False)
    killed = None
    try:
        wait_until(lambda: all((tmp / f"w{i}" / "serve.json").exists() for i in range(workers)), 30, "every worker")
        fleet.start()
        run.start()
        assert fleet.wait_connected(30)
        wait_until(lambda: len([d for d in reg.devices() if d["version"]]) == DEVICES + 1, 60, "every device's state")
        store = SharedPackageStore(tmp / "upload", reg.db)  # as the API stores an upload: the workers load it from the database
        pid, parsed = store.add(fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2))
        reg.add_package(pid, str(store.path(pid)), parsed.manifest)
        reg.set_groups(device_id(board), ["test"])
        runner = CampaignRunner(reg, offer=lambda *a, **k: 0, withdraw=lambda d: None)
        runner.create(CampaignSpec(name="scale", package=pid, waves=["test", "100%"], max_in_flight=8, error_threshold=0.5,
                                   success_threshold=0.9, min_sample=10, device_timeout_s=120))
        runner.start("scale")  # the workers' tickers take it from here

        def finished() -> int:
            return sum(r["status"] in ("SUCCEEDED", "ROLLED_BACK") for r in reg.campaign_devices("scale"))

        if kill_after is not None:
            wait_until(lambda: finished() >= kill_after, 90, f"{kill_after} devices finished")
            killed = procs[0]
            killed.send_signal(signal.SIGKILL)  # no clean-up of any kind: its connections just end
            killed.wait(10)
        try:
            wait_until(lambda: reg.campaign("scale")["status"] == COMPLETED, 120, "the campaign to complete")
        except AssertionError:
            logs = "\n".join((tmp / f"w{i}" / "serve.log").read_text()[-1500:] for i in range(workers))
            raise AssertionError(f"{reg.campaign('scale')}\n{report(reg, 'scale')['by_status']}\n{logs}") from None
        for p in procs:
            assert p is killed or p.poll() is None, (tmp / "w0" / "serve.log").read_text()[-3000:]
        rows = reg.campaign_devices("scale")
        offers = {}
        for o in reg.offers():
            offers.setdefault(o.device, []).append(o)
        finals = {}
        for e in reg.events():
            if e["event"] in ("committed", "rolled_back", "failed"):
                finals[(e["device"], e["offer"])] = finals.get((e["device"], e["offer"]), 0) + 1
        rep, bid = report(reg, "scale"), device_id(board)  # the board's id is its own: "board" in both runs
        return {"by_status": rep["by_status"], "by_reason": rep["by_reason"], "by_hw_rev": rep["by_hw_rev"],
                "devices": {"board" if r["device"] == bid else r["device"]: (r["status"], r["attempts"], r["code"]) for r in rows},
                "offers_per_attempt": {len(offers.get(r["device"], [])) / max(r["attempts"], 1) for r in rows},
                "finals_recorded": sorted(set(finals.values()))}
    finally:
        fleet.stop()
        run.stop()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
        reg.close()
        broker.stop()


def test_three_workers_one_killed_mid_campaign_match_a_single_worker(tmp_path, postgres_server):
    started = time.monotonic()
    single = _run(tmp_path / "single", fresh_database(postgres_server), workers=1, kill_after=None)
    three = _run(tmp_path / "three", fresh_database(postgres_server), workers=3, kill_after=DEVICES // 3)
    assert single["by_status"] == {"SUCCEEDED": DEVICES + 1 - len(FAILING), "ROLLED_BACK": len(FAILING)}
    assert three == single
    assert three["offers_per_attempt"] == {1.0}  # every device offered exactly once per attempt
    assert three["finals_recorded"] == [1]  # no outcome counted twice
    print(f"two campaigns over {DEVICES} devices and a board: {time.monotonic() - started:.1f} s")
