"""The chip's clock (issue 23): the ESP32 port's epoch 2000 on the virtual board, and firmware in Unix time.

The board runs twice where it matters: epoch 2000 as on a chip (the default) and 1970 as on the
Unix port; the same firmware must behave the same under both.
"""

from __future__ import annotations

import re
import time

import pytest

from agentkit import make_board, run_until_done, status
from conftest import run_micropython
from host_tools.sim.chipclock import UNIX_AT_2000
from host_tools.sim.runtime import BOARD_MODULES, BoardRun
from ntpkit import SntpServer
from simkit import app_image, fw_image, fw_package, new_board

EPOCHS = [2000, 1970]

# A state machine across resets (step file): power-on, NTP, soft reset, hard reset, deep sleep, power cut.
CLOCK_MAIN = r"""
import machine, ntptime, os, time

def step():
    try:
        return int(open("step").read())
    except OSError:
        return 0

def next_step(n):
    with open("step", "w") as f:
        f.write(str(n))

n = step()
rtc = machine.RTC()
print("S%d %d %d %r" % (n, time.time(), time.gmtime(0)[0], rtc.datetime()))
if n == 0:
    ntptime.host = "127.0.0.1"
    ntptime.settime()
    t = time.time()
    print("SET %d %r %r %d %r %d" % (t, time.gmtime(t), time.localtime(t), time.mktime(time.gmtime(t)), rtc.datetime(),
                                     time.time_ns() // 1000000000))
    next_step(1)
    machine.soft_reset()
elif n == 1:
    next_step(2)
    machine.reset()
elif n == 2:
    next_step(3)
    machine.deepsleep(200)
elif n == 3:
    next_step(4)
"""


def line(out: str, tag: str) -> list[str]:
    found = re.findall(rf"^{tag} (.*?)\r?$", out, re.M)
    assert found, f"no {tag} line in:\n{out}"
    return found[-1].split(" ", 1)


@pytest.mark.fw
@pytest.mark.parametrize("epoch", EPOCHS)
def test_board_clock_has_the_chips_epoch_and_rtc_lifetime(tmp_path, epoch):
    board = new_board(tmp_path, f"clk{epoch}", image=app_image("1.0.0"), files={"main.py": CLOCK_MAIN})
    board.config["epoch"] = epoch
    shift = UNIX_AT_2000 if epoch == 2000 else 0
    with SntpServer() as ntp:
        run = BoardRun(board)
        run.clock.ntp_port = ntp.port
        with run:
            run.wait_for("S3 ", timeout=60)
            run.wait_idle()  # the deep-sleep wake's main.py ended (the earlier ones reset)
            run.power_off()
            run.power_on()
            run.wait_for("S4 ", timeout=30)
        assert ntp.requests == 1
    out = run.transcript()
    host = time.time()

    # power-on: unset, the epoch plus seconds since boot, as a chip's RTC reads
    t0, rest = line(out, "S0")
    assert int(t0) < 30 and rest.startswith(f"{epoch} ({epoch}, 1, 1, ")

    # NTP set it: every reader agrees, in the board's epoch
    t, rest = line(out, "SET")
    t = int(t)
    assert abs(t + shift - host) < 60
    gm = time.gmtime(t + shift)
    expect = (gm.tm_year, gm.tm_mon, gm.tm_mday, gm.tm_hour, gm.tm_min, gm.tm_sec, gm.tm_wday, gm.tm_yday)
    assert rest.startswith(f"{expect!r} {expect!r} {t} ({expect[0]}, {expect[1]}, {expect[2]}, {expect[6]}, {expect[3]}, ")
    assert abs(int(rest.rsplit(" ", 1)[1]) - t) <= 1  # time_ns

    # kept across a soft reset, a hard reset and deep sleep; lost with power
    for tag in ("S1", "S2", "S3"):
        assert abs(int(line(out, tag)[0]) + shift - host) < 60, tag
    assert int(out.rsplit("S4 ", 1)[1].split(" ", 1)[0]) < 30
    assert run.clock.device_time() < 30


@pytest.mark.fw
@pytest.mark.parametrize("epoch", EPOCHS)
def test_expires_is_checked_in_unix_time_once_ntp_set_the_clock(tmp_path, epoch):
    now = int(time.time())
    expired = fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2, expires=now - 3600)
    board = make_board(tmp_path, f"exp{epoch}", expired, scenario={"ntp": True}, epoch=epoch)
    run = run_until_done(board)
    assert "REFUSED 12" in run.transcript()  # EXPIRED
    st = status(run)
    assert st["version"] == "1.0.0" and st["code"] == 12
    code, _detail, at = st["errors"][-1]
    assert code == 12 and abs(at - time.time()) < 120  # reported times are Unix times

    fresh = fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2, expires=now + 86400)
    board = make_board(tmp_path, f"ok{epoch}", fresh, scenario={"ntp": True}, epoch=epoch)
    run = run_until_done(board)
    assert "REFUSED" not in run.transcript()
    assert status(run)["version"] == "2.0.0"


@pytest.mark.fw
def test_expires_is_not_judged_while_the_clock_is_unset(tmp_path):
    expired = fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2, expires=int(time.time()) - 3600)
    board = make_board(tmp_path, "unset", expired)  # no NTP: the chip's RTC reads 2000-01-01 + uptime
    run = run_until_done(board)
    assert "REFUSED" not in run.transcript()
    assert status(run)["version"] == "2.0.0"


@pytest.mark.fw
def test_expires_refused_after_power_loss_from_the_signed_time_floor(tmp_path):
    """NTP set the clock for one update; power is lost (the chip's RTC reads 2000 again) and no NTP follows.

    The real unset clock (fota.clock returns None), not a stubbed one: an expired package is still
    refused (EXPIRED) because `now` is never before the newest signed `created` the board has seen.
    """
    now = int(time.time())
    first = fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2, created=now)
    board = make_board(tmp_path, "floor", first, scenario={"ntp": True})
    run = run_until_done(board)
    assert "REFUSED" not in run.transcript() and status(run)["version"] == "2.0.0"

    board.write_file("scenario.json", "{}")  # no NTP after this power-on: the RTC stays unset
    stale = fw_package(fw_image("2.1.0"), version="2.1.0", sequence=3, created=now - 7 * 86400, expires=now - 86400)
    board.write_file("update.fota", stale)
    run = run_until_done(board)
    assert run.clock.device_time() < 600  # the chip's clock was never set in this run
    assert "REFUSED 12" in run.transcript()  # EXPIRED
    assert status(run)["version"] == "2.0.0"

    fresh = fw_package(fw_image("2.1.0"), version="2.1.0", sequence=3, created=now, expires=now + 86400)
    board.write_file("update.fota", fresh)
    run = run_until_done(board)
    assert "REFUSED" not in run.transcript() and status(run)["version"] == "2.1.0"


CLOCK_PROBE = """
import time
from fota import clock
print(time.gmtime(0)[0], clock.epoch_offset(), clock.unix_now(), clock.is_set(), clock.to_unix(time.time()),
      clock.from_unix(1780000000), clock.localtime(1780000000)[:6])
"""


@pytest.mark.fw
@pytest.mark.parametrize("epoch", EPOCHS)
def test_fota_clock_converts_the_boards_epoch_to_unix(monkeypatch, epoch):
    shift = UNIX_AT_2000 if epoch == 2000 else 0
    monkeypatch.setenv("FOTA_SIM_EPOCH", str(epoch))
    probe = ["-c", CLOCK_PROBE]
    monkeypatch.setenv("FOTA_SIM_RTC_NS", str(3600 * 10**9 - time.time_ns()))  # unset: one hour after power-on
    res = run_micropython(probe, path=[BOARD_MODULES])
    assert res.returncode == 0, res.stderr
    year, offset, now, is_set, unix, dev, local = res.stdout.decode().split(" ", 6)
    assert (int(year), int(offset), now, is_set) == (epoch, shift, "None", "False")
    assert abs(int(unix) - (shift + 3600)) <= 2
    assert int(dev) == 1_780_000_000 - shift and local.strip() == "(2026, 5, 28, 20, 26, 40)"
    monkeypatch.setenv("FOTA_SIM_RTC_NS", str(-shift * 10**9))  # set to the host's time
    res = run_micropython(probe, path=[BOARD_MODULES])
    now = int(res.stdout.decode().split(" ")[2])
    assert abs(now - time.time()) < 5
