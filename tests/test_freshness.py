"""Issue 14 on the server: images that rolled back are not offered again, and when the server last heard from each device."""

from __future__ import annotations

import argparse

import pytest

from host_tools.cli.args import duration
from host_tools.fleet.campaign import EXCLUDED, CampaignRunner, CampaignSpec, plan_campaign, report
from host_tools.fleet.devices_view import device_record, render_devices
from host_tools.fleet.render import render_report_data
from host_tools.image.package import Manifest
from host_tools.server.registry import Registry

pytestmark = pytest.mark.host

BAD, FIXED = b"\x01" * 32, b"\x02" * 32  # image digests


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "registry.sqlite")
    for pid, seq, image in (("bad", 2, BAD), ("bad-resigned", 2, BAD), ("fixed", 3, FIXED)):
        r.add_package(pid, "/dev/null", Manifest(sequence=seq, version=f"2.{seq}", board="sim", chip_id=0, hw_revs=("A",),
                                                 image_size=1, image_sha256=image))
    for dev in ("d1", "d2", "d3"):
        r.record_state(dev, {"board": "sim", "hw_rev": "A", "version": "1.0.0", "seq": 1})
    yield r
    r.close()


def settle(reg: Registry, device: str, package: str, event: dict) -> int:
    offer = reg.create_offer(device, package, chunk=4096, policy=0)
    reg.record_event(device, {"offer": offer} | event)
    return offer


ROLLED_BACK = {"event": "rolled_back", "code": 22, "name": "SELF_TEST_FAILED", "detail": "app"}


def test_rolled_back_image_is_remembered_per_device_by_its_digest(reg):
    offer = settle(reg, "d1", "bad", ROLLED_BACK)
    assert reg.offer(offer).status == "ROLLED_BACK"
    why = reg.rolled_back_reason("d1", "bad")
    assert why and f"offer {offer}" in why and "SELF_TEST_FAILED" in why
    assert reg.rolled_back_reason("d1", "bad-resigned")  # another package with the same image
    assert reg.rolled_back_reason("d1", "fixed") is None and reg.rolled_back_reason("d2", "bad") is None


def test_refusal_as_rolled_back_before_is_remembered_other_refusals_are_not(reg):
    settle(reg, "d2", "bad", {"event": "failed", "code": 32, "name": "ROLLED_BACK_BEFORE", "detail": "offer refused"})
    settle(reg, "d3", "bad", {"event": "failed", "code": 11, "name": "ROLLBACK", "detail": "offer refused"})
    assert reg.rolled_back_reason("d2", "bad") and reg.rolled_back_reason("d3", "bad") is None


def test_an_event_for_another_devices_offer_remembers_nothing(reg):
    offer = reg.create_offer("d1", "bad", chunk=4096, policy=0)
    reg.record_event("d2", {"offer": offer} | ROLLED_BACK)
    assert reg.rolled_back_reason("d1", "bad") is None and reg.rolled_back_reason("d2", "bad") is None


def test_campaign_excludes_devices_the_image_rolled_back_on_unless_allowed(reg):
    settle(reg, "d1", "bad", ROLLED_BACK)
    plan = plan_campaign(reg, CampaignSpec(name="c", package="bad-resigned"))
    assert [d for d, _ in plan.targets] == sorted(["d2", "d3"], key=lambda d: [t for t, _ in plan.targets].index(d))
    assert [(d, "rolled back" in why) for d, why in plan.excluded] == [("d1", True)]
    forced = plan_campaign(reg, CampaignSpec(name="c", package="bad-resigned", allow_rolled_back=True))
    assert {d for d, _ in forced.targets} == {"d1", "d2", "d3"} and forced.excluded == []
    assert plan_campaign(reg, CampaignSpec(name="c", package="fixed")).excluded == []


def test_device_that_rolls_back_after_the_plan_is_excluded_when_its_turn_comes(reg):
    offered = []
    runner = CampaignRunner(reg, offer=lambda d, p, **kw: offered.append(d) or reg.create_offer(d, p, chunk=4096, policy=0),
                            withdraw=lambda d: None)
    runner.create(CampaignSpec(name="c", package="bad", max_in_flight=1, use_window=False))
    runner.start("c")
    first = [r["device"] for r in reg.campaign_devices("c")]
    later = [d for d in first if d != first[0]][-1]
    settle(reg, later, "bad-resigned", ROLLED_BACK)  # another campaign rolled the same image back there
    for _ in range(6):
        runner.tick()
        for o in reg.offers():
            if o.status == "OFFERED":
                reg.record_event(o.device, {"event": "committed", "offer": o.id})
    rows = {r["device"]: r for r in reg.campaign_devices("c")}
    assert later not in offered and rows[later]["status"] == EXCLUDED and "rolled back" in rows[later]["reason"]
    assert report(reg, "c")["by_reason"] == {f"EXCLUDED: {rows[later]['reason']}": 1}


def test_contact_times_heard_and_sent(reg):
    reg.record_state("d1", {"board": "sim"})
    before = {d["id"]: d for d in reg.devices()}
    assert before["d1"]["last_heard"] and before["d1"]["last_sent"] is None
    offer = reg.create_offer("d1", "fixed", chunk=4096, policy=0)
    d1 = reg.device("d1")
    assert d1["last_sent"] >= before["d1"]["last_heard"] and d1["last_sent_what"] == f"offer {offer}"
    reg.note_sent("d1", "keylist 3")
    assert reg.device("d1")["last_sent_what"] == "keylist 3"
    table = render_devices([device_record(d) for d in reg.devices()], now=d1["last_sent"] + 7200)
    assert "heard" in table.splitlines()[0] and "sent" in table.splitlines()[0]
    assert "2h ago" in [line for line in table.splitlines() if line.startswith("d1")][0]


def test_report_lists_devices_not_heard_from_for_longer_than_the_stale_age(reg):
    CampaignRunner(reg, offer=lambda *a, **k: 0, withdraw=lambda d: None).create(CampaignSpec(name="c", package="fixed"))
    heard = {d["id"]: d["last_heard"] for d in reg.devices()}
    reg.db.execute("UPDATE contact SET heard = ? WHERE device = ?", (heard["d2"] - 10 * 86400, "d2"))
    reg.db.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (heard["d2"] - 10 * 86400, "d2"))
    data = report(reg, "c", now=heard["d1"] + 60)
    assert [u["device"] for u in data["unreachable"]] == ["d2"] and data["unreachable"][0]["age_s"] > 10 * 86400
    assert [u["device"] for u in report(reg, "c", now=heard["d1"] + 60, stale_after_s=30)["unreachable"]][-1] != "d2"
    assert {u["device"] for u in report(reg, "c", now=heard["d1"] + 60, stale_after_s=30)["unreachable"]} == {"d1", "d2", "d3"}
    assert report(reg, "c", now=heard["d1"] + 60, stale_after_s=20 * 86400)["unreachable"] == []
    text = render_report_data(data, "c")
    assert "not heard from for more than 7 day(s)" in text and "d2" in text.split("not heard from")[1]


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800)])
def test_stale_after_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-1d", "0", "7w"])
def test_bad_durations_are_usage_errors(text):
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)
