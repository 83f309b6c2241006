"""The board's UART as a chip's: cooked line ends, the ESP32 port's banner and identity.

On a chip every `\\n` that print() or a traceback sends goes out as `\\r\\n`
(shared/runtime/stdout_helpers.c), and the REPL's own `\\r\\n` stays as it is;
the Unix port sends bare `\\n`. `Uart.cook()` turns the process's output into a
chip's: a `\\n` not already after `\\r` gains one, and the Unix banner line
becomes the ESP32 port's. The identity facts (`IDENTITY`) are passed to the
board's `_identity` module, so the banner, `sys.version` and `os.uname()`
agree (shared/reference/esp32-board-front-end.md section 3).

    uart = Uart()
    wire_bytes = uart.cook(process_output)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LONE_LF = re.compile(rb"(?<!\r)\n")
_BANNER = re.compile(rb"MicroPython \S+ on (\S+); [^\r\n]*")


@dataclass(frozen=True)
class Identity:
    """What the ESP32 port of MicroPython v1.28.0 reports (ESP32_GENERIC, or its OTA variant)."""

    release: str = "1.28.0"
    machine: str = "Generic ESP32 module with ESP32"
    build: str = "ESP32_GENERIC"
    mpy: int = 6 | (3 | 10 << 2) << 8  # .mpy 6.3, arch xtensawin: 11014

    def env(self) -> dict[str, str]:
        return {"FOTA_SIM_VERSION": self.release, "FOTA_SIM_MACHINE": self.machine, "FOTA_SIM_BUILD": self.build,
                "FOTA_SIM_MPY": str(self.mpy)}

    def banner(self, date: bytes) -> bytes:
        return b"MicroPython v%s on %s; %s" % (self.release.encode(), date, self.machine.encode())


IDENTITY = Identity()


class Uart:
    """Stateful cooking of one boot's console output (a banner may arrive split across reads)."""

    def __init__(self, identity: Identity = IDENTITY) -> None:
        self.identity = identity
        self._last = b""
        self._held = b""

    def cook(self, data: bytes) -> bytes:
        data = self._held + data
        self._held = b""
        start = data.rfind(b"MicroPython ")
        if start != -1 and b"\n" not in data[start:]:
            data, self._held = data[:start], data[start:]  # a banner line still coming
        data = _BANNER.sub(lambda m: self.identity.banner(m.group(1)), data)
        out = _LONE_LF.sub(b"\r\n", data)
        if data[:1] == b"\n" and self._last == b"\r":
            out = out[1:]  # the \r came at the end of the previous read
        if data:
            self._last = data[-1:]
        return out
