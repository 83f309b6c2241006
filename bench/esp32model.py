"""How long an update would take on an ESP32: a time model the transport benches print beside their host figures.

    model = Esp32Model.measure(interpreter_path)   # this host's pystone rate under micropython, once per bench
    sampler = CpuSampler(run)                       # the board process's CPU seconds, sampled while it runs
    ...
    est = model.update(cpu_s, image_size, link_bytes, round_trips, link)
    print(est.line())

Three parts, added up (an ESP32 stalls its CPU while it erases or writes flash):

1. **CPU.** The board's micropython process CPU time (user + system, /proc/PID/stat) over the update,
   times `host pystones / ESP32 pystones`. The ESP32 figure is the published one: 1,661 pystones/s,
   `pystone_lowmem` on MicroPython v1.12, ESP32 at 240 MHz (micropython/micropython#5673; a regressed
   build in the same report got 499). The host figure is measured here with the same benchmark
   (bench/vendor/pystone_lowmem.py, from PyPI micropython-pystone_lowmem 3.4.2-4, the package that
   report installed), as CPU time of the interpreter, median of three runs. For scale: the unix port on a
   2018 PC did 81,433/s (micropython/micropython#4268), i.e. 49x an ESP32. One factor is applied to all of
   the device's CPU time, bytecode and C alike (deflate, SHA-256, memcpy): C on the ESP32 is relatively
   faster than that, so CPU-heavy native work is overestimated (SHA-256 has a hardware floor of 8 MB/s).
2. **Flash** at ESP-IDF's performance-test floors for the ESP32 (components/idf_test/include/esp32/
   idf_performance_target.h: erase 45.3 KB/s, 2 KB writes 754 KB/s, 2 KB reads 6.65 MB/s; about 70 % of
   measured averages, so this is the slow end): one erase per 4 KiB sector of the image, every byte
   written once and read back once (the digest is taken from flash).
3. **Link**: bytes on the wire at the link rate (plus 40 B of TCP/IP per 1460 B segment, or the datagram
   overhead the bench passes in) and one round-trip time per lock-step exchange. Wi-Fi: 20 Mbit/s, the
   in-air iperf TCP RX figure for the ESP32 (ESP-IDF docs/en/api-guides/wifi.rst); RTT 20 ms is an
   assumption (a server across the internet), not a measurement. Slow link: 30 kbit/s with a 1 s RTT,
   an NB-IoT-like profile stated here, not a measured one.

`serial` adds the three; `overlapped` is max(link, CPU + flash): what a transport that keeps the link busy
while the device writes flash could reach (lwIP's receive window bounds that on a real board).
Sources are listed with their figures in shared/reference/throughput-and-delta.md sections 1 and 3.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ESP32_PYSTONES = 1661  # pystone_lowmem, MicroPython v1.12, ESP32 at 240 MHz (micropython/micropython#5673)
ERASE_BPS = 45_300  # IDF perf-test floors, ESP32 (idf_performance_target.h)
WRITE_BPS = 754_000
READ_BPS = 6_650_000
SECTOR = 4096
TCP_MSS, TCP_IP_HEADERS = 1460, 40

VENDOR = Path(__file__).resolve().parent / "vendor"


@dataclass(frozen=True)
class Link:
    name: str
    bits_per_s: float
    rtt_s: float

    def label(self) -> str:
        rate = f"{self.bits_per_s / 1e6:g} Mbit/s" if self.bits_per_s >= 1e6 else f"{self.bits_per_s / 1e3:g} kbit/s"
        return f"{self.name} ({rate}, RTT {self.rtt_s * 1000:g} ms)"


WIFI = Link("Wi-Fi", 20e6, 0.020)
SLOW = Link("slow link", 30e3, 1.0)
LINKS = (WIFI, SLOW)


def tcp_bytes(payload_bytes: float) -> float:
    """Bytes on the wire for a TCP byte stream: IPv4 + TCP headers per full segment."""
    return payload_bytes * (TCP_MSS + TCP_IP_HEADERS) / TCP_MSS


def flash_s(image_size: int) -> float:
    """Erase, write and read back an image at the IDF floors."""
    sectors = -(-image_size // SECTOR)
    return sectors * SECTOR / ERASE_BPS + image_size / WRITE_BPS + image_size / READ_BPS


@dataclass(frozen=True)
class Estimate:
    cpu_s: float  # scaled to the ESP32
    flash_s: float
    link_s: float
    link: Link

    @property
    def serial(self) -> float:
        return self.cpu_s + self.flash_s + self.link_s

    @property
    def overlapped(self) -> float:
        return max(self.link_s, self.cpu_s + self.flash_s)

    def line(self) -> str:
        return (f"{self.serial:8.1f} s serial ({self.overlapped:.1f} s overlapped): CPU {self.cpu_s:.1f} + "
                f"flash {self.flash_s:.1f} + link {self.link_s:.1f} on {self.link.label()}")


@dataclass(frozen=True)
class Esp32Model:
    host_pystones: float

    @property
    def factor(self) -> float:
        """How many times longer the ESP32 takes for the same interpreter work."""
        return self.host_pystones / ESP32_PYSTONES

    @classmethod
    def measure(cls, micropython: str, loops: int = 100_000, repeat: int = 3) -> Esp32Model:
        """Pystones per CPU second of `micropython` on this host (median of `repeat`, start-up subtracted)."""
        rates = []
        for _ in range(repeat):
            busy = _cpu_of([micropython, "-c", f"import pystone_lowmem as p; p.pystones({loops})"])
            idle = _cpu_of([micropython, "-c", "import pystone_lowmem"])
            rates.append(loops / max(busy - idle, 1e-3))
        return cls(statistics.median(rates))

    def describe(self) -> str:
        return (f"ESP32 model: device CPU x {self.factor:.0f} (this host {self.host_pystones:,.0f} pystones per CPU s under "
                f"micropython, median of 3; ESP32 240 MHz {ESP32_PYSTONES:,}/s, micropython#5673), flash at ESP-IDF's "
                f"test floors, see bench/esp32model.py")

    def update(self, device_cpu_s: float, image_size: int, wire_bytes: float, round_trips: float, link: Link) -> Estimate:
        """An update: `device_cpu_s` measured on this host, `wire_bytes` to the device, `round_trips` in lock-step."""
        link_s = wire_bytes * 8 / link.bits_per_s + round_trips * link.rtt_s
        return Estimate(device_cpu_s * self.factor, flash_s(image_size), link_s, link)


def _cpu_of(cmd: list[str]) -> float:
    env = dict(os.environ, MICROPYPATH=str(VENDOR))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (proc(5): fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """The CPU time of a virtual board's micropython process, sampled every `period` seconds from a thread
    (the process is replaced at every reset, so samples carry its pid)."""

    def __init__(self, run, period: float = 0.02) -> None:
        self.run = run
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(period,), daemon=True)
        self._thread.start()

    def _loop(self, period: float) -> None:
        while not self._stop.wait(period):
            pid = self.run.pid
            if pid is None:
                continue
            try:
                self.samples.append((time.monotonic(), pid, proc_cpu_s(pid)))
            except (OSError, ValueError, IndexError):  # the process just ended
                pass

    def between(self, t0: float, t1: float) -> float:
        """CPU seconds the process running at `t0` used until `t1` (or until it ended, if sooner)."""
        after = [s for s in self.samples if s[0] >= t0]
        if not after:
            return 0.0
        _, pid, c0 = after[0]
        last = [c for t, p, c in after if p == pid and t <= t1]
        return (last[-1] - c0) if last else 0.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
