"""zlib-encoded payloads inflated into the slot as the chunks arrive.

`deflate.DeflateIO` pulls its input one byte at a time from a stream, so the
chunks the transport pushes are kept in a carry buffer and the decoder is only
asked for output while at least MARGIN input bytes are buffered (more than one
256-byte output step can consume, block headers included): it never runs dry
mid-symbol. Output fills a 4 KiB buffer that goes to `out(offset, mv)` (the slot writer's
write_at, or a step before it) a sector at a time.
Chunks must come in order; a duplicate is ignored, one from ahead is refused
(the transport asks for it again). The SHA-256 of the encoded stream is kept as
it arrives; the image itself is hashed from flash at the end.

    inf = Inflater(writer.write_at, manifest, carry=bytearray(4096 + MARGIN), buf=bytearray(4096))
    inf.feed(offset, memoryview(chunk))
    inf.finished()                     # all of encoded_size consumed, stream ended
"""

import hashlib
import io

from ..compat import const
from ..errors import CHUNK_RANGE, INFLATE, OtaError


MARGIN = const(1024)
_STEP = const(256)


class _Carry(io.IOBase):
    # The stream DeflateIO reads from: bytes pushed by feed(), consumed one at a time.
    def __init__(self, buf):
        self.buf = buf
        self.mv = memoryview(buf)
        self.start = 0
        self.end = 0

    def readinto(self, b):
        n = min(len(b), self.end - self.start)
        if n <= 0:
            return 0
        if n == 1:  # DeflateIO reads one byte at a time: no slice, no allocation
            b[0] = self.buf[self.start]
        else:
            b[:n] = self.mv[self.start : self.start + n]
        self.start += n
        return n

    def avail(self):
        return self.end - self.start

    def push(self, mv):
        if self.start:
            live = self.end - self.start
            self.mv[:live] = self.mv[self.start : self.end]  # memmove within the buffer
            self.start, self.end = 0, live
        n = len(mv)
        if self.end + n > len(self.buf):
            raise OtaError(CHUNK_RANGE)
        self.mv[self.end : self.end + n] = mv
        self.end += n


class Inflater:
    def __init__(self, out, m, carry, buf):
        import deflate  # MicroPython only; not needed to import this module

        self.emit = out
        self.encoded_size = m.encoded_size
        self.image_size = m.image_size
        self.next = 0
        self.sha = hashlib.sha256()
        self._carry = _Carry(carry)
        self._dec = deflate.DeflateIO(self._carry, deflate.ZLIB, m.zlib_wbits)
        self._out = buf
        self._fill = 0
        self.decoded = 0
        self._ended = False

    # Take the chunk at encoded `offset`. True if it was the next one and was used.
    def feed(self, offset, mv):
        if offset != self.next:
            return False
        if offset + len(mv) > self.encoded_size:
            raise OtaError(CHUNK_RANGE)
        self.sha.update(mv)
        self._carry.push(mv)
        self.next += len(mv)
        self._drain(self.next == self.encoded_size)
        return True

    def finished(self):
        return self._ended and self.next == self.encoded_size

    def _drain(self, final):
        out = memoryview(self._out)
        while not self._ended and (final or self._carry.avail() >= MARGIN):
            step = min(_STEP, len(self._out) - self._fill)
            try:
                n = self._dec.readinto(out[self._fill : self._fill + step])
            except (OSError, ValueError, EOFError):  # EOFError: a stream that ends inside a block
                raise OtaError(INFLATE)
            if not n:
                self._ended = True
                break
            self._fill += n
            self.decoded += n
            if self.decoded > self.image_size:
                raise OtaError(INFLATE)
            if self._fill == len(self._out):
                self._flush()
        if final and self._fill:
            self._flush()

    def _flush(self):
        start = self.decoded - self._fill
        self.emit(start, memoryview(self._out)[: self._fill])
        self._fill = 0
