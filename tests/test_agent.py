"""The update agent on virtual boards, under micropython: success, rollback, refusals."""

from __future__ import annotations

import json

import pytest

from agentkit import CONFIG, events, make_board, nvs_values, run_until_done, status, v2_package
from host_tools.esp import espidf
from simkit import fw_image, fw_package

pytestmark = pytest.mark.fw
LWM2M_SUCCESS, LWM2M_FAILED = 1, 8


def otadata_states(board):
    return [e.state for e in board.status().entries]


def flash_regions(board):
    data = board.flash_path.read_bytes()
    return data[0xD000:0xF000], data[0x190000:0x310000]


@pytest.mark.parametrize("encoding", ["raw", "zlib"])
def test_v1_to_v2_commits_after_the_self_test(tmp_path, encoding):
    board = make_board(tmp_path, "ok", v2_package(encoding=encoding))
    run = run_until_done(board)
    st = status(run)
    assert st["version"] == "2.0.0" and st["seq"] == 2 and st["result"] == LWM2M_SUCCESS
    assert otadata_states(board) == [espidf.STATE_VALID, espidf.STATE_VALID]
    assert board.status().active == 1
    assert [e["version"] for e in events(run, "committed")] == ["2.0.0"]
    # the new image migrated the config and kept it
    assert json.loads(board.read_file("config.json").decode())["migrated_by"] == "2.0.0"
    assert run.flash.faults == []


def test_failed_self_test_rolls_back_and_restores_config(tmp_path):
    board = make_board(tmp_path, "fail", v2_package("fail"))
    run = run_until_done(board)
    st = status(run)
    assert st["version"] == "1.0.0" and st["seq"] == 0 and st["result"] == LWM2M_FAILED
    rolled = events(run, "rolled_back")
    assert rolled == [{"version": "2.0.0", "code": 22, "name": "SELF_TEST_FAILED", "detail": "app"}]
    assert otadata_states(board) == [espidf.STATE_VALID, espidf.STATE_ABORTED]
    assert json.loads(board.read_file("config.json").decode()) == CONFIG
    assert board.read_file("config.json.bak") is None


def test_hanging_self_test_is_reset_by_the_watchdog_and_rolled_back(tmp_path):
    board = make_board(tmp_path, "hang", v2_package("hang"), scenario={"self_test_ms": 500})
    run = run_until_done(board)
    assert [e.kind for e in run.events].count("wdt") == 1
    rolled = events(run, "rolled_back")
    assert rolled[0]["code"] == 23 and rolled[0]["name"] == "SELF_TEST_TIMEOUT"
    assert status(run)["version"] == "1.0.0"
    assert json.loads(board.read_file("config.json").decode()) == CONFIG


def test_second_update_while_pending_verify_is_refused(tmp_path):
    # v2's main.py offers another package before its own self-test ran
    board = make_board(tmp_path, "pend", v2_package(), scenario={"offer_first_on": "2.0.0"})
    board.write_file("second.fota", fw_package(fw_image("3.0.0"), version="3.0.0", sequence=3))
    run = run_until_done(board)
    assert "REFUSED 18" in run.transcript()  # UNCONFIRMED, on v2's first boot
    assert status(run)["version"] == "2.0.0"


REFUSALS = [
    ("wrong board", dict(board="esp32_generic"), 8),
    ("wrong hw rev", dict(hw_revs=("C",)), 10),
    ("replayed sequence", dict(sequence=0), 11),
    ("expired", dict(expires=1_700_000_000), 12),
    ("min version", dict(min_version="1.5"), 13),
]


@pytest.mark.parametrize("label, fields, code", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_manifest_refusals_leave_flash_untouched(tmp_path, label, fields, code):
    fields = dict(fields)
    seq = fields.pop("sequence", 2)
    pkg = fw_package(fw_image("2.0.0"), version="2.0.0", sequence=seq, **fields)
    board = make_board(tmp_path, "ref", pkg, scenario={"ntp": True})  # expiry needs a set clock: NTP sets it
    from host_tools.sim.runtime import BoardRun

    with BoardRun(board) as run:
        run.wait_for("BOOT")
        before = flash_regions(board)  # after the first boot wrote otadata
        run.wait_for("DONE")
    assert f"REFUSED {code}" in run.transcript()
    assert flash_regions(board) == before
    assert status(run)["code"] == code


def test_bad_signature_is_refused_before_any_flash_write(tmp_path):
    pkg = bytearray(v2_package())
    pkg[40] ^= 1
    board = make_board(tmp_path, "sig", bytes(pkg))
    run = run_until_done(board)
    assert "REFUSED 5" in run.transcript()
    # outside the filesystem, only the first boot's otadata write (erase + write)
    assert run.flash.ops_in(0xD000, 0x310000) == 2


def test_tampered_chunk_fails_the_digest_and_never_sets_boot(tmp_path):
    pkg = bytearray(v2_package())
    pkg[-2000] ^= 0x40  # inside the image payload, after the signed manifest
    board = make_board(tmp_path, "tamper", bytes(pkg))
    run = run_until_done(board)
    assert "REFUSED 16" in run.transcript()  # DIGEST_MISMATCH
    assert otadata_states(board)[1] == 0xFFFFFFFF  # set_boot never ran
    assert [e.kind for e in run.events].count("boot") == 1
    assert ("fota", "journal") not in nvs_values(board)  # the journal (an NVS blob) was dropped


def test_whole_update_runs_in_a_64k_heap(tmp_path):
    board = make_board(tmp_path, "heap", v2_package(encoding="zlib"))
    run = run_until_done(board, heapsize="64k")
    assert status(run)["version"] == "2.0.0", run.transcript()
    assert "MemoryError" not in run.transcript()


@pytest.mark.parametrize("encoding, cut_chunk", [("raw", 20), ("zlib", 28)])
def test_download_resumes_after_a_power_cut_without_starting_over(tmp_path, encoding, cut_chunk):
    """raw: the journal's chunk bitmap; zlib: the journal names the resume point at 64 KiB (host_tools/image/resume.py),
    and the second attempt inflates from there with a fresh decoder (its `have` counts the image's 4 KiB chunks)."""
    from agentkit import events as evts
    from host_tools.sim.flash import PowerPlan
    from host_tools.sim.runtime import BoardRun

    pkg = fw_package(fw_image("2.0.0", pad=96000), version="2.0.0", sequence=2, encoding=encoding)
    board = make_board(tmp_path, "resume", pkg)
    # ops: 2 for the first boot's otadata, then erase + write per 4 KiB sector (and the journal's, from 64 KiB on)
    with BoardRun(board, plan=PowerPlan(cut_before=2 + 2 * cut_chunk)) as run:
        run.wait_event("power_loss")
        run.power_on()
        from agentkit import wait_done

        wait_done(run)
    downloads = evts(run, "downloading")
    assert downloads[0]["have"] == 0 and downloads[1]["have"] == 16  # the journal kept 64 KiB
    assert status(run)["version"] == "2.0.0"
    assert run.flash.faults == []


@pytest.mark.parametrize(
    "scenario, deferred",
    [
        ({"policy": "consent"}, True),  # waits for approve()
        ({"policy": "download-only"}, True),  # stops at DOWNLOADED
        ({"hold": True}, True),  # the application's busy-lock
        ({"hold": True, "max_hold_s": 0}, False),  # ... but never longer than its maximum
        ({"window": "two hours from now"}, True),  # a maintenance window not open now
    ],
    ids=["consent", "download-only", "busy-lock", "busy-lock-expired", "window"],
)
def test_install_policy_busy_lock_and_window(tmp_path, scenario, deferred):
    import time as _time

    if "window" in scenario:  # a 30-minute window starting two hours from now (the chip's local time is UTC)
        now = _time.gmtime()
        scenario = {"window": [((now.tm_hour + 2) % 24) * 60 + now.tm_min, 30], "ntp": True}
    board = make_board(tmp_path, "pol", v2_package(), scenario=scenario)
    from host_tools.sim.runtime import BoardRun

    with BoardRun(board) as run:
        run.wait_for("STATUS" if deferred else "BOOT 2.0.0 1", timeout=60)  # the whole line: its end may come in a later read
    out = run.transcript()
    if deferred:
        assert "PUMPED 11 2" in out  # LwM2M 11 deferred, state 2 DOWNLOADED: no reboot
        assert [e.kind for e in run.events].count("boot") == 1
        assert otadata_states(board)[1] == 0xFFFFFFFF
    else:
        assert "BOOT 2.0.0 1" in out


def test_consent_then_approve_installs(tmp_path):
    board = make_board(tmp_path, "approve", v2_package(), scenario={"policy": "consent", "approve": True})
    run = run_until_done(board)
    assert "APPROVING" in run.transcript()
    assert status(run)["version"] == "2.0.0"
