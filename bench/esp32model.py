"""How long an update would take on an ESP32: a time model the transport benches print beside their host figures.

    model = Esp32Model.measure(interpreter_path)   # this host's pystone rate under micropython, once per bench
    sampler = CpuSampler(run)                       # the board process's CPU seconds, sampled while it runs
    ...
    est = model.update(cpu_s, image_size, link_bytes, round_trips, link)
    print(est.line())

Three parts, added up (an ESP32 stalls its CPU while it erases or writes flash):

1. **CPU.** The board's micropython process CPU time (the scheduler's run time, /proc/PID/task/*/schedstat) over the update,
   times `host pystones / ESP32 pystones`. The ESP32 figure is the published one: 1,661 pystones/s,
   `pystone_lowmem` on MicroPython v1.12, ESP32 at 240 MHz (micropython/micropython#5673; a regressed
   build in the same report got 499). The host figure is measured here with the same benchmark
   (bench/vendor/pystone_lowmem.py, from PyPI micropython-pystone_lowmem 3.4.2-4, the package that
   report installed), as CPU time of the interpreter, median of three runs. For scale: the unix port on a
   2018 PC did 81,433/s (micropython/micropython#4268), i.e. 49x an ESP32. That factor is for the
   interpreter; native modules are outside it (shared/reference/throughput-and-delta.md section 1). A bench
   that knows how much of the device's CPU was one bulk native job (`native_s`: the zlib decoder, uzlib in
   extmod/moddeflate.c, measured alone on the same bytes) scales that part by a native factor instead:
   `host CoreMark / ESP32 CoreMark`. The ESP32 figure is the published one for one core at 240 MHz, 494.6
   iterations/s (-O3; ochrin/coremark README, the FreeRTOS port: 2.06 CoreMark/MHz; Espressif's datasheet
   gives 504.85); the host figure is measured here with CoreMark's own sources (bench/vendor/coremark,
   eembc/coremark d5fad6b, compiled with the host's `cc -O2`), iterations per CPU second, median of three.
   These runs are shorter than CoreMark's 10 s rule, so they are a rate, not a reportable CoreMark score.
   Without a C compiler the native part keeps the interpreter's factor (an overestimate). SHA-256 is
   hardware on the chip (MicroPython's hashlib is mbedTLS there, ESP-IDF accelerates it): a bench that
   knows the bytes the device hashed (`sha`) replaces the host's CPU for them (measured alone, the same
   4 KiB updates) by those bytes at ESP-IDF's floor for hardware SHA-256 on the ESP32, 8.0 MB/s
   (idf_performance_target.h). Everything else keeps the interpreter's factor.
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
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ESP32_PYSTONES = 1661  # pystone_lowmem, MicroPython v1.12, ESP32 at 240 MHz (micropython/micropython#5673)
ESP32_COREMARK = 494.6  # CoreMark iterations/s, one ESP32 core at 240 MHz, -O3 (ochrin/coremark README)
COREMARK_SOURCES = ("core_list_join.c", "core_main.c", "core_matrix.c", "core_state.c", "core_util.c",
                    "posix/core_portme.c")
ERASE_BPS = 45_300  # IDF perf-test floors, ESP32 (idf_performance_target.h)
WRITE_BPS = 754_000
READ_BPS = 6_650_000
SHA256_BPS = 8_000_000  # hardware SHA-256 on the ESP32 at 240 MHz, IDF perf-test floor (idf_performance_target.h)
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
    host_coremark: float | None = None  # None: not measured (no C compiler), native work keeps `factor`

    @property
    def factor(self) -> float:
        """How many times longer the ESP32 takes for the same interpreter work."""
        return self.host_pystones / ESP32_PYSTONES

    @property
    def native_factor(self) -> float:
        """How many times longer the ESP32 takes for the same compiled C work."""
        return self.host_coremark / ESP32_COREMARK if self.host_coremark else self.factor

    @classmethod
    def measure(cls, micropython: str, loops: int = 100_000, repeat: int = 3, native: bool = False) -> Esp32Model:
        """Pystones per CPU second of `micropython` on this host (median of `repeat`, start-up subtracted), and
        with `native` CoreMark iterations per CPU second of this host's C compiler's code."""
        cpu = _work_cpu_s([micropython, "-c", f"import pystone_lowmem as p; p.pystones({loops})"],
                          [micropython, "-c", "import pystone_lowmem"], repeat)
        return cls(loops / max(cpu, 1e-3), host_coremark(repeat=repeat) if native else None)

    def describe(self) -> str:
        native = (f"; bulk native work x {self.native_factor:.0f} (this host {self.host_coremark:,.0f} CoreMark iterations "
                  f"per CPU s, cc -O2, median of 3; ESP32 240 MHz {ESP32_COREMARK}/s, ochrin/coremark)"
                  if self.host_coremark else "")
        return (f"ESP32 model: device CPU x {self.factor:.0f} (this host {self.host_pystones:,.0f} pystones per CPU s under "
                f"micropython, median of 3; ESP32 240 MHz {ESP32_PYSTONES:,}/s, micropython#5673){native}, flash at "
                f"ESP-IDF's test floors, see bench/esp32model.py")

    def update(self, device_cpu_s: float, image_size: int, wire_bytes: float, round_trips: float, link: Link,
               native_s: float = 0.0, sha: tuple[float, int] = (0.0, 0)) -> Estimate:
        """An update: `device_cpu_s` measured on this host, of which `native_s` was one bulk native job and
        `sha` = (host seconds, bytes) SHA-256; `wire_bytes` to the device, `round_trips` in lock-step."""
        native_s = min(native_s, device_cpu_s)
        sha_s = min(sha[0], device_cpu_s - native_s)
        cpu_s = ((device_cpu_s - native_s - sha_s) * self.factor + native_s * self.native_factor
                 + sha[1] / SHA256_BPS)
        link_s = wire_bytes * 8 / link.bits_per_s + round_trips * link.rtt_s
        return Estimate(cpu_s, flash_s(image_size), link_s, link)


def host_coremark(repeat: int = 3, iterations: int = 30_000) -> float | None:
    """CoreMark iterations per CPU second on this host (bench/vendor/coremark built with `cc -O2`; start-up
    subtracted; median of `repeat`), or None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = VENDOR / "coremark"
    with tempfile.TemporaryDirectory() as tmp:
        exe = str(Path(tmp) / "coremark")
        subprocess.run([cc, "-O2", f"-I{src}", f"-I{src / 'posix'}", "-DPERFORMANCE_RUN=1", '-DFLAGS_STR="-O2"',
                        *(str(src / f) for f in COREMARK_SOURCES), "-o", exe, "-lrt"], check=True)
        args = ["0x0", "0x0", "0x66"]  # CoreMark's performance-run seeds (its Makefile's PORT_PARAMS)
        cpu = _work_cpu_s([exe, *args, str(iterations), "7", "1", "2000"], [exe, *args, "1", "7", "1", "2000"], repeat)
    return (iterations - 1) / max(cpu, 1e-3)


def inflate_cpu_s(micropython: str, stream: bytes, wbits: int, repeat: int = 3) -> float:
    """CPU seconds `micropython`'s deflate.DeflateIO (uzlib, C) takes to inflate the zlib `stream` alone, read out
    in 4 KiB steps as the agent's writer takes it (median of `repeat`, the same script without the inflate subtracted):
    the native part of a zlib update's device CPU."""
    script = ("import deflate, io\nf = open({path!r}, 'rb')\ndata = f.read()\nbuf = bytearray(4096)\nif {run}:\n"
              "    d = deflate.DeflateIO(io.BytesIO(data), deflate.ZLIB, {wbits})\n"
              "    while d.readinto(buf):\n        pass\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "stream.z")
        Path(path).write_bytes(stream)
        return _work_cpu_s([micropython, "-c", script.format(path=path, run=True, wbits=wbits)],
                           [micropython, "-c", script.format(path=path, run=False, wbits=wbits)], repeat)


def sha256_cpu_s(micropython: str, nbytes: int, repeat: int = 3) -> float:
    """CPU seconds `micropython`'s hashlib.sha256 takes over `nbytes` in 4 KiB updates (median of `repeat`, the
    same script without the hashing subtracted): what the model replaces by the chip's hardware rate."""
    script = ("import hashlib\nbuf = bytearray(4096)\nh = hashlib.sha256()\nfor i in range({n}):\n"
              "    {op}\nh.digest()\n")
    n = -(-nbytes // 4096)
    return _work_cpu_s([micropython, "-c", script.format(n=n, op="h.update(buf)")],
                       [micropython, "-c", script.format(n=n, op="pass")], repeat)


def _work_cpu_s(busy: list[str], idle: list[str], repeat: int) -> float:
    """The median over `repeat` rounds of the CPU seconds `busy` took beyond `idle` (the same start-up
    without the work)."""
    return statistics.median(max(_cpu_of(busy) - _cpu_of(idle), 0.0) for _ in range(repeat))


def _cpu_of(cmd: list[str]) -> float:
    env = dict(os.environ, MICROPYPATH=str(VENDOR))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of a running process, all its threads: the nanosecond run time the scheduler keeps
    (/proc/PID/task/TID/schedstat, first field; Documentation/scheduler/sched-stats.rst). /proc/PID/stat's
    utime and stime (proc(5): fields 14 and 15) count clock ticks, 10 ms here, too coarse for the differences
    the benches take; they are the fallback on a kernel without schedstat. Threads that ended are not counted
    (a board's interpreter runs one)."""
    try:
        return sum(task_cpu_s(pid, tid) for tid in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        if os.path.exists(f"/proc/{pid}"):
            return stat_cpu_s(pid)
        raise


def task_cpu_s(pid: int, tid: int | str) -> float:
    """CPU seconds of one thread of a running process, in nanoseconds' resolution (see proc_cpu_s)."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def stat_cpu_s(pid: int) -> float:
    """CPU seconds of a running process in clock ticks (proc(5), /proc/PID/stat fields 14 and 15), its
    threads that ended included, which schedstat's per-thread figures lose: for long spans of a threaded process."""
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
