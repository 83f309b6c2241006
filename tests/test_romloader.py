"""The virtual board's serial bootloader, driven by the real esptool over a pty.

Every esptool test runs the installed esptool 5 as a subprocess against a RomLoader served on a pty
(`--before no-reset --after no-reset`, the board already in download mode), with the ROM (`--no-stub`)
and with esptool's stub, and checks what landed in the flash file and how the loader erased and wrote it.
"""

from __future__ import annotations

import hashlib
import random
import re
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import serial

from host_tools.sim.flash import Flash, PowerPlan
from host_tools.sim.rfc2217port import EN_SETTLE, ResetCircuit, Rfc2217Server
from host_tools.sim.romloader import (
    CHANGE_BAUDRATE,
    DOWNLOAD_BOOT_TEXT,
    FLASH_BEGIN,
    FLASH_DATA,
    FLASH_DEFL_BEGIN,
    MEM_BEGIN,
    MEM_DATA,
    MEM_END,
    READ_FLASH,
    READ_REG,
    SPI_FLASH_MD5,
    SYNC,
    RomLoader,
)
from host_tools.sim.romserve import PtyRunner
from host_tools.sim.slip import SlipDecoder, encode

pytestmark = [pytest.mark.host, pytest.mark.timeout(60)]

ESPTOOL = Path(sys.executable).with_name("esptool")
MAC = bytes.fromhex("240ac4123456")
FLASH_SIZE = 4 * 1024 * 1024
APP_AT = 0x10000
SYNC_DATA = b"\x07\x07\x12\x20" + b"\x55" * 32


class RecordingFlash(Flash):
    """The board's flash; `Flash.log` notes each erase and write that completed: (kind, address, length)."""

    def kinds(self, kind: str) -> list[tuple[int, int]]:
        return [(addr, n) for k, addr, n in self.log if k == kind]


@dataclass
class Board:
    flash: RecordingFlash
    loader: RomLoader
    runner: PtyRunner
    cwd: Path

    def esptool(self, *args: str, stub: bool = True, check: bool = True, reset: tuple[str, str] = ("no-reset", "no-reset")):
        """Run esptool against the board; the loader starts over in the ROM when `stub` is False."""
        if not stub and self.loader.stub:
            self.runner.download_boot()  # a stub left running would refuse the ROM's 8-byte SPI_ATTACH, as a chip's does
            _wait_until(lambda: not self.loader.stub)
        cmd = [str(ESPTOOL), "--port", self.runner.port, "--before", reset[0], "--after", reset[1],
               *([] if stub else ["--no-stub"]), *args]
        result = subprocess.run(cmd, cwd=self.cwd, capture_output=True, text=True, timeout=45)
        result.output = result.stdout + result.stderr
        if check:
            assert result.returncode == 0, result.output
        return result


def _wait_until(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


@pytest.fixture
def board(tmp_path):
    flash = RecordingFlash.create(tmp_path / "flash.bin", FLASH_SIZE)
    loader = RomLoader(flash, MAC)
    with PtyRunner(loader) as runner:
        yield Board(flash, loader, runner, tmp_path)
    flash.close()
    assert flash.faults == []  # strict mode: no write ever landed on unerased data


def app_bin(path: Path, size: int = 40000, seed: int = 1) -> bytes:
    """Half random, half runs of one byte (so it compresses), not starting with the image magic 0xE9."""
    rng = random.Random(seed)
    data = bytearray()
    while len(data) < size:
        data += rng.randbytes(512) if rng.random() < 0.5 else bytes([rng.randrange(256)]) * 512
    data[0] = 0x11
    path.write_bytes(bytes(data[:size]))
    return bytes(data[:size])


# --- chip detection, identity -----------------------------------------------------------------


@pytest.mark.parametrize("stub", [True, False], ids=["stub", "rom"])
def test_chip_id_and_flash_id_detect_an_esp32_with_its_mac_and_jedec_id(board, stub):
    out = board.esptool("chip-id", stub=stub).output
    assert "Detecting chip type... ESP32" in out
    assert "Chip type:          ESP32-D0WD-V3 (revision v3.0)" in out
    assert "Crystal frequency:  40MHz" in out
    assert "MAC:                24:0a:c4:12:34:56" in out
    assert ("Stub flasher running." in out) is stub
    out = board.esptool("flash-id", stub=stub).output
    assert "Manufacturer: ef" in out and "Device: 4016" in out and "Detected flash size: 4MB" in out
    out = board.esptool("read-mac", stub=stub).output
    assert out.count("MAC:                24:0a:c4:12:34:56") == 2  # once at connect, once for the command
    assert board.flash.log == []


def test_a_second_esptool_finds_the_stub_still_running(board):
    board.esptool("chip-id")
    out = board.esptool("chip-id").output
    assert "Stub flasher is already running. No upload is necessary." in out


def test_baud_change_is_acknowledged_and_the_crystal_still_reads_40mhz(board):
    out = board.esptool("--baud", "460800", "read-mac").output
    assert "Changing baud rate to 460800..." in out and "Changed." in out
    assert "MAC:                24:0a:c4:12:34:56" in out
    assert board.loader.baud == 460800
    out = board.esptool("--baud", "921600", "flash-id", stub=False).output
    assert "Crystal frequency:  40MHz" in out and "Manufacturer: ef" in out


# --- writing and reading flash ------------------------------------------------------------------


def rom_erase_area(addr: int, length: int) -> list[tuple[int, int]]:
    """esp_rom_spiflash_erase_area's steps: sectors to a 64 KiB boundary, blocks while more than 16 sectors remain, sectors."""
    sector, total = addr // 0x1000, -(-length // 0x1000)
    head = min(16 - sector % 16, total)
    steps = [(0x1000 * (sector + i), 0x1000) for i in range(head)]
    sector, total = sector + head, total - head
    while total > 16:
        steps.append((0x1000 * sector, 0x10000))
        sector, total = sector + 16, total - 16
    return steps + [(0x1000 * (sector + i), 0x1000) for i in range(total)]


def chunks(addr: int, size: int, step: int) -> list[tuple[int, int]]:
    return [(addr + i, min(step, size - i)) for i in range(0, size, step)]


SIZE = 40000
ROUND_TRIPS = {
    # (stub, write-flash option): (erases, writes) on a blank chip
    "stub-compressed": (True, [], [], chunks(APP_AT, SIZE, 0x8000)),  # blank sectors skipped; 32 KiB inflate pieces
    "stub-uncompressed": (True, ["--no-compress"], [], chunks(APP_AT, SIZE, 0x4000)),  # 16 KiB blocks
    "rom-uncompressed": (False, [], rom_erase_area(APP_AT, SIZE), chunks(APP_AT, 40 * 0x400, 0x400)),  # padded 1 KiB blocks
    "rom-compressed": (False, ["--compress"], rom_erase_area(APP_AT, 40 * 0x400), chunks(APP_AT, SIZE, 0x8000)),
}


@pytest.mark.parametrize("case", ROUND_TRIPS)
def test_write_flash_then_read_flash_round_trips_byte_for_byte(board, case):
    stub, options, erases, writes = ROUND_TRIPS[case]
    app = app_bin(board.cwd / "app.bin", SIZE)
    out = board.esptool("write-flash", *options, hex(APP_AT), "app.bin", stub=stub).output
    assert "Hash of data verified." in out
    assert board.flash.kinds("erase") == erases
    assert board.flash.kinds("write") == writes
    assert board.flash.ops == len(erases) + len(writes)
    board.esptool("read-flash", hex(APP_AT), str(SIZE), "out.bin", stub=stub)
    assert (board.cwd / "out.bin").read_bytes() == app
    assert board.flash.read(APP_AT, SIZE) == app
    assert board.flash.read(APP_AT + SIZE, 0x1000) == b"\xff" * 0x1000


def test_stub_erases_ahead_of_writes_once_it_meets_used_flash(board):
    app_bin(board.cwd / "a.bin", 0x20000, seed=1)
    b = app_bin(board.cwd / "b.bin", 0x20000, seed=2)
    board.esptool("write-flash", "0x20000", "a.bin")
    board.flash.log.clear()
    board.esptool("write-flash", "0x20000", "b.bin")
    assert board.flash.kinds("erase") == [(0x20000, 0x10000), (0x30000, 0x10000)]  # 64 KiB blocks where aligned
    first_write = next(i for i, (kind, _, _) in enumerate(board.flash.log) if kind == "write")
    assert board.flash.log[0][0] == "erase" and first_write > 0
    assert board.flash.read(0x20000, 0x20000) == b


def test_product_flags_default_reset_and_hard_reset_warn_on_a_pty_and_flash(board):
    """host_tools.device.flashing runs esptool with these; a pty has no DTR/RTS, so the board is never reset."""
    app = app_bin(board.cwd / "app.bin", SIZE)
    out = board.esptool("--baud", "460800", "write-flash", "0x10000", "app.bin", reset=("default-reset", "hard-reset")).output
    assert "Chip was NOT reset" in out and "Hash of data verified." in out
    board.esptool("erase-region", "0xd000", "0x2000", reset=("default-reset", "hard-reset"))
    assert board.flash.read(0x10000, SIZE) == app


@pytest.mark.parametrize("stub", [True, False], ids=["stub", "rom"])
def test_erase_region_leaves_ff(board, stub):
    app_bin(board.cwd / "app.bin", 0x30000)
    board.esptool("write-flash", "0x10000", "app.bin", stub=stub)
    board.flash.log.clear()
    board.esptool("erase-region", "0x11000", "0x1f000", stub=stub)  # esptool: the ROM erases at FLASH_BEGIN
    assert board.flash.read(0x11000, 0x1F000) == b"\xff" * 0x1F000
    assert board.flash.read(0x10000, 0x1000) != b"\xff" * 0x1000
    assert board.flash.read(0x30000, 0x1000) != b"\xff" * 0x1000
    stub_steps = [(0x11000 + i * 0x1000, 0x1000) for i in range(15)] + [(0x20000, 0x10000)]  # a block once aligned
    expected = stub_steps if stub else rom_erase_area(0x11000, 0x1F000)  # 31 sectors: no block while <= 16 remain
    assert board.flash.kinds("erase") == expected


def test_erase_flash_with_the_stub_and_not_with_the_rom(board):
    app_bin(board.cwd / "app.bin", SIZE)
    board.esptool("write-flash", "0x10000", "app.bin")
    refused = board.esptool("erase-flash", stub=False, check=False)
    assert refused.returncode != 0 and "ESP32 ROM does not support function erase_flash" in refused.output
    board.esptool("erase-flash")
    assert board.flash.kinds("erase")[-1] == (0, FLASH_SIZE)
    assert board.flash.read(0, FLASH_SIZE) == b"\xff" * FLASH_SIZE


@pytest.mark.parametrize("stub", [True, False], ids=["stub", "rom"])
def test_verify_flash_passes_then_fails_on_a_changed_byte(board, stub):
    app = app_bin(board.cwd / "app.bin", SIZE)
    board.esptool("write-flash", "0x10000", "app.bin", stub=stub)
    assert "Verification successful (digest matched)." in board.esptool("verify-flash", "0x10000", "app.bin", stub=stub).output
    changed = bytearray(app)
    changed[12345] ^= 0x01
    (board.cwd / "changed.bin").write_bytes(changed)
    failed = board.esptool("verify-flash", "0x10000", "changed.bin", stub=stub, check=False)
    assert failed.returncode != 0 and "Verification failed (digest mismatch)." in failed.output
    diff = board.esptool("verify-flash", "--diff", "0x10000", "changed.bin", check=False)
    assert f"{0x10000 + 12345:#010x} {app[12345]:02x} {changed[12345]:02x}" in diff.output


def test_power_cut_during_a_stub_write_tears_it_and_a_rewrite_after_reset_succeeds(board):
    (board.cwd / "esptool.cfg").write_text("[esptool]\ntimeout = 0.5\nerase_write_timeout_per_mb = 1\n")  # fail fast once the board is off
    app = app_bin(board.cwd / "app.bin", 0x18000)
    board.flash.plan = PowerPlan(cut_before=2, tear=True, seed=3)
    failed = board.esptool("write-flash", "0x10000", "app.bin", check=False)
    assert failed.returncode != 0
    assert board.loader.power_loss is not None and board.loader.power_loss.op == 2
    assert board.flash.ops == 1 and board.flash.read(0x10000, 0x8000) == app[:0x8000]
    assert board.flash.read(0x18000, 0x8000) != app[0x8000:0x10000]  # torn
    board.flash.plan = PowerPlan()
    board.runner.download_boot()  # power back on, IO0 held low
    _wait_until(lambda: board.loader.power_loss is None)
    board.esptool("write-flash", "0x10000", "app.bin")
    assert board.flash.read(0x10000, 0x18000) == app


# --- malformed input --------------------------------------------------------------------------


def command(op: int, data: bytes = b"", chk: int = 0, direction: int = 0) -> bytes:
    return encode(struct.pack("<BBHI", direction, op, len(data), chk) + data)


def data_block(payload: bytes, seq: int = 0) -> bytes:
    return struct.pack("<IIII", len(payload), seq, 0, 0) + payload


def checksum(payload: bytes) -> int:
    state = 0xEF
    for byte in payload:
        state ^= byte
    return state


def replies(raw: bytes) -> list[tuple[int, int, bytes]]:
    """(op, value, data-with-status) of each response frame."""
    out = []
    for frame in SlipDecoder(1 << 20).feed(raw):
        direction, op, size, value = struct.unpack_from("<BBHI", frame)
        assert direction == 1 and size == len(frame) - 8
        out.append((op, value, frame[8:]))
    return out


def started_stub(loader: RomLoader) -> None:
    raw = loader.feed(command(MEM_BEGIN, struct.pack("<IIII", 4, 1, 0x1800, 0x40080000)))
    raw += loader.feed(command(MEM_DATA, data_block(b"stub"), checksum(b"stub")))
    raw += loader.feed(command(MEM_END, struct.pack("<II", 0, 0x40080000)))
    assert raw.endswith(encode(b"OHAI")) and loader.stub


@pytest.fixture
def loader(tmp_path):
    flash = Flash.create(tmp_path / "flash.bin", 256 * 1024)
    yield RomLoader(flash, MAC)
    flash.close()


def test_rom_replies_carry_four_status_bytes_and_rom_error_codes(loader):
    assert replies(loader.feed(command(SYNC, SYNC_DATA))) == [(SYNC, 0x20120707, bytes(4))] * 8
    assert replies(loader.feed(command(READ_REG, struct.pack("<I", 0x40001000)))) == [(READ_REG, 0x00F01D83, bytes(4))]
    assert replies(loader.feed(command(0x14))) == [(0x14, 0, b"\x01\x05\x00\x00")]  # no GET_SECURITY_INFO on the ESP32 ROM
    assert replies(loader.feed(command(READ_FLASH, bytes(16)))) == [(READ_FLASH, 0, b"\x01\x05\x00\x00")]  # stub only
    assert replies(loader.feed(command(FLASH_BEGIN, struct.pack("<IIII", 0x1000, 1, 0x400, 0x40000)))) == [
        (FLASH_BEGIN, 0, b"\x01\x06\x00\x00")]  # past the chip (the ROM's default 2 MiB is more than this 256 KiB flash)
    assert replies(loader.feed(command(FLASH_BEGIN, struct.pack("<IIII", 0x1000, 1, 0x400, 0x1000)))) == [
        (FLASH_BEGIN, 0, bytes(4))]
    payload = b"\x42" * 0x400
    bad_sum = replies(loader.feed(command(FLASH_DATA, data_block(payload), checksum(payload) ^ 1)))
    assert bad_sum == [(FLASH_DATA, 0, b"\x01\x07\x00\x00")]
    assert replies(loader.feed(command(FLASH_DATA, data_block(payload)[:-1] + b"", checksum(payload)))) == [
        (FLASH_DATA, 0, b"\x01\x05\x00\x00")]  # size field says 0x400, 0x3ff bytes follow
    assert replies(loader.feed(command(FLASH_DATA, data_block(payload), checksum(payload)))) == [(FLASH_DATA, 0, bytes(4))]
    md5 = replies(loader.feed(command(SPI_FLASH_MD5, struct.pack("<IIII", 0x1000, 0x400, 0, 0))))
    assert md5 == [(SPI_FLASH_MD5, 0, hashlib.md5(payload).hexdigest().encode() + bytes(4))]
    assert loader.flash.read(0x1000, 0x400) == payload


def test_stub_replies_carry_two_byte_codes(loader):
    started_stub(loader)
    assert replies(loader.feed(command(SYNC, SYNC_DATA))) == [(SYNC, 0, bytes(2))] * 8  # value 0: "stub running"
    assert replies(loader.feed(command(CHANGE_BAUDRATE, struct.pack("<II", 921600, 115200)))) == [(CHANGE_BAUDRATE, 0, bytes(2))]
    assert loader.baud == 921600
    assert replies(loader.feed(command(FLASH_DATA, data_block(b"x")))) == [(FLASH_DATA, 0, b"\xc6\x00")]  # not in flash mode
    loader.feed(command(FLASH_DEFL_BEGIN, struct.pack("<IIII", 4, 1, 0x4000, 0x2000)))
    payload = b"\x00" * 8
    assert replies(loader.feed(command(0x11, data_block(payload), checksum(payload) ^ 1))) == [(0x11, 0, b"\xc1\x00")]
    assert replies(loader.feed(command(0x11, data_block(payload), checksum(payload)))) == [(0x11, 0, bytes(2))]
    # that block was not zlib: the inflate error comes back on the next command, which is not run
    assert replies(loader.feed(command(READ_REG, struct.pack("<I", 0x40001000)))) == [(READ_REG, 0, b"\xc7\x00")]
    assert replies(loader.feed(command(READ_REG, b"\x00"))) == [(READ_REG, 0, b"\xc0\x00")]  # bad length
    assert replies(loader.feed(command(READ_REG, struct.pack("<I", 0), direction=1))) == [(READ_REG, 0, b"\xc3\x00")]
    md5 = replies(loader.feed(command(SPI_FLASH_MD5, struct.pack("<IIII", 0, 0x100, 0, 0))))
    assert md5 == [(SPI_FLASH_MD5, 0, hashlib.md5(b"\xff" * 0x100).digest() + bytes(2))]


def test_stub_read_flash_streams_acked_packets_then_the_md5(loader):
    loader.flash.erase(0, 0x1000)
    loader.flash.write(0, bytes(range(256)) * 16)
    started_stub(loader)
    raw = loader.feed(command(READ_FLASH, struct.pack("<IIII", 0, 0x1800, 0x1000, 64)))
    frames = SlipDecoder(1 << 20).feed(raw)
    assert frames[0] == struct.pack("<BBHI", 1, READ_FLASH, 2, 0) + bytes(2)
    assert frames[1:] == [bytes(range(256)) * 16]  # one packet in flight until esptool acks it
    frames = SlipDecoder(1 << 20).feed(loader.feed(encode(struct.pack("<I", 0x1000))))
    assert frames == [b"\xff" * 0x800]
    frames = SlipDecoder(1 << 20).feed(loader.feed(encode(struct.pack("<I", 0x1800))))
    assert frames == [hashlib.md5(bytes(range(256)) * 16 + b"\xff" * 0x800).digest()]
    assert replies(loader.feed(command(SYNC, SYNC_DATA)))[0] == (SYNC, 0, bytes(2))  # back to commands


def test_truncated_garbage_and_oversized_frames_get_nothing_or_an_error(loader):
    assert loader.feed(b"\x00\x01garbage outside any frame\xff") == b""
    assert loader.feed(encode(b"\x00\x08\x24")) == b""  # shorter than a header
    assert loader.feed(command(SYNC, SYNC_DATA)[:20]) == b""  # a frame cut off: waits for the rest
    assert replies(loader.feed(b"\xc0")) == [(SYNC, 0, b"\x01\x05\x00\x00")]  # closed short: "bad message"
    assert loader.feed(encode(b"\x00" * 0x5000)) == b""  # longer than the receive buffer
    assert loader.feed(b"\xc0\x00\x08\xdb\x01\xc0") == b""  # invalid escape
    assert len(replies(loader.feed(command(SYNC, SYNC_DATA)))) == 8  # still answering


@pytest.mark.parametrize("stub", [False, True], ids=["rom", "stub"])
def test_fuzzed_input_never_raises_and_every_reply_is_well_formed(loader, stub):
    if stub:
        started_stub(loader)
    rng = random.Random(1234 + stub)
    ops = [0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0x13, 0x14,
           0xD1, 0xD2, 0xD3, 0x00, 0xFF]
    for _ in range(1500):
        roll = rng.random()
        if roll < 0.3:
            chunk = rng.randbytes(rng.randrange(1, 64))
        else:
            op = rng.choice(ops)
            words = [rng.choice([0, 1, 4, 0x400, 0x1000, 0x3F000, 0x40000, 0xFFFFFFFF, rng.randrange(1 << 32)])
                     for _ in range(rng.randrange(0, 6))]
            data = struct.pack(f"<{len(words)}I", *words) + rng.randbytes(rng.randrange(0, 40))
            chunk = command(op, data, rng.randrange(256), direction=0 if roll < 0.95 else 1)
            if rng.random() < 0.1:
                chunk = chunk[: rng.randrange(len(chunk))]
        out = loader.feed(chunk)
        for frame in SlipDecoder(1 << 20).feed(out):
            response = len(frame) >= 10 and frame[0] == 1 and struct.unpack_from("<H", frame, 2)[0] == len(frame) - 8
            assert response or frame == b"OHAI" or loader.stub  # the stub also streams READ_FLASH packets and digests
        if loader.power_loss or loader.exit:
            loader.reset()
    loader.reset()
    assert len(replies(loader.feed(command(SYNC, SYNC_DATA)))) == 8


def test_garbage_on_the_pty_never_kills_the_runner(board):
    with serial.Serial(board.runner.port, 115200, timeout=0.5) as port:
        port.reset_input_buffer()
        port.write(bytes(range(256)) * 4)  # noise, including stray C0/DB bytes
        port.write(command(FLASH_DATA, data_block(b"abcd"), 0))  # bad checksum, and not in flash mode
        port.write(command(SYNC, SYNC_DATA)[:15])  # truncated: the END never comes ...
        port.write(b"\xc0")  # ... until this one, which closes it malformed
        time.sleep(0.3)
        junk = port.read(4096)
        for _op, _value, status in replies(junk):
            assert status[0] != 0  # each frame that got an answer got an error
        port.write(command(SYNC, SYNC_DATA))
        answer = b""
        end = time.monotonic() + 5
        while answer.count(b"\xc0") < 16 and time.monotonic() < end:
            answer += port.read(256)
        assert replies(answer) == [(SYNC, 0x20120707, bytes(4))] * 8
    assert "Detecting chip type... ESP32" in board.esptool("chip-id").output


# --- RFC 2217: esptool's reset lines reach the board ---------------------------------------------


@pytest.mark.timeout(120)
def test_esptool_over_rfc2217_resets_into_download_mode_and_hard_resets_into_the_app(tmp_path):
    """The product's own detection command (host_tools.device.flashing): default-reset, hard-reset, 460800 baud.
    RFC 2217 through pyserial costs ~0.2 s a command (it renegotiates the port settings whenever esptool
    changes its read timeout), so this is one short command."""
    flash = Flash.create(tmp_path / "flash.bin", FLASH_SIZE)
    resets: list[bool] = []
    with Rfc2217Server(RomLoader(flash, MAC), on_reset=resets.append) as server:
        assert not server.download  # the app runs
        cmd = [str(ESPTOOL), "--port", server.url, "--baud", "460800", "--before", "default-reset", "--after", "hard-reset", "chip-id"]
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=100)
        _wait_until(lambda: resets and resets[-1] is False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Detecting chip type... ESP32" in result.stdout and "MAC:                24:0a:c4:12:34:56" in result.stdout
        assert "Hard resetting via RTS pin..." in result.stdout and "NOT reset" not in result.stdout + result.stderr
        assert resets[0] is True and resets[-1] is False and not server.download
    flash.close()


@pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")  # pyserial 3.5 rfc2217 client
def test_opening_the_port_resets_nothing_and_app_bytes_pass_both_ways(tmp_path):
    flash = Flash.create(tmp_path / "flash.bin", 64 * 1024)
    got, resets = [], []
    with Rfc2217Server(RomLoader(flash, MAC), on_reset=resets.append, app_input=got.append) as server:
        with serial.serial_for_url(server.url, baudrate=115200, timeout=2) as port:  # pyserial asserts DTR, then RTS
            port.write(b"print(1)\r\n")
            _wait_until(lambda: b"".join(got) == b"print(1)\r\n")
            server.send(b"1\r\n>>> \xff")
            assert port.read(8) == b"1\r\n>>> \xff"
            server.reset(download=True)  # the supervisor powers the board on with IO0 held low
            assert port.read(len(DOWNLOAD_BOOT_TEXT)) == DOWNLOAD_BOOT_TEXT
            port.write(command(SYNC, SYNC_DATA))
            answer = port.read(8 * 14)
            assert replies(answer) == [(SYNC, 0x20120707, bytes(4))] * 8
        assert resets == [] and server.download
    flash.close()


def test_reset_circuit_boots_on_en_settled_high_sampling_io0():
    circuit = ResetCircuit()
    assert circuit.set_lines(True, True, 0.0) is None and circuit.deadline() is None  # both asserted: neither pin moves
    assert circuit.set_lines(False, True, 1.0) is None and circuit.in_reset  # EN low
    circuit.set_lines(True, False, 1.1)  # IO0 low and EN released together (the atomic step)
    assert circuit.boot(1.1 + EN_SETTLE / 2) is None
    assert circuit.boot(1.1 + EN_SETTLE) is True and not circuit.in_reset
    circuit.set_lines(False, True, 2.0)
    circuit.set_lines(False, False, 2.1)  # hard reset: EN released with IO0 high
    assert circuit.set_lines(False, False, 2.2) is False  # a later change reports the boot that happened first
    circuit.set_lines(False, True, 3.0)
    circuit.set_lines(True, True, 3.1)  # EN high for less than EN_SETTLE...
    circuit.set_lines(False, True, 3.1 + EN_SETTLE / 2)  # ...is not a boot
    assert circuit.boot(4.0) is None and circuit.in_reset


# --- SLIP and the boot text -------------------------------------------------------------------


def test_slip_escapes_at_frame_boundaries_and_splits_anywhere():
    frames = [b"\xc0", b"\xdb", b"\xc0\xdb\xdb\xc0", b"plain", b"\x00\xdb\xdc\xdd\xc0\xc0"]
    wire = b"".join(encode(f) for f in frames)
    assert wire.startswith(b"\xc0\xdb\xdc\xc0")
    for cut in range(len(wire) + 1):  # every split, including between DB and its code byte
        decoder = SlipDecoder(64)
        assert decoder.feed(wire[:cut]) + decoder.feed(wire[cut:]) == frames
    decoder = SlipDecoder(64)
    assert [f for b in wire for f in decoder.feed(bytes([b]))] == frames  # one byte at a time


def test_slip_drops_what_the_chip_drops():
    decoder = SlipDecoder(8)
    assert decoder.feed(b"noise\xc0\xc0\xc0ok\xc0") == [b"ok"]  # bytes before a frame, empty gaps
    assert decoder.feed(b"between\xc0a\xdb\x00b\xc0\xc0c\xc0") == [b"c"]  # bad escape: that frame only
    assert decoder.feed(b"\xc0" + b"x" * 9 + b"\xc0\xc0y\xc0") == [b"y"]  # over max_frame
    assert decoder.feed(b"\xc0\xdb\xdb\xdc\xc0\xc0z\xc0") == [b"z"]  # DB DB is not an escape
    assert decoder.feed(b"\xc0abc\xdb") == [] and decoder.feed(b"\xc0\xc0d\xc0") == [b"d"]  # DB then END: dropped


def test_download_boot_text_is_what_esptool_looks_for():
    found = re.search(b"boot:(0x[0-9a-fA-F]+)(.*waiting for download)?", DOWNLOAD_BOOT_TEXT, re.DOTALL)
    assert found and found.group(1) == b"0x3" and found.group(2) is not None
    assert DOWNLOAD_BOOT_TEXT.startswith(b"ets Jun  8 2016 00:22:57\r\n") and DOWNLOAD_BOOT_TEXT.endswith(b"\r\n")
