"""What a running virtual board's UART0 reaches besides the app: the ROM loader and an RFC 2217 port.

The supervisor (host_tools.sim.runtime) runs the app; this module holds the rest of the serial side of
the chip, as a dev board's USB-UART bridge sees it:

- the ROM serial loader (host_tools.sim.romloader) over the board's own `Flash`, so its erases and
  writes are counted, checked in strict mode and can meet the `PowerPlan`'s cut; it answers while the
  chip is in download mode (it left reset with IO0 low) and the board has power;
- an RFC 2217 port on 127.0.0.1 (host_tools.sim.rfc2217port) whose DTR/RTS reset the chip through the
  dev board's auto-reset circuit, so `esptool --port rfc2217://...` resets into download mode and back
  into the app as on a USB board. Its URL is in the board's `rfc2217` file while the board runs.

The REPL pty and the RFC 2217 client are two ends of the same UART: the app's console goes to both;
in download mode each gets the loader's replies to what it sent.

    front = SerialFront(board, flash, on_reset=..., on_stop=..., app_input=...)
    front.start()                          # board.rfc2217_file holds front.url
    front.enter(download=True)             # the supervisor reset the chip with IO0 held low
    pty_reply = front.feed(pty_bytes)      # download mode: the loader's answer
    front.send(console_bytes)              # app mode: to the RFC 2217 client
    front.close(); ...; front.stop()       # callbacks end, the supervisor's thread ends, the port closes

Callbacks come from the RFC 2217 server's thread: `on_reset(download)` when the client's DTR/RTS took
the chip out of reset, `on_stop()` when the loader stopped answering (it ran the app, or lost power),
`app_input(data)` for bytes the client sent while the app runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from host_tools.sim.flash import Flash
from host_tools.sim.rfc2217port import Rfc2217Server
from host_tools.sim.romloader import RomLoader


class SharedLoader(RomLoader):
    """The loader fed from two threads (the supervisor's pty, the RFC 2217 server), one chunk at a time;
    silent while the board has no power."""

    def __init__(self, flash: Flash, mac: bytes, **kw) -> None:
        self.lock = threading.RLock()
        self.powered = True
        super().__init__(flash, mac, **kw)

    def feed(self, data: bytes) -> bytes:
        with self.lock:
            return super().feed(data) if self.powered else b""

    def reset(self) -> None:
        with self.lock:
            super().reset()


def board_mac(config: dict) -> bytes:
    """The factory MAC the board's eFuses hold: its unique id (machine.unique_id() on an ESP32 is the MAC)."""
    return bytes.fromhex(config["uid"])


class SerialFront:
    """The loader and the RFC 2217 port of one running board (see the module docstring)."""

    def __init__(self, board, flash: Flash, *, on_reset: Callable[[bool], None], on_stop: Callable[[], None],
                 app_input: Callable[[bytes], None]) -> None:
        self.board = board
        self.loader = SharedLoader(flash, board_mac(board.config), chip_rev=board.config["chip_rev"])
        self._closing = False
        self._on_reset, self._on_stop, self._app_input = on_reset, on_stop, app_input
        self.server = Rfc2217Server(self.loader, on_reset=self._line_reset, on_stop=self._loader_stop, app_input=self._input)
        self.url = self.server.url

    def start(self) -> None:
        self.server.start()
        self.board.rfc2217_file.write_text(self.url + "\n")

    def close(self) -> None:
        """The board is stopping: no more callbacks, nothing more to the port (then `stop()`, once the
        supervisor's thread has ended)."""
        self._closing = True
        self.board.rfc2217_file.unlink(missing_ok=True)

    def stop(self) -> None:
        self.close()
        self.server.stop()

    def enter(self, download: bool, *, tell_port: bool = True) -> None:
        """The chip left reset in download mode or into the app (the supervisor's side of a reset). `tell_port`
        False: the reset came from the port's own DTR/RTS, which has already switched and greeted its client."""
        self.loader.powered = True
        if download:
            self.loader.reset()
        if tell_port and not self._closing:
            self.server.reset(download)

    def power_lost(self) -> None:
        """No power: the loader answers nothing until the next `enter`."""
        self.loader.powered = False

    def feed(self, data: bytes) -> bytes:
        return self.loader.feed(data)

    def send(self, data: bytes) -> None:
        """App console output, to the RFC 2217 client if one is connected."""
        if not self._closing:
            self.server.send(data)

    def _line_reset(self, download: bool) -> None:
        if not self._closing:
            self._on_reset(download)

    def _loader_stop(self, loader: RomLoader) -> None:
        if not self._closing:
            self._on_stop()

    def _input(self, data: bytes) -> None:
        if not self._closing:
            self._app_input(data)
