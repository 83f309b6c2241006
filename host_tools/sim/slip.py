"""SLIP framing (RFC 1055) as the ESP32 serial bootloader and esptool use it.

0xC0 delimits a frame; inside one, 0xC0 travels as DB DC and 0xDB as DB DD
(esptool docs/en/advanced-topics/serial-protocol.rst, "Low Level Protocol").

    decoder = SlipDecoder(max_frame=0x4100)
    for frame in decoder.feed(received):    # whole frames, unescaped, in order
        ...
    wire = encode(b"OHAI")                  # c0 4f 48 41 49 c0
"""

from __future__ import annotations

END = b"\xc0"
ESC = b"\xdb"
_UNESCAPE = {0xDC: 0xC0, 0xDD: 0xDB}


def encode(frame: bytes) -> bytes:
    """One frame on the wire: END, the escaped bytes, END (what esptool's `write` and the stub's `slip_send_frame` send)."""
    return END + frame.replace(ESC, b"\xdb\xdd").replace(END, b"\xdb\xdc") + END


class SlipDecoder:
    """A byte stream in, whole frames out; data may be split anywhere across `feed` calls.

    What the chip drops, this drops: bytes between frames, empty frames (C0 C0), a frame with an
    invalid escape (DB followed by anything but DC or DD) and a frame longer than `max_frame`
    (the receive buffer would overflow; the stub's `rx_put` marks that frame an error)."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._open = False  # inside a frame (after an END that opened one)
        self._escape = False  # the last byte seen was DB
        self._bad = False  # this frame is being dropped

    def reset(self) -> None:
        """Forget a partial frame (the chip was reset)."""
        self._buf.clear()
        self._open = self._escape = self._bad = False

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        for i, part in enumerate(data.split(END)):
            if i:
                self._end(frames)
            if self._open and part:
                self._take(part)
        return frames

    def _end(self, frames: list[bytes]) -> None:
        # An END opens a frame, or closes the open one; C0 C0 is an empty gap, not two frames.
        if not self._open:
            self._open = True
            return
        if not self._buf and not self._bad and not self._escape:
            return
        if not self._bad and not self._escape:
            frames.append(bytes(self._buf))
        self._buf.clear()
        self._open = self._escape = self._bad = False

    def _take(self, part: bytes) -> None:
        if self._escape:
            self._escape = False
            self._unescape(part[0])
            part = part[1:]
        pieces = part.split(ESC)
        self._put(pieces[0])
        last = len(pieces) - 1
        for n, piece in enumerate(pieces[1:], 1):
            if piece:
                self._unescape(piece[0])
                self._put(piece[1:])
            elif n == last:
                self._escape = True  # DB at the end of this chunk: the code byte comes next
            else:
                self._drop()  # DB DB

    def _unescape(self, code: int) -> None:
        byte = _UNESCAPE.get(code)
        if byte is None:
            self._drop()
        else:
            self._put(bytes((byte,)))

    def _put(self, chunk: bytes) -> None:
        if self._bad or not chunk:
            return
        if len(self._buf) + len(chunk) > self.max_frame:
            self._drop()
            return
        self._buf += chunk

    def _drop(self) -> None:
        self._bad = True
        self._buf.clear()
