"""A virtual board running the update agent from a local package file."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from host_tools.sim.runtime import BoardRun
from ntpkit import SntpServer
from simkit import fw_image, fw_package, new_board

# main.py of the test boards: the agent's real entry sequence, driven by scenario.json.
MAIN = r"""
import app, gc, json, os, time
from fota.agent import Agent, Identity
from fota.errors import OtaError
from fota.link.source import FileSource, pump
import trusted_keys

with open("scenario.json") as f:
    cfg = json.loads(f.read())

def rep(event, info):
    print("EVENT", event, json.dumps(info))

def exists(name):
    try:
        os.stat(name)
        return True
    except OSError:
        return False

def migrate(old, new):
    with open("config.json") as f:
        c = json.loads(f.read())
    c["schema"] = 2
    c["migrated_by"] = new
    with open("config.json", "w") as f:
        f.write(json.dumps(c))

if cfg.get("ntp"):  # the bench's SNTP server (tests/ntpkit.py) sets the chip's clock
    import ntptime
    ntptime.host = "127.0.0.1"
    ntptime.settime()

from fota.device import clock  # Unix time once NTP has set the clock; None before (any epoch)

agent = Agent(Identity("sim", 0, cfg.get("hw_rev", "A"), app.VERSION), trusted_keys.KEYS, reporter=rep, clock=clock,
              self_test_ms=cfg.get("self_test_ms", 3000), policy=cfg.get("policy", "auto"))
agent.add_check("app", app.self_test)
agent.migrate = migrate
agent.max_hold_s = cfg.get("max_hold_s", 600)
if cfg.get("window"):
    agent.window = tuple(cfg["window"])
if cfg.get("hold"):
    agent.hold(True)
if cfg.get("offer_first_on") == app.VERSION and exists("second.fota"):
    try:
        pump(agent, FileSource("second.fota"))
    except OtaError as e:
        print("REFUSED", e.code)
print("FLOOR", agent.boot_state.store.floor())  # what the state files alone hold (anchors, fota_state.json)
result = agent.boot()
print("BOOT", app.VERSION, result)
if result is not None and exists("update.fota"):
    os.remove("update.fota")
if exists("update.fota"):
    try:
        gc.collect()
        r = pump(agent, FileSource("update.fota", cfg.get("chunk", 4096)))
        print("PUMPED", r, agent.state)
        if cfg.get("approve"):
            agent.hold(False)
            agent.window = None
            print("APPROVING")
            agent.approve()
    except OtaError as e:
        print("REFUSED", e.code)
        os.remove("update.fota")
print("FLOOR", agent.boot_state.store.floor())
print("STATUS", json.dumps(agent.status()))
print("DONE")
"""

CONFIG = {"schema": 1, "interval": 60}


@lru_cache(maxsize=1)
def session_ntp() -> SntpServer:
    """One SNTP server on loopback serving the host's time, for the whole session (a daemon thread)."""
    return SntpServer().__enter__()


def make_board(home: Path, name: str, update: bytes | None, *, v1: bytes | None = None, scenario: dict | None = None,
               epoch: int = 2000):
    """A board running MAIN; scenario {"ntp": True} sets its clock from the session's SNTP server first."""
    board = new_board(home, name, image=v1 or fw_image("1.0.0"), files={"main.py": MAIN})
    board.config["epoch"] = epoch  # the ESP32 port's 2000, or the Unix port's 1970
    if (scenario or {}).get("ntp"):
        board.config["ntp_port"] = session_ntp().port
    board.write_file("scenario.json", json.dumps(scenario or {}))
    board.write_file("config.json", json.dumps(CONFIG))
    if update is not None:
        board.write_file("update.fota", update)
    return board


def run_until_done(board, *, plan=None, heapsize=None, timeout=60) -> BoardRun:
    """Power on and run until main.py printed DONE with no update left to try."""
    with BoardRun(board, plan=plan, heapsize=heapsize) as run:
        wait_done(run, timeout)
    return run


def wait_done(run: BoardRun, timeout: float = 60) -> None:
    count = 1
    while True:
        run.wait_for_count("DONE", count, timeout)
        if run.board.read_file("update.fota") is None or "PUMPED" in run.transcript().rsplit("BOOT", 1)[-1]:
            return
        count += 1


def status(run: BoardRun) -> dict:
    found = re.findall(r"^STATUS (.*)$", run.transcript(), re.M)
    return json.loads(found[-1])


def events(run: BoardRun, kind: str) -> list[dict]:
    return [json.loads(m) for m in re.findall(rf"^EVENT {kind} (.*)$", run.transcript(), re.M)]


def v2_package(behaviour: str = "ok", **kw) -> bytes:
    return fw_package(fw_image("2.0.0", behaviour), version="2.0.0", sequence=kw.pop("sequence", 2), **kw)


def nvs_values(board) -> dict[tuple[str, str], bytes]:
    """The committed blobs and i32s in a virtual board's nvs partition ((namespace, key) -> raw value): the
    board's record log (host_tools/sim/board/esp32.py "NVS"), read from flash.bin as the board reads it."""
    import binascii
    import struct

    from host_tools.esp.partition_table import PartitionTable

    flash = board.flash_path.read_bytes()
    at = board.config["partition_table_offset"]
    nvs = PartitionTable.from_binary(flash[at : at + 0xC00]).find("nvs")
    data = flash[nvs.offset : nvs.offset + nvs.size]
    state: dict[tuple[str, str], bytes] = {}
    batch: list[tuple[int, str, str, bytes]] = []
    pos = 0
    while pos + 10 <= len(data):
        magic, typ, nlen, klen, vlen, crc = struct.unpack_from("<BBBBHI", data, pos)
        body = data[pos + 10 : pos + 10 + nlen + klen + vlen]
        if magic != 0xA5 or len(body) != nlen + klen + vlen or binascii.crc32(data[pos : pos + 6] + body) != crc:
            break
        pos += 10 + len(body)
        if typ == 3:  # commit: the records before it count
            for t, ns, key, value in batch:
                if t == 0:
                    state.pop((ns, key), None)
                else:
                    state[(ns, key)] = value
            batch = []
        else:
            batch.append((typ, body[:nlen].decode(), body[nlen : nlen + klen].decode(), body[nlen + klen :]))
    return state
