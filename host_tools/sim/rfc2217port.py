"""The virtual board's USB-UART as an RFC 2217 port, so esptool's DTR/RTS reset sequence reaches the chip.

esptool (pyserial, mpremote) opens `rfc2217://127.0.0.1:PORT`; baud rate and DTR/RTS travel with the
data, handled on this side by pyserial's `serial.rfc2217.PortManager`. The lines drive EN and IO0
through the auto-reset circuit of ESP32 dev boards (two transistors): EN is low while RTS is asserted
and DTR is not, IO0 is low while DTR is asserted and RTS is not; both asserted (how pyserial opens a
port) touches neither. The chip leaves reset once EN has stayed high for EN_SETTLE (the RC on EN) and
samples IO0 then: low starts the ROM loader (download mode), high a normal boot.

RFC 2217 cannot carry the reset sequence's timing: pyserial waits ~50 ms for each line change to be
acknowledged, so the "DTR on" and "RTS off" that release EN with IO0 low arrive 50 ms apart, and a
chip would boot normally in between (esptool issue #383; esptool ships esp_rfc2217_server, which runs
the whole sequence on the server for the same reason). Here, DTR asserted while the chip is held in
reset is taken as that step: the chip leaves reset with IO0 low, as UnixTightReset's atomic
(DTR=1, RTS=0) would do; RTS counts again once the client releases it.

    def on_reset(download: bool) -> None: ...   # the supervisor: stop the app; start it again unless download
    with Rfc2217Server(RomLoader(flash, mac), on_reset=on_reset) as server:
        subprocess.run(["esptool", "--port", server.url, "write-flash", "0x10000", "app.bin"])  # default-reset, hard-reset

In download mode the server feeds the RomLoader itself (after resetting it and sending the ROM's boot
text); otherwise received bytes go to `app_input` and the app's output comes in through `send()`.
"""

from __future__ import annotations

import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable

from serial.rfc2217 import PortManager

from host_tools.sim.romloader import DOWNLOAD_BOOT_TEXT, RomLoader

EN_SETTLE = 0.005  # seconds EN must stay high before the chip runs (esp_pylib's MINIMAL_EN_LOW_DELAY)


class ResetCircuit:
    """DTR/RTS -> EN/IO0 of an ESP32 dev board, and when the chip leaves reset, in which mode."""

    def __init__(self) -> None:
        self.dtr = self.rts = False
        self.in_reset = False
        self._released_at: float | None = None

    @property
    def en_low(self) -> bool:
        return self.rts and not self.dtr

    @property
    def io0_low(self) -> bool:
        return self.dtr and not self.rts

    def set_lines(self, dtr: bool, rts: bool, when: float) -> bool | None:
        """Apply a line change made at `when`; returns the boot mode if the chip left reset before it."""
        booted = self.boot(when)
        self.dtr, self.rts = dtr, rts
        if self.en_low:
            self.in_reset = True
            self._released_at = None
        elif self.in_reset and self._released_at is None:
            self._released_at = when
        return booted

    def deadline(self) -> float | None:
        """When the chip will leave reset if nothing changes, or None."""
        return None if self._released_at is None else self._released_at + EN_SETTLE

    def boot(self, now: float) -> bool | None:
        """None, or whether the chip boots into download mode (EN has been high for EN_SETTLE by `now`)."""
        due = self.deadline()
        if due is None or now < due:
            return None
        self.in_reset = False
        self._released_at = None
        return self.io0_low


class _LinePort:
    """What PortManager drives as "the serial port": line settings it sets and reads back; DTR/RTS as the
    client asks for them, passed to the reset circuit (with the reset-to-bootloader step made atomic)."""

    def __init__(self, server: Rfc2217Server) -> None:
        self._server = server
        self.bytesize, self.parity, self.stopbits = 8, "N", 1
        self.xonxoff = self.rtscts = self.break_condition = False
        self.cts = self.dsr = True
        self.ri = self.cd = False
        self._dtr = self._rts = False
        self._rts_released = False  # RTS is let go early: the client asserted DTR while holding EN low

    @property
    def baudrate(self) -> int:
        return self._server.loader.baud

    @baudrate.setter
    def baudrate(self, value: int) -> None:
        self._server.loader.baud = value  # the ROM auto-bauds to whatever the host uses

    @property
    def dtr(self) -> bool:
        return self._dtr

    @dtr.setter
    def dtr(self, value: bool) -> None:
        self._dtr = bool(value)
        if self._dtr and self._server.circuit.en_low:
            self._rts_released = True
        self._apply()

    @property
    def rts(self) -> bool:
        return self._rts

    @rts.setter
    def rts(self, value: bool) -> None:
        self._rts = bool(value)
        if not self._rts:
            self._rts_released = False
        self._apply()

    def hang_up(self) -> None:
        """The client closed the port: the bridge drops DTR and RTS together (HUPCL); from (1, 1) nothing moves."""
        self._dtr = self._rts = self._rts_released = False
        self._apply()

    def _apply(self) -> None:
        self._server.lines_changed(self._dtr, self._rts and not self._rts_released)

    def reset_input_buffer(self) -> None:
        pass  # nothing is buffered between the network and the chip

    def reset_output_buffer(self) -> None:
        pass


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)


class Rfc2217Server:
    """One board behind a TCP port speaking RFC 2217; one client at a time; a thread until `stop()`.

    `download`: whether the ROM loader runs when the server starts (else the app does).
    `on_reset(download)` is called (from the server's thread) each time the chip leaves reset;
    `on_stop(loader)` once the loader stops answering (`loader.exit`: the ROM ran the app or rebooted;
    `loader.power_loss`: the board is off), after which the supervisor calls `reset()`;
    `app_input(data)` gets what the client sends while the app runs."""

    def __init__(self, loader: RomLoader, *, host: str = "127.0.0.1", port: int = 0, download: bool = False,
                 on_reset: Callable[[bool], None] | None = None, on_stop: Callable[[RomLoader], None] | None = None,
                 app_input: Callable[[bytes], None] | None = None) -> None:
        self.loader = loader
        self.download = download
        self.on_reset, self.on_stop, self.app_input = on_reset, on_stop, app_input
        self.circuit = ResetCircuit()
        self._line_port = _LinePort(self)
        self._listener = socket.create_server((host, port))
        self.url = f"rfc2217://{host}:{self._listener.getsockname()[1]}"
        self._client: socket.socket | None = None
        self._manager: PortManager | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stopping = self._stop_reported = False
        self._thread = threading.Thread(target=self._serve, name=f"rfc2217 {self.url}", daemon=True)

    def __enter__(self) -> Rfc2217Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(lambda: setattr(self, "_stopping", True))
            self._thread.join(timeout=5)
        self._drop_client()
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1

    def reset(self, download: bool) -> None:
        """The supervisor reset the chip itself (power on, watchdog, `machine.reset()`, or after `on_stop` when the ROM
        ran the app): it now runs the ROM loader (`download`) or the app. `on_reset` is not called (thread-safe)."""
        self._call(lambda: self._boot(download, notify=False))

    def send(self, data: bytes) -> None:
        """Bytes the board sends on UART0 (the app's console output), to the client if one is connected (thread-safe)."""
        self._call(lambda: self._to_client(data))

    def lines_changed(self, dtr: bool, rts: bool) -> None:
        """DTR/RTS as the board sees them changed (called in the server's thread, by PortManager)."""
        download = self.circuit.set_lines(dtr, rts, time.monotonic())
        if download is not None:
            self._boot(download)

    def _call(self, fn: Callable[[], None]) -> None:
        self._calls.put(fn)
        os.write(self._wake_w, b"\0")

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                due = self.circuit.deadline()
                for key, _mask in sel.select(None if due is None else max(0.0, due - time.monotonic())):
                    if key.fileobj is self._listener:
                        self._accept(sel)
                    elif key.fd == self._wake_r:
                        os.read(self._wake_r, 4096)
                        while not self._calls.empty():
                            self._calls.get()()
                    else:
                        self._receive(sel)
                download = self.circuit.boot(time.monotonic())
                if download is not None:
                    self._boot(download)

    def _accept(self, sel: selectors.BaseSelector) -> None:
        sock, _addr = self._listener.accept()
        if self._client is not None:
            sock.close()  # one client at a time, like a serial port opened exclusively
            return
        self._client = sock
        self._manager = PortManager(self._line_port, _Connection(sock))
        sel.register(sock, selectors.EVENT_READ)

    def _receive(self, sel: selectors.BaseSelector) -> None:
        try:
            data = self._client.recv(1 << 16)
        except OSError:
            data = b""
        if not data:  # closed: the bridge deasserts both lines (HUPCL)
            sel.unregister(self._client)
            self._drop_client()
            self._line_port.hang_up()
            return
        payload = b"".join(self._manager.filter(data))
        if not payload or self.circuit.in_reset:
            return
        if not self.download:
            if self.app_input is not None:
                self.app_input(payload)
            return
        self._to_client(self.loader.feed(payload))
        if (self.loader.exit or self.loader.power_loss) and not self._stop_reported:
            self._stop_reported = True
            if self.on_stop is not None:
                self.on_stop(self.loader)

    def _boot(self, download: bool, notify: bool = True) -> None:
        self.download = download
        if download:
            self.loader.reset()
            self._stop_reported = False
            self._to_client(DOWNLOAD_BOOT_TEXT)
        if notify and self.on_reset is not None:
            self.on_reset(download)

    def _to_client(self, data: bytes) -> None:
        if self._client is not None and data:
            try:
                self._client.sendall(data.replace(b"\xff", b"\xff\xff"))  # Telnet IAC doubling, as PortManager.escape
            except OSError:
                pass  # the client went away; _receive notices

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = self._manager = None
