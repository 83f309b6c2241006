"""Delta payloads (encoding 2): a patch applied from the running slot into the next one.

The payload is a zlib stream; `slot.inflate.Inflater` inflates it as the chunks arrive (in
order) and hands the decoded patch to `Patcher.feed`. The patch is a list of records
(docs/FORMAT.md "Delta payloads"), each a LEB128 varint `length << 2 | op`:

    op 0 COPY    `length` bytes of the base at the base pointer (the pointer advances)
    op 1 ADD     `length` bytes follow: base byte + patch byte, mod 256 (the pointer advances)
    op 2 INSERT  `length` bytes follow, written as they are
    op 3 SEEK    the base pointer moves by `length` read as zigzag (0, -1, 1, -2 ...)

The base is the running image, read with `readblocks` and never written; the result is
produced in order into one 4 KiB buffer that goes to `out(offset, mv)` (the agent's check of
the image start, then the slot writer) a sector at a time. Only ADD touches single bytes in
Python, and the host emits it only for bytes that differ. Nothing is allocated per chunk but
the memoryview slices of one record step. A record that reads outside the base, output beyond
`image_size` or a patch that ends inside a record is PATCH; a base whose SHA-256 is not the
manifest's is BASE_MISMATCH, checked before anything is erased.

    inflater, p = begin(m, manifest_body, writer_out, carry, buf)  # BASE_MISMATCH before any erase
    inflater.feed(offset, mv)                                      # decoded patch -> p.feed -> out
    p.finished()                                                   # image_size bytes out
"""

import hashlib

from ..compat import const
from ..errors import BASE_MISMATCH, FLASH, MALFORMED, PATCH, OtaError

_SECTOR = const(4096)  # esp32.Partition block size
_COPY = const(0)
_ADD = const(1)
_INSERT = const(2)
_SEEK = const(3)
_VARINT_BITS = const(28)  # at most 4 varint bytes: lengths below 64 MiB stay small ints on the chip
_T_BASE = const(0x0F)  # FORMAT.md manifest record type of the base
_BASE_LEN = const(40)  # FORMAT.md record 0x0F: base_size u32 | base_sha256 [32] | patch_size u32


# The running partition (MicroPython only; imported when a delta is offered).
def running_partition():
    import esp32

    return esp32.Partition(esp32.Partition.RUNNING)


# (base_size, base_sha256, patch_size) from the manifest's record 0x0F (the signed manifest body,
# already checked by check.manifest, which leaves this record to the delta path); MALFORMED if absent.
def base_fields(body):
    from ..check.manifest import _record

    b = _record(memoryview(body), _T_BASE)
    if b is None or len(b) != _BASE_LEN:
        raise OtaError(MALFORMED)  # a delta must name its base
    return int.from_bytes(b[0:4], "little"), bytes(b[4:36]), int.from_bytes(b[36:40], "little")


# BASE_MISMATCH unless the first `size` bytes of `part` hash to `sha` (read through `buf`).
def check_base(part, size, sha, buf):
    if size > part.info()[3]:
        raise OtaError(BASE_MISMATCH)
    h = hashlib.sha256()
    mv = memoryview(buf)
    pos = 0
    try:
        while pos < size:
            n = min(len(buf), size - pos)
            part.readblocks(pos // _SECTOR, mv[:n], pos % _SECTOR)
            h.update(mv[:n])
            pos += n
    except OSError:
        raise OtaError(FLASH)
    if h.digest() != sha:
        raise OtaError(BASE_MISMATCH)


class Stream:
    """What the Inflater needs to know of a delta payload: the decoded size is the patch's."""

    def __init__(self, m, patch_size):
        self.encoded_size = m.encoded_size
        self.image_size = patch_size
        self.zlib_wbits = m.zlib_wbits


class Patcher:
    def __init__(self, base, base_size, image_size, out, buf):
        self.base = base
        self.base_size = base_size
        self.image_size = image_size
        self.emit = out
        self._out = buf
        self._omv = memoryview(buf)
        self._fill = 0
        self.produced = 0  # result bytes made (flushed + buffered)
        self._ptr = 0  # base pointer
        self._op = 0
        self._left = 0  # bytes of the current ADD / INSERT record still to come
        self._v = 0  # varint being read
        self._shift = 0

    # A piece of the decoded patch (valid only during the call); consumed whole.
    def feed(self, _offset, mv):
        i = 0
        n = len(mv)
        while i < n:
            if not self._left:
                b = mv[i]
                i += 1
                self._v |= (b & 0x7F) << self._shift
                self._shift += 7
                if b & 0x80:
                    if self._shift >= _VARINT_BITS:
                        raise OtaError(PATCH)
                    continue
                self._record(self._v)
                self._v = 0
                self._shift = 0
                continue
            k = min(self._left, n - i, len(self._out) - self._fill)
            f = self._fill
            if self._op == _INSERT:
                self._omv[f : f + k] = mv[i : i + k]
            else:  # ADD: base bytes, then the differences added in place
                self._read_base(f, k)
                o = self._out
                for j in range(k):
                    o[f + j] = (o[f + j] + mv[i + j]) & 0xFF
            i += k
            self._left -= k
            self._advance(k)

    def finished(self):
        return self.produced == self.image_size and not self._fill and not self._left and not self._shift

    # A record header: COPY and SEEK run now, ADD and INSERT take the bytes that follow.
    def _record(self, v):
        op = v & 3
        length = v >> 2
        if op == _SEEK:
            d = (length >> 1) ^ -(length & 1)
            if self._ptr + d < 0 or self._ptr + d > self.base_size:
                raise OtaError(PATCH)
            self._ptr += d
            return
        if self.produced + length > self.image_size:
            raise OtaError(PATCH)
        if op != _INSERT and self._ptr + length > self.base_size:
            raise OtaError(PATCH)
        if op != _COPY:
            self._op = op
            self._left = length
            return
        while length:
            k = min(length, len(self._out) - self._fill)
            self._read_base(self._fill, k)
            length -= k
            self._advance(k)

    # Base bytes at the pointer into the output buffer at `f` (the pointer advances).
    def _read_base(self, f, k):
        p = self._ptr
        try:
            self.base.readblocks(p // _SECTOR, self._omv[f : f + k], p % _SECTOR)
        except OSError:
            raise OtaError(FLASH)
        self._ptr = p + k

    # `k` result bytes were placed in the buffer: send it on when full or at the image's end.
    def _advance(self, k):
        self._fill += k
        self.produced += k
        if self._fill == len(self._out) or self.produced == self.image_size:
            self.emit(self.produced - self._fill, self._omv[: self._fill])
            self._fill = 0


# For a delta manifest (`body`: its signed TLV bytes): check the base against the running image
# (before anything is erased), then the Inflater whose decoded patch feeds a Patcher writing to
# `emit`. Returns both.
def begin(m, body, emit, carry, buf, stream=None, room=None):
    from .inflate import Inflater

    base_size, sha, patch_size = base_fields(body)
    part = running_partition()
    check_base(part, base_size, sha, buf)
    p = Patcher(part, base_size, m.image_size, emit, bytearray(_SECTOR))
    return Inflater(p.feed, Stream(m, patch_size), carry, buf, stream, room), p
