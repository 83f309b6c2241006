"""A RomLoader on a real serial endpoint: a pseudo-terminal, served by a thread.

esptool opens the pty's slave side like a USB-UART (`--port /dev/pts/N`). A pty carries no DTR/RTS,
so esptool warns "Chip was NOT reset" for `--before default-reset` / `--after hard-reset` and talks
to whatever runs: the board has to be in download mode already, as this runner puts it.

    with PtyRunner(RomLoader(flash, mac)) as runner:
        subprocess.run(["esptool", "--port", runner.port, "--before", "no-reset", "--after", "no-reset", "flash-id"])
"""

from __future__ import annotations

import errno
import os
import queue
import selectors
import termios
import threading
import tty
from collections.abc import Callable

from host_tools.sim.romloader import DOWNLOAD_BOOT_TEXT, RomLoader

_BAUDS = {getattr(termios, f"B{rate}"): rate for rate in (
    1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600,
    1000000, 1152000, 1500000, 2000000, 2500000, 3000000, 3500000, 4000000) if hasattr(termios, f"B{rate}")}


class PtyRunner:
    """Serves `loader` on a new pty until `stop()`; `port` is the path esptool opens.

    `on_stop(loader)` is called (from the runner's thread) once the loader stops answering: the ROM was
    told to leave download mode (`loader.exit`) or power was cut (`loader.power_loss`)."""

    def __init__(self, loader: RomLoader, *, on_stop: Callable[[RomLoader], None] | None = None) -> None:
        self.loader = loader
        self.on_stop = on_stop
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo of what the board sends before esptool opens the port
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._out = bytearray()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=f"romloader {self.port}", daemon=True)

    def __enter__(self) -> PtyRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, boot_text: bool = True) -> None:
        """Start serving; with `boot_text` the ROM's download-mode text goes out first."""
        if boot_text:
            self._out += DOWNLOAD_BOOT_TEXT
        self._thread.start()

    def download_boot(self) -> None:
        """The chip was reset into download mode: the ROM starts over and prints its boot text (thread-safe)."""
        def boot() -> None:
            self.loader.reset()
            self._out += DOWNLOAD_BOOT_TEXT
        self._call(boot)

    def stop(self) -> None:
        """Stop the thread and close the pty (the slave side gets EOF/EIO)."""
        if self._thread.is_alive():
            self._call(lambda: setattr(self, "_stopping", True))
            self._thread.join(timeout=5)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._master = self._slave = self._wake_r = self._wake_w = -1

    def _call(self, fn: Callable[[], None]) -> None:
        self._calls.put(fn)
        os.write(self._wake_w, b"\0")

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ)
            sel.register(self._master, selectors.EVENT_READ)
            stopped = False
            while not self._stopping:
                sel.modify(self._master, selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0))
                for key, mask in sel.select():
                    if key.fd == self._wake_r:
                        os.read(self._wake_r, 512)
                        while not self._calls.empty():
                            self._calls.get()()
                    elif mask & selectors.EVENT_READ:
                        self._receive()
                    if self._out and mask & selectors.EVENT_WRITE:
                        self._send()
                done = self.loader.exit is not None or self.loader.power_loss is not None
                if done and not stopped and self.on_stop is not None:
                    self.on_stop(self.loader)
                stopped = done

    def _receive(self) -> None:
        try:
            data = os.read(self._master, 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: no process has the slave open (we keep it open, so only during close)
            if exc.errno != errno.EIO:
                raise
            return
        self.loader.baud = self._line_baud()
        self._out += self.loader.feed(data)

    def _send(self) -> None:
        try:
            sent = os.write(self._master, self._out)
        except BlockingIOError:
            return
        del self._out[:sent]

    def _line_baud(self) -> int:
        # The rate esptool set on its end (the ROM auto-bauds to it; esptool reads it back through UART_CLKDIV).
        try:
            return _BAUDS.get(termios.tcgetattr(self._slave)[5], self.loader.baud)
        except termios.error:
            return self.loader.baud
