"""The virtual board's RTC, kept by the supervisor: the ESP32 port's epoch, unset at power-on.

ESP-IDF's system time (what `time.time()` and `machine.RTC()` read on the ESP32 port) runs
on the RTC timer, which "keeps the system time during any resets and sleep modes; only the
power-up reset resets the RTC timer" (ESP-IDF "System Time"). MicroPython's ESP32 port reads
it as seconds since 2000-01-01 (MICROPY_EPOCH_IS_2000). So a board's clock:

- reads its epoch plus the time since power-on until something sets it (NTP, RTC.datetime);
- keeps what was set across soft and hard resets, the watchdog, panics and deep sleep;
- forgets it when power goes (power_on() after a cut or power_off()).

The board process holds the RTC as an offset from the host's CLOCK_REALTIME (FOTA_SIM_RTC_NS)
and reports a set over the bus (OP_RTC_SET); host_tools/sim/board/_simclock.py is the other
half. The epoch is the board's config.json "epoch" (2000, as on a chip, or 1970, as on the
Unix port); "ntp_port" is the loopback port the board's ntptime uses for NTP's port 123.

    run = BoardRun(board)
    run.clock.ntp_port = server.port   # before start(): where the board's NTP queries go
    run.clock.unix_time()              # what the board's clock says, in Unix seconds
"""

from __future__ import annotations

import time

UNIX_AT_2000 = 946684800  # 2000-01-01T00:00:00Z in Unix seconds
EPOCHS = (2000, 1970)


class ChipClock:
    def __init__(self, epoch: int = 2000, ntp_port: int | None = None) -> None:
        if epoch not in EPOCHS:
            raise ValueError(f"epoch must be one of {EPOCHS}, not {epoch!r}")
        self.epoch = epoch
        self.ntp_port = ntp_port
        self.offset_ns = 0  # device ns since its epoch = host CLOCK_REALTIME ns + offset_ns
        self.power_on()

    @classmethod
    def of(cls, config: dict) -> ChipClock:
        return cls(int(config.get("epoch", 2000)), config.get("ntp_port"))

    @property
    def shift(self) -> int:
        """Unix seconds at the board's epoch."""
        return UNIX_AT_2000 if self.epoch == 2000 else 0

    def power_on(self) -> None:
        """Power-up reset: the RTC timer starts again from 0 (the epoch)."""
        self.offset_ns = -time.time_ns()

    def set(self, seconds: int, usec: int = 0) -> None:
        """settimeofday() on the board: it reads `seconds` (device epoch) now."""
        self.offset_ns = seconds * 1_000_000_000 + usec * 1000 - time.time_ns()

    def set_unix(self, unix_seconds: float) -> None:
        """Set the board's clock from the bench (as a battery-backed RTC or an earlier NTP sync would)."""
        ns = int(unix_seconds * 1_000_000_000) - self.shift * 1_000_000_000
        self.offset_ns = ns - time.time_ns()

    def device_time(self) -> float:
        """What `time.time()` on the board returns now (seconds since its epoch)."""
        return (time.time_ns() + self.offset_ns) / 1e9

    def unix_time(self) -> float:
        return self.device_time() + self.shift

    def env(self) -> dict[str, str]:
        env = {"FOTA_SIM_EPOCH": str(self.epoch), "FOTA_SIM_RTC_NS": str(self.offset_ns)}
        if self.ntp_port:
            env["FOTA_SIM_NTP_PORT"] = str(self.ntp_port)
        return env
