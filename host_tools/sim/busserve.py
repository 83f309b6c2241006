"""The board bus: the requests the micropython process makes of its chip, and their answers.

The board's modules (host_tools/sim/board: esp32.Partition, machine, network) reach the flash, the
watchdog, resets and the link through a socket the supervisor gives the process (FOTA_SIM_BUS): a
request is `REQ` (op, a, b) plus b bytes for OP_WRITE; the answer `RSP` (status, length) plus data.
`BusRequests` is the supervisor's side (host_tools.sim.runtime.BoardRun mixes it in): it reads the
socket, runs each operation on the board's `Flash` and state, and hands resets back to the supervisor.
"""

from __future__ import annotations

import struct
import time

from host_tools.esp import espidf
from host_tools.sim.flash import PowerLoss
from host_tools.sim.nvslog import Nvs, NvsError

OP_READ, OP_WRITE, OP_ERASE, OP_RESET, OP_WDT_ARM, OP_WDT_FEED, OP_LINK, OP_IDLE, OP_VERIFY = range(1, 10)
OP_RTC_SET = 10  # the board set its RTC (host_tools/sim/chipclock.py)
OP_READY = 11  # _boot is done: Ctrl-C may reach the interpreter from now on
OP_NVS = 12  # esp32.NVS: ESP-IDF's nvs_* in C on a chip, here in the supervisor (host_tools/sim/nvslog.py)
REQ = struct.Struct("<BII")
RSP = struct.Struct("<iI")


class BusRequests:
    """The supervisor's answers to bus requests (a mixin of BoardRun: it provides flash, clock, _bus, _console,
    _event, _power_lost and _reset_request, and sets _nvs = _new_nvs() for each process)."""

    def _on_bus(self) -> None:
        data = self._bus.recv(65536 + REQ.size)
        if not data:  # the process is exiting; its console EOF handles the rest
            self._sel.unregister(self._bus)
            return
        self._bus_buf += data
        while len(self._bus_buf) >= REQ.size:
            op, a, b = REQ.unpack_from(self._bus_buf)
            need = REQ.size + (b if op in (OP_WRITE, OP_NVS) else 0)
            if len(self._bus_buf) < need:
                return
            payload = bytes(self._bus_buf[REQ.size : need])
            del self._bus_buf[:need]
            if not self._serve(op, a, b, payload):
                return

    def _serve(self, op: int, a: int, b: int, payload: bytes) -> bool:
        """Answer one request; False when the process was ended by it."""
        try:
            reply = self._dispatch(op, a, b, payload)
        except PowerLoss as loss:
            self._power_lost(loss)
            return False
        if reply is None:
            return False
        status, body = reply
        self._bus.sendall(RSP.pack(status, len(body)) + body)
        return True

    def _dispatch(self, op, a, b, payload):
        if op == OP_READ:
            return 0, self.flash.read(a, b)
        if op == OP_WRITE:
            faults = len(self.flash.faults)
            self.flash.write(a, payload)
            if len(self.flash.faults) > faults:
                self._console(f"\r\n[sim] FLASH FAULT: {self.flash.faults[-1].message}\r\n".encode())
                self._event("flash_fault", self.flash.faults[-1].message)
            return 0, b""
        if op == OP_ERASE:
            self.flash.erase(a, b)
            return 0, b""
        if op == OP_RESET:
            return self._reset_request(a, b)
        if op == OP_WDT_ARM:
            self._wdt_timeout = a / 1000
            self._wdt_deadline = time.monotonic() + self._wdt_timeout
            return 0, b""
        if op == OP_WDT_FEED:
            if self._wdt_deadline is not None:
                self._wdt_deadline = time.monotonic() + self._wdt_timeout
            return 0, b""
        if op == OP_LINK:
            return (1 if self.link_up else 0), b""
        if op == OP_IDLE:
            self._event("idle")
            return 0, b""
        if op == OP_VERIFY:
            return self._verify_image(a, b)
        if op == OP_RTC_SET:
            self.clock.set(a, b)
            return 0, b""
        if op == OP_READY:
            self._ready = True
            return 0, b""
        if op == OP_NVS:
            try:
                out = self._nvs.request(a, payload)
            except NvsError as e:
                return -e.code, b""
            return (len(out), out) if isinstance(out, bytes) else (0, b"")
        return -0x102, b""

    def _new_nvs(self) -> Nvs:
        """The nvs partition's state for a new process (pending changes die with the last one)."""
        try:
            part = self.board.table(self.flash).find("nvs")
        except Exception:  # noqa: BLE001 - no table, or no nvs partition in it: NVS() fails as on a chip
            return Nvs(self.flash, None)
        return Nvs(self.flash, part.offset, part.size)

    def _verify_image(self, addr: int, size: int):
        def readinto(offset, buf):
            buf[:] = self.flash.read(addr + offset, len(buf))

        cfg = self.board.config
        try:
            espidf.verify_image(readinto, size, cfg["chip_id"], cfg["chip_rev"])
        except espidf.ImageInvalid as exc:
            if not self._raw_mode:  # MicroPython's main.c turns ESP-IDF's log off while the raw REPL runs
                self._console(f"E (esp_image) {exc}\r\n".encode())
            return -0x1503, b""
        return 0, b""
