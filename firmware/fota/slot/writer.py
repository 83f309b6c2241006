"""Writing an image into the OTA slot: erase each 4 KiB sector once, then program.

Chunks are written where they belong (any order, duplicates ignored), so a
bitmap of received chunks and of erased sectors is all the progress there is;
`journal()` returns it for the agent to persist, `resume()` takes it back after
a reset. Program-only writes (`writeblocks(n, buf, off)`) never erase, so a chunk
written again after a power cut writes the same bits and is harmless. The writer knows
only flash: whether the data is an image worth writing is decided before it is called.

    w = SlotWriter(target, image_size, chunk_size)
    w.write_chunk(offset, memoryview(data))     # True when new
    w.done()                                    # every chunk written
    w.sha256(buf) == manifest.image_sha256      # re-read from flash, not from RAM
"""

import hashlib

from ..compat import const
from ..errors import CHUNK_RANGE, FLASH, OtaError


SECTOR = const(4096)


def _bit(bits, i):
    return bits[i >> 3] & (1 << (i & 7))


def _set(bits, i):
    bits[i >> 3] |= 1 << (i & 7)


class SlotWriter:
    def __init__(self, part, image_size, chunk):
        self.part = part
        self.size = image_size
        self.chunk = chunk
        self.chunks = (image_size + chunk - 1) // chunk
        self.got = bytearray((self.chunks + 7) // 8)
        self.erased = bytearray(((image_size + SECTOR - 1) // SECTOR + 7) // 8)
        self.count = 0
        self.written = 0  # bytes programmed by write_at (the sequential path)
        self._low = 0  # every chunk below it is written (bits are only ever set, except by resume())

    # Progress as plain data for the journal.
    def journal(self):
        return {"chunk": self.chunk, "got": self.got.hex(), "erased": self.erased.hex()}

    # Take back a journal written for the same image; False if it does not fit.
    def resume(self, j):
        try:
            got = bytes.fromhex(j["got"])
            erased = bytes.fromhex(j["erased"])
        except (KeyError, ValueError, TypeError):
            return False
        if j.get("chunk") != self.chunk or len(got) != len(self.got) or len(erased) != len(self.erased):
            return False
        self.got[:] = got
        self.erased[:] = erased
        self._low = 0
        self.count = sum(1 for i in range(self.chunks) if _bit(self.got, i))
        return True

    # The image's first `size` bytes (a multiple of SECTOR) are in flash already (a zlib download resumed
    # at a resume point): their sectors count as erased; those after it are erased again before a write.
    def resume_prefix(self, size):
        for sector in range(size // SECTOR):
            _set(self.erased, sector)
        self.written = size
        self.count = size // self.chunk

    # Every chunk is in flash already (an image verified there before a reset): nothing left to write.
    def fill(self):
        for i in range(len(self.got)):
            self.got[i] = 0xFF
        for i in range(len(self.erased)):
            self.erased[i] = 0xFF
        self.count = self.chunks

    def has(self, index):
        return bool(_bit(self.got, index))

    def done(self):
        return self.count == self.chunks

    # The first chunk index not yet written, from `start`; -1 when none is missing.
    # The agent asks before every request of a download: the scan starts at the low-water mark and
    # skips whole bytes of written chunks (it was a bit-by-bit scan from 0, O(image) per request).
    def next_missing(self, start=0):
        low = start <= self._low
        i = self._low if low else start
        got, n = self.got, self.chunks
        while i < n:
            b = got[i >> 3]
            if b == 0xFF:
                i = (i | 7) + 1
            elif b & (1 << (i & 7)):
                i += 1
            else:
                break
        if i >= n:
            i = -1
        if low:
            self._low = n if i < 0 else i
        return i

    # CHUNK_RANGE unless `n` bytes at `offset` are a chunk: on a chunk boundary, a whole
    # chunk (the last one may be short), inside the image.
    def check_range(self, offset, n):
        if offset % self.chunk or offset >= self.size or offset + n > self.size:
            raise OtaError(CHUNK_RANGE)
        if n != self.chunk and offset + n != self.size:
            raise OtaError(CHUNK_RANGE)

    # A chunk of the raw image at `offset` (see check_range). Returns False for a duplicate.
    def write_chunk(self, offset, mv):
        self.check_range(offset, len(mv))
        index = offset // self.chunk
        if _bit(self.got, index):
            return False
        self.write_at(offset, mv)
        _set(self.got, index)
        self.count += 1
        return True

    # Program `mv` at `offset`, erasing each sector it touches the first time.
    def write_at(self, offset, mv):
        end = offset + len(mv)
        if end > self.size:
            raise OtaError(CHUNK_RANGE)
        first = offset // SECTOR
        try:
            if not offset % SECTOR and len(mv) == SECTOR and not _bit(self.erased, first):
                self.part.writeblocks(first, mv)  # a whole fresh sector: erase and program in one call
                _set(self.erased, first)
                self.written = max(self.written, end)
                return
            for sector in range(first, (end - 1) // SECTOR + 1):
                if not _bit(self.erased, sector):
                    self.part.ioctl(6, sector)  # erase this 4 KiB block
                    _set(self.erased, sector)
            self.part.writeblocks(first, mv, offset % SECTOR)
        except OSError:
            raise OtaError(FLASH)
        self.written = max(self.written, end)

    # SHA-256 of the image as it is in flash, read through `buf` (bytearray, 4 KiB).
    def sha256(self, buf):
        h = hashlib.sha256()
        mv = memoryview(buf)
        pos = 0
        try:
            while pos < self.size:
                n = min(len(buf), self.size - pos)
                chunk = mv[:n]
                self.part.readblocks(pos // SECTOR, chunk, pos % SECTOR)
                h.update(chunk)
                pos += n
        except OSError:
            raise OtaError(FLASH)
        return h.digest()
