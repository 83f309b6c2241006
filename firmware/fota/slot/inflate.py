"""zlib-encoded payloads inflated into the slot as the chunks arrive.

`deflate.DeflateIO` pulls its input one byte at a time through the stream protocol
(extmod/moddeflate.c `deflateio_read_stream`: `stream->read(.., 1)` per compressed byte).
Its input is therefore an `io.BytesIO`, whose read is C (py/objstringio.c): a byte costs a
memcpy, not a bytecode call, as a Python `io.IOBase` subclass would. The chunks the
transport pushes are written at the stream's end; the decoder is only asked for output
while at least MARGIN input bytes are buffered (more than one 256-byte output step takes
from a zlib stream our packager writes, block headers included), so it never runs dry
mid-symbol. A BytesIO cannot shrink: when a chunk would not fit, the undecoded tail
(< MARGIN bytes) moves to the front through `carry` and the bytes after it are stale,
so every read is checked against the end of what arrived (a stream that reads past it
is an INFLATE error, as a stream that ends inside a block is). The decoder allocates its
state and its window (1 << wbits) itself, at its first read (extmod/moddeflate.c
`deflateio_init_read`), and that read comes with the first chunk, when the heap may be too
fragmented for a 1 KiB block although much is free (seen: 55 KB free, 496 bytes the largest
piece). So their room is reserved before that (`reserve()`: by the agent when it is made, while the
heap is still whole, since a long-running link leaves it in pieces too small for even 2 KiB; or here,
when the offer is taken, for a larger window: an OUT_OF_MEMORY then refuses the offer before anything
is erased), and handed over just before that read. Output fills a 4 KiB buffer
in 256-byte steps through views made once, and goes to `out(offset, mv)` (the slot writer's
write_at, or a step before it) a sector at a time. Nothing is allocated per chunk.
Chunks must come in order; a duplicate is ignored, one from ahead is refused
(the transport asks for it again). The SHA-256 of the encoded stream is kept as
it arrives; the image itself is hashed from flash at the end.

    inf = Inflater(writer.write_at, manifest, carry=bytearray(MARGIN), buf=bytearray(4096),
                   stream=bytes_io(4096 + MARGIN),  # optional: made once, kept across updates
                   room=reserve())                  # optional: made early; the caller drops its reference
    inf.feed(offset, memoryview(chunk))   # chunks up to len(buf) bytes
    inf.finished()                        # all of encoded_size consumed, stream ended at its last byte

Resume points (docs/FORMAT.md "Resume points", manifest record 0x82): the packager ends every `stride`
decoded bytes with a full flush and lists the encoded offset after each. An Inflater made with
`point=k` starts there: `next` is the chunk holding that offset (the bytes before it in that chunk are
skipped), `decoded` is k * stride, and the decoder is a raw one (no zlib header; the 4-byte Adler-32
trailer is taken without being checked: the image is hashed from flash). The encoded stream's SHA-256
cannot be taken from the middle, so `sha` is None then.
"""

# pyright: reportAttributeAccessIssue=false
# (micropython-esp32-stubs' io.BytesIO lists none of the stream methods it has: read, readinto, write, seek, tell)

import gc
import hashlib

from ..compat import bytes_io, const
from ..errors import CHUNK_RANGE, INFLATE, OtaError
from .writer import SECTOR


MARGIN = const(1024)
_STEP = const(256)
_STATE = const(1024)  # >= sizeof(mp_obj_deflateio_read_t): uzlib's state with its two trees (~850 B at 64 bits)
_ROOM_WBITS = const(11)  # the window reserve() holds: zlib packages use 10, delta ones 11 (host_tools/image)
_TRAILER = const(4)  # RFC 1950's Adler-32 after the last deflate block


def reserve(wbits=_ROOM_WBITS):
    """Room for a decoder's state and a window of 1 << wbits, to be handed to an Inflater."""
    return bytearray(_STATE + (1 << wbits))


def resume_table(m):
    """(stride, points) of the manifest's resume record, or (0, 0) when it has none this device can use
    (record 0x82 is informational: a table that does not hold together is ignored, never trusted)."""
    r = m.resume  # at most 48 points: check/manifest.py keeps no longer record
    if r is None or len(r) < 8 or len(r) % 4:
        return 0, 0
    stride = int.from_bytes(r[0:4], "little")
    n = len(r) // 4 - 1
    if stride < SECTOR or stride % SECTOR or n * stride >= m.image_size:
        return 0, 0
    prev = 0
    for k in range(1, n + 1):
        at = resume_offset(m, k)
        if at <= prev or at >= m.encoded_size:
            return 0, 0
        prev = at
    return stride, n


def resume_offset(m, k):
    """The encoded offset of resume point k (1-based; resume_table() said it exists)."""
    return int.from_bytes(m.resume[4 * k : 4 * k + 4], "little")


class Inflater:
    def __init__(self, out, m, carry, buf, stream=None, room=None, chunk=SECTOR, point=0):
        import deflate  # MicroPython only; not needed to import this module

        if len(carry) < MARGIN or len(buf) % _STEP:
            raise OtaError(CHUNK_RANGE)
        self.emit = out
        self.encoded_size = m.encoded_size
        self.image_size = m.image_size
        self.next = 0
        self.decoded = 0
        self._skip = 0  # bytes of the first chunk before the resume point
        self._trailer = 0  # bytes after the last deflate block that the decoder does not read
        fmt = deflate.ZLIB
        if point:
            at = resume_offset(m, point)
            self.next = at - at % chunk
            self._skip = at - self.next
            self.decoded = point * resume_table(m)[0]
            self._trailer = _TRAILER
            fmt = deflate.RAW
        self.sha = None if point else hashlib.sha256()
        self._cap = len(buf) + MARGIN
        self._in = bytes_io(self._cap) if stream is None else stream  # one kept by the caller: stale bytes are fine
        self._in.seek(0)
        self._end = 0  # where the bytes that arrived end in self._in; stale bytes may follow
        self._tail = memoryview(carry)[:MARGIN]
        self._dec = deflate.DeflateIO(self._in, fmt, m.zlib_wbits)
        need = _STATE + (1 << m.zlib_wbits)  # the decoder's, until its first read (its only reference then)
        self._room = room if room is not None and len(room) >= need else bytearray(need)
        self._out = memoryview(buf)
        self._steps = [self._out[i : i + _STEP] for i in range(0, len(buf), _STEP)]
        self._fill = 0
        self._ended = False

    # Take the chunk at encoded `offset`. True if it was the next one and was used.
    def feed(self, offset, mv):
        if offset != self.next:
            return False
        if offset + len(mv) > self.encoded_size:
            raise OtaError(CHUNK_RANGE)
        self.next += len(mv)
        if self._ended:  # only a raw decoder's trailer can follow the last block (its place was checked)
            if not self._trailer:
                raise OtaError(INFLATE)
            return True
        if self.sha is not None:
            self.sha.update(mv)
        if self._skip:
            mv = mv[self._skip :]
            self._skip = 0
        self._push(mv)
        self._drain(self.next == self.encoded_size)
        return True

    def finished(self):
        return self._ended and self.next == self.encoded_size

    def _push(self, mv):
        s = self._in
        pos = s.tell()
        n = len(mv)
        if self._end + n > self._cap:  # move the undecoded tail (< MARGIN) to the front
            live = self._end - pos
            if live + n > self._cap:
                raise OtaError(CHUNK_RANGE)
            s.readinto(self._tail)
            s.seek(0)
            s.write(self._tail)  # bytes past `live` are stale
            self._end = live
            pos = 0
        s.seek(self._end)
        s.write(mv)
        self._end += n
        s.seek(pos)

    def _drain(self, final):
        s = self._in
        while not self._ended and (final or self._end - s.tell() >= MARGIN):
            fill = self._fill
            if fill % _STEP:  # only after a short read, which only the stream's end gives
                view = self._out[fill : min(fill + _STEP, len(self._out))]
            else:
                view = self._steps[fill // _STEP]
            if self._room is not None:  # free the reserved block for the decoder's own allocations
                self._room = None
                gc.collect()
            try:
                n = self._dec.readinto(view)
            except (OSError, ValueError, EOFError):  # EOFError: a stream that ends inside a block
                raise OtaError(INFLATE)
            if s.tell() > self._end:  # the decoder read past what arrived (stale bytes)
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
        # the stream must end where the manifest says: bytes after it (or a decoder short of them) are an error
        if self._ended and self.next - (self._end - s.tell()) != self.encoded_size - self._trailer:
            raise OtaError(INFLATE)
        if (final or self._ended) and self._fill:
            self._flush()

    def _flush(self):
        start = self.decoded - self._fill
        self.emit(start, self._out if self._fill == len(self._out) else self._out[: self._fill])
        self._fill = 0
