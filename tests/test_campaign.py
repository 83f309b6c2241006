"""Campaign gates, windows, presets and policies, over the real registry with scripted devices.

The devices here are scripted at the registry level (an offer's outcome is set as a
device's events would set it), so every gate can be driven exactly; the same engine
runs against virtual boards in tests/test_fleet_demo.py and make demo.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from host_tools.fleet.campaign import (
    COMPLETED,
    EXCLUDED,
    PAUSED,
    RUNNING,
    CampaignError,
    CampaignRunner,
    CampaignSpec,
    plan_campaign,
    report,
)
from host_tools.fleet.window import Window, WindowError
from host_tools.image.package import Manifest
from host_tools.server.registry import Registry

pytestmark = pytest.mark.host


OPEN: list[Registry] = []


@pytest.fixture(autouse=True)
def _close_registries():
    yield
    while OPEN:
        OPEN.pop().close()


class Fleet:
    """A registry, a clock, and devices whose outcomes the test decides."""

    def __init__(self, target, n=10, hw=None, groups=None):
        self.reg = Registry(target)
        OPEN.append(self.reg)
        self.now = 1_800_000_000.0
        self.offers: list[tuple[str, str, str]] = []
        self.withdrawn: list[str] = []
        m = Manifest(sequence=5, version="2.0.0", board="sim", chip_id=0, hw_revs=("A",), image_size=1, image_sha256=b"")
        self.reg.add_package("pkg", "/dev/null", m)
        for i in range(n):
            dev = f"d{i:02d}"
            self.reg.record_state(dev, {"board": "sim", "hw_rev": (hw or {}).get(dev, "A"), "version": "1.0.0", "seq": 1})
            self.reg.set_groups(dev, (groups or {}).get(dev, ["field"]))
        self.runner = CampaignRunner(self.reg, offer=self.offer, withdraw=self.withdrawn.append, clock=lambda: self.now)

    def offer(self, device, package, *, chunk, policy, record=None):
        self.offers.append((device, package, policy))
        return self.reg.create_offer(device, package, chunk=chunk, policy=0)

    def finish(self, device, status="SUCCEEDED", code=None, reason=None):
        offer = [o for o in self.reg.offers(device)][-1]
        self.reg.set_offer_status(offer.id, status, code=code, reason=reason)

    def in_flight(self, name):
        return [r for r in self.reg.campaign_devices(name) if r["status"] == "OFFERED"]

    def status(self, name):
        return self.reg.campaign(name)["status"]


def test_plan_lists_targets_by_wave_and_exclusions_with_reasons(registry_target):
    groups = {"d00": ["test"], "d01": ["test"]}
    f = Fleet(registry_target, hw={"d05": "B"}, groups=groups)
    f.reg.record_state("d06", {"board": "esp32_generic", "hw_rev": "A", "version": "1.0.0", "seq": 1})
    f.reg.record_state("d07", {"board": "sim", "hw_rev": "A", "version": "2.0.0", "seq": 5})
    plan = plan_campaign(f.reg, CampaignSpec(name="c", package="pkg", waves=["test", "50%", "100%"]))
    waves = {d: w for d, w in plan.targets}
    assert waves["d00"] == 0 and waves["d01"] == 0
    assert sorted(d for d, w in plan.targets if w == 1) and len(plan.targets) == 7
    reasons = dict(plan.excluded)
    assert "hardware revision B" in reasons["d05"]
    assert "board esp32_generic" in reasons["d06"]
    assert "already at sequence 5" in reasons["d07"]
    # the same plan every time
    assert plan == plan_campaign(f.reg, CampaignSpec(name="c", package="pkg", waves=["test", "50%", "100%"]))


def test_incompatible_device_is_never_offered(registry_target):
    f = Fleet(registry_target, n=4, hw={"d03": "B"})
    f.runner.create(CampaignSpec(name="c", package="pkg", max_in_flight=10))
    f.runner.start("c")
    for _ in range(5):
        f.runner.tick()
        for dev in ("d00", "d01", "d02"):
            if any(o[0] == dev for o in f.offers) and f.reg.offers(dev)[-1].status == "OFFERED":
                f.finish(dev)
    assert "d03" not in [o[0] for o in f.offers]
    assert f.status("c") == COMPLETED
    assert report(f.reg, "c")["by_status"] == {"SUCCEEDED": 3, EXCLUDED: 1}


def test_in_flight_cap_is_never_exceeded(registry_target):
    f = Fleet(registry_target, n=10)
    f.runner.create(CampaignSpec(name="c", package="pkg", max_in_flight=3))
    f.runner.start("c")
    peak = 0
    for step in range(20):
        f.runner.tick()
        peak = max(peak, len(f.in_flight("c")))
        for row in f.in_flight("c")[: 1 + step % 2]:  # devices finish a few at a time
            f.finish(row["device"])
    assert peak == 3 and f.status("c") == COMPLETED


def test_error_threshold_pauses_and_resume_goes_on(registry_target):
    f = Fleet(registry_target, n=6, groups={"d00": ["canary"], "d01": ["canary"], "d02": ["canary"]})
    f.runner.create(CampaignSpec(name="c", package="pkg", waves=["canary", "100%"], error_threshold=0.3, min_sample=3))
    f.runner.start("c")
    f.runner.tick()
    f.finish("d00")
    f.finish("d01", "ROLLED_BACK", 22, "SELF_TEST_FAILED: app")
    f.runner.tick()
    assert f.status("c") == RUNNING  # 2 finished < min sample 3
    f.finish("d02")
    f.runner.tick()
    camp = f.reg.campaign("c")
    assert camp["status"] == PAUSED and "1 of 3" in camp["note"]
    assert {o[0] for o in f.offers} == {"d00", "d01", "d02"}  # the field wave was not started
    f.runner.resume("c")
    for _ in range(6):
        f.runner.tick()
        for row in f.in_flight("c"):
            f.finish(row["device"])
    assert f.status("c") == COMPLETED
    rep = report(f.reg, "c")
    assert rep["by_status"]["SUCCEEDED"] == 5 and rep["by_status"]["ROLLED_BACK"] == 1
    assert rep["by_reason"] == {"ROLLED_BACK: SELF_TEST_FAILED: app": 1}
    assert rep["by_hw_rev"] == {"A": {"ROLLED_BACK": 1}}


def test_silent_device_times_out_and_is_retried(registry_target):
    f = Fleet(registry_target, n=2)
    f.runner.create(CampaignSpec(name="c", package="pkg", device_timeout_s=60, retries=1, error_threshold=1.0, min_sample=1))
    f.runner.start("c")
    f.runner.tick()
    f.finish("d00")
    f.now += 61
    f.runner.tick()  # d01 timed out: its offer withdrawn, retried
    assert "d01" in f.withdrawn
    assert [o[0] for o in f.offers].count("d01") == 2
    f.now += 61
    f.runner.tick()  # second timeout: no retries left
    f.runner.tick()
    rows = {r["device"]: r for r in f.reg.campaign_devices("c")}
    assert rows["d01"]["status"] == "TIMED_OUT" and "no outcome within 60 s" in rows["d01"]["reason"]


def test_device_that_joins_late_gets_its_offer(registry_target):
    f = Fleet(registry_target, n=2)
    f.runner.create(CampaignSpec(name="c", package="pkg"))
    f.runner.start("c")
    f.runner.tick()
    f.reg.record_state("late1", {"board": "sim", "hw_rev": "A", "version": "1.0.0", "seq": 1})
    f.runner.tick()
    assert "late1" in [o[0] for o in f.offers]


def test_maintenance_window_and_emergency_preset(registry_target):
    berlin = ZoneInfo("Europe/Berlin")
    f = Fleet(registry_target, n=2)
    f.now = datetime(2026, 11, 26, 12, 0, tzinfo=berlin).timestamp()  # noon: outside 02:00-04:00
    f.runner.create(CampaignSpec(name="w", package="pkg", window="0 2 * * * 120 Europe/Berlin"))
    f.runner.start("w")
    f.runner.tick()
    assert f.offers == []
    f.now = datetime(2026, 11, 27, 2, 30, tzinfo=berlin).timestamp()
    f.runner.tick()
    assert len(f.offers) == 2
    g = Fleet(registry_target, n=2)
    g.now = f.now - 12 * 3600
    g.runner.create(CampaignSpec.with_preset("emergency", name="e2", package="pkg", window="0 2 * * * 120 Europe/Berlin"))
    g.runner.start("e2")
    g.runner.tick()
    assert len(g.offers) == 2  # emergency skips the window (never the device's signature or compatibility checks)


def test_presets_and_policy_reach_the_offer(registry_target):
    release = CampaignSpec.with_preset("release", name="r", package="pkg")
    assert release.waves == ["test", "5%", "25%", "100%"] and release.use_window
    f = Fleet(registry_target, n=1)
    f.runner.create(CampaignSpec(name="c", package="pkg", policy="consent"))
    f.runner.start("c")
    f.runner.tick()
    assert f.offers[0][2] == "consent"
    with pytest.raises(CampaignError):
        CampaignSpec.with_preset("yolo", name="x", package="pkg")


def test_abort_withdraws_open_offers(registry_target):
    f = Fleet(registry_target, n=3)
    f.runner.create(CampaignSpec(name="c", package="pkg", max_in_flight=2))
    f.runner.start("c")
    f.runner.tick()
    f.runner.abort("c")
    assert len(set(f.withdrawn)) == 2  # the two offers in flight
    assert f.status("c") == "ABORTED"
    with pytest.raises(CampaignError, match="cannot go to"):
        f.runner.resume("c")


@pytest.mark.parametrize("text", ["0 2 * * *", "61 2 * * * 60", "0 2 * * * 60 Mars/Olympus", "0 2 * * * x"])
def test_bad_windows_are_refused(text):
    with pytest.raises(WindowError):
        Window.parse(text)


def test_window_steps_ranges_and_weekdays():
    w = Window.parse("*/15 1-3 * * 1-5 10 UTC")
    monday_0115 = datetime(2026, 11, 23, 1, 20, tzinfo=ZoneInfo("UTC")).timestamp()
    sunday_0115 = datetime(2026, 11, 22, 1, 20, tzinfo=ZoneInfo("UTC")).timestamp()
    assert w.open_at(monday_0115) and not w.open_at(sunday_0115)


def test_selection_by_board_hw_rev_tag_and_version(registry_target):
    f = Fleet(registry_target, n=4, hw={"d01": "C"})
    f.reg.set_tags("d02", ["outdoor"])
    spec = CampaignSpec(name="s", package="pkg", hw_revs=["A"], boards=["sim"], versions=["1.0.0"])
    assert sorted(d for d, _ in plan_campaign(f.reg, spec).targets) == ["d00", "d02", "d03"]
    tagged = CampaignSpec(name="t", package="pkg", tags=["outdoor"])
    assert [d for d, _ in plan_campaign(f.reg, tagged).targets] == ["d02"]


def test_abort_offers_the_previous_version_back_to_updated_devices(registry_target):
    f = Fleet(registry_target, n=2)
    f.runner.create(CampaignSpec(name="c", package="pkg", rollback_package="pkg-v1", max_in_flight=1))
    f.runner.start("c")
    f.runner.tick()
    f.finish(f.offers[0][0])
    f.runner.tick()
    f.runner.abort("c")
    assert f.offers[-1][1] == "pkg-v1"  # the device that updated gets the previous version offered back


def test_campaign_cli_plans_starts_and_reports(registry_target, tmp_path, capsys):
    from host_tools.cli import main

    if not isinstance(registry_target, type(tmp_path)):
        pytest.skip("the CLI reads the registry from the data directory (SQLite) or the running server's")
    data = registry_target.parent
    f = Fleet(data / "registry.sqlite", n=3, hw={"d02": "B"})
    assert main(["campaign", "create", "cli1", "--package", "pkg", "--data", str(data), "--waves", "100%"]) == 0
    plan = capsys.readouterr().out
    assert "wave 1 (100%): 2 device(s)" in plan and "d02: hardware revision B not in A" in plan
    assert main(["campaign", "start", "cli1", "--data", str(data)]) == 0
    f.runner.tick()
    for dev in ("d00", "d01"):
        f.finish(dev)
    f.runner.tick()
    capsys.readouterr()
    assert main(["campaign", "status", "cli1", "--data", str(data)]) == 0
    assert "COMPLETED" in capsys.readouterr().out
    assert main(["campaign", "report", "cli1", "--data", str(data)]) == 0
    rep = capsys.readouterr().out
    assert "SUCCEEDED    2" in rep and "1 x EXCLUDED: hardware revision B not in A" in rep
    assert main(["campaign", "resume", "cli1", "--data", str(data)]) == 1  # completed: nothing to resume


def test_downtime_per_device_per_wave_and_expected_from_the_waves_done(registry_target, tmp_path, capsys):
    """Issue 22: `committed` carries downtime_ms; the report gives it per device and per wave (median, worst) and the
    downtime the next waves can expect from the waves done; devices that do not report it count as not measured."""
    import json

    from host_tools.cli import main
    from host_tools.fleet.render import render_report_data, render_status_data

    f = Fleet(registry_target, n=6, groups={"d00": ["test"], "d01": ["test"], "d02": ["test"]})
    f.runner.create(CampaignSpec(name="c", package="pkg", waves=["test", "100%"], min_sample=10))
    f.runner.start("c")
    f.runner.tick()
    sent = {"d00": 2100, "d01": 3400, "d02": None}  # d02: a device from before issue 22 (no field)
    for dev, ms in sent.items():
        offer = f.reg.offers(dev)[-1].id
        f.reg.record_event(dev, {"event": "committed", "offer": offer} | ({} if ms is None else {"downtime_ms": ms}))
    rep = report(f.reg, "c")
    assert rep["downtime"][0] == {"index": 0, "name": "test", "devices": 2, "median_ms": 2750, "worst_ms": 3400}
    assert rep["expected_downtime"] is None  # the first wave is still the current one
    assert {r["device"]: r["downtime_ms"] for r in rep["devices"] if r["wave"] == 0} == sent
    f.runner.tick()
    f.runner.tick()  # wave 1 done: wave 2 offered
    rep = report(f.reg, "c")
    assert rep["campaign"]["wave"] == 1
    assert rep["expected_downtime"] == {"devices": 2, "median_ms": 2750, "worst_ms": 3400, "waves": [0]}
    text = render_status_data(rep, "c")
    assert "expected downtime per device: median 2.8 s, worst 3.4 s (2 device(s)), from wave(s) 1" in text
    assert "downtime median 2.8 s, worst 3.4 s" in text
    # junk from the network never lands: a bool, a negative or huge number, a string
    for dev, junk in zip(("d03", "d04", "d05"), (True, -5, "9")):
        f.reg.record_event(dev, {"event": "committed", "offer": f.reg.offers(dev)[-1].id, "downtime_ms": junk})
    assert [o.downtime_ms for d in ("d03", "d04", "d05") for o in f.reg.offers(d)] == [None, None, None]
    f.reg.record_event("d03", {"event": "committed", "offer": f.reg.offers("d03")[-1].id, "downtime_ms": 1000})
    f.runner.tick()
    rep = report(f.reg, "c")
    assert rep["downtime"][1]["devices"] == 1 and rep["downtime"][1]["worst_ms"] == 1000
    assert f.status("c") == COMPLETED and rep["expected_downtime"]["waves"] == [0, 1]
    assert rep["expected_downtime"] | {} == {"devices": 3, "median_ms": 2100, "worst_ms": 3400, "waves": [0, 1]}
    text = render_report_data(rep, "c")
    assert "wave 1 (test): median 2.8 s, worst 3.4 s (2 device(s))" in text
    assert "d01            wave 1: 3.4 s" in text
    if isinstance(registry_target, type(tmp_path)):  # the CLI reads the SQLite registry in the data directory
        data = registry_target.parent
        assert main(["campaign", "report", "c", "--data", str(data), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["downtime"] == rep["downtime"] and out["expected_downtime"] == rep["expected_downtime"]


def test_the_report_lists_devices_whose_power_check_defers_the_install(registry_target):
    """Issue 22: a device's state carries `deferred` while its power check puts the install off; the campaign
    report names those devices (their offers wait as DOWNLOADED), and forgets them once the state no longer has it."""
    from host_tools.fleet.render import render_report_data

    f = Fleet(registry_target, n=3, groups={"d00": ["test"], "d01": ["test"]})
    f.runner.create(CampaignSpec(name="c", package="pkg", waves=["test", "100%"], min_sample=10))
    f.runner.start("c")
    f.runner.tick()
    state = {"board": "sim", "hw_rev": "A", "version": "1.0.0", "state": 2, "result": 11, "code": 41}
    f.reg.record_state("d01", state | {"deferred": {"code": 41, "stage": "install", "detail": "power 3400 < 3600"}})
    rep = report(f.reg, "c")
    assert rep["deferred"] == [{"device": "d01", "stage": "install", "code": 41, "name": "POWER", "detail": "power 3400 < 3600"}]
    assert "d01            install deferred: POWER (power 3400 < 3600)" in render_report_data(rep, "c")
    f.reg.record_state("d01", state | {"state": 3, "result": 0, "code": 0})
    assert report(f.reg, "c")["deferred"] == []


def test_a_registry_from_before_downtime_gets_the_column(tmp_path):
    import sqlite3

    path = tmp_path / "registry.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE offers (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT, package TEXT, chunk INTEGER,"
               " policy INTEGER, status TEXT, code INTEGER, reason TEXT, created REAL, updated REAL, published INTEGER DEFAULT 1)")
    db.execute("INSERT INTO offers (device, package, chunk, policy, status) VALUES ('d00', 'pkg', 4096, 0, 'SUCCEEDED')")
    db.commit()
    db.close()
    reg = Registry(path)
    OPEN.append(reg)
    assert reg.offer(1).downtime_ms is None and reg.offer(1).status == "SUCCEEDED"
    reg.note_downtime(1, 1500)
    assert reg.offer(1).downtime_ms == 1500
    Registry(path).close()  # opening it again adds nothing twice
