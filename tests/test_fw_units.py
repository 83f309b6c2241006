"""Firmware units under CPython: the slot writer, the inflater, the store and the boot state.

Against `NorPartition`, a small stand-in for esp32.Partition with NOR semantics (a 4 KiB sector
erases to 0xFF, a write only clears bits; a write that would set one is a fault, as on the
virtual board in strict mode). The same modules run under micropython in the board tests.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
import sys
import types
import zlib

import pytest

from conftest import FIRMWARE

pytestmark = pytest.mark.host

SECTOR = 4096


def _fw(name: str):
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    return importlib.import_module(name)


writer_mod = _fw("fota.slot.writer")
inflate_mod = _fw("fota.slot.inflate")
store_mod = _fw("fota.boot.store")
state_mod = _fw("fota.boot.state")
errors = _fw("fota.errors")
OtaError = errors.OtaError
SlotWriter = writer_mod.SlotWriter


class NorFault(Exception):
    """A write that needs a bit set: the sector was not erased first."""


class NorPartition:
    """esp32.Partition's block-device calls over a bytearray, with NOR flash rules."""

    def __init__(self, size: int = 16 * SECTOR, fail_after: int | None = None) -> None:
        self.mem = bytearray(os.urandom(size))  # never-erased flash holds anything
        self.erases = [0] * (size // SECTOR)
        self.ops = 0
        self.fail_after = fail_after  # an OSError from flash operation N on

    def _op(self) -> None:
        self.ops += 1
        if self.fail_after is not None and self.ops > self.fail_after:
            raise OSError(5)

    def _erase(self, block: int) -> None:
        self.mem[block * SECTOR : (block + 1) * SECTOR] = b"\xff" * SECTOR
        self.erases[block] += 1

    def _program(self, at: int, data: bytes) -> None:
        old = self.mem[at : at + len(data)]
        if len(old) != len(data):
            raise OSError(22)
        if any(n & ~o & 0xFF for o, n in zip(old, data)):
            raise NorFault(f"write at {at:#x} over unerased data")
        self.mem[at : at + len(data)] = bytes(o & n for o, n in zip(old, data))

    def readblocks(self, block: int, buf, offset: int = 0) -> None:
        at = block * SECTOR + offset
        buf[:] = self.mem[at : at + len(buf)]

    def writeblocks(self, block: int, buf, offset: int | None = None) -> None:
        self._op()
        data = bytes(buf)
        if offset is None:  # erase the blocks first, then program (whole blocks only)
            if len(data) % SECTOR:
                raise OSError(-260)
            for b in range(block, block + len(data) // SECTOR):
                self._erase(b)
            offset = 0
        self._program(block * SECTOR + offset, data)

    def ioctl(self, op: int, arg: int):
        if op == 4:
            return len(self.mem) // SECTOR
        if op == 5:
            return SECTOR
        if op == 6:
            self._op()
            self._erase(arg)
            return 0
        return None


def image(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# -- slot writer -----------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1024, 4096, 8192])
def test_chunks_in_any_order_with_duplicates_erase_each_sector_once(chunk):
    data = image(10 * SECTOR + 1234)
    part = NorPartition()
    w = SlotWriter(part, len(data), chunk)
    offsets = list(range(0, len(data), chunk))
    random.Random(chunk).shuffle(offsets)
    seen = set()
    for off in offsets + offsets[:3]:
        assert w.write_chunk(off, memoryview(data)[off : off + chunk]) == (off not in seen)
        seen.add(off)
    assert w.done() and w.next_missing() == -1
    assert w.sha256(bytearray(SECTOR)) == hashlib.sha256(data).digest()
    used = -(-len(data) // SECTOR)
    assert part.erases[:used] == [1] * used and part.erases[used:] == [0] * (16 - used)


def test_chunk_range_checks():
    w = SlotWriter(NorPartition(), 3 * 1024 + 10, 1024)
    for off, n in [(100, 1024), (4 * 1024, 10), (3 * 1024, 11), (1024, 512), (0, 2048)]:
        with pytest.raises(OtaError) as e:
            w.write_chunk(off, memoryview(bytes(n)))
        assert e.value.code == errors.CHUNK_RANGE
    assert w.write_chunk(3 * 1024, memoryview(bytes(10)))  # the short last chunk is whole
    with pytest.raises(OtaError):
        w.write_at(3 * 1024, memoryview(bytes(11)))


def test_journal_resume_after_a_cut_rewrites_only_the_same_bits():
    data = image(6 * SECTOR)
    part = NorPartition()
    w = SlotWriter(part, len(data), 2048)
    for off in range(0, 3 * SECTOR, 2048):
        w.write_chunk(off, memoryview(data)[off : off + 2048])
    j = json.loads(json.dumps(w.journal()))  # as the agent persists it
    # power cut after the journal: the last chunk is written again by the resumed writer
    w2 = SlotWriter(part, len(data), 2048)
    assert w2.resume(j) and w2.count == 6 and w2.next_missing() == 6
    w2.got[0] &= 0xDF  # pretend chunk 5 was not journaled: writing it again programs the same bits
    w2.count -= 1
    for off in range(5 * 2048, len(data), 2048):
        assert w2.write_chunk(off, memoryview(data)[off : off + 2048])
    assert w2.done() and w2.sha256(bytearray(SECTOR)) == hashlib.sha256(data).digest()
    assert part.erases[:6] == [1] * 6  # sectors erased before the cut were not erased again


def test_resume_refuses_a_journal_of_another_shape():
    w = SlotWriter(NorPartition(), 4 * SECTOR, 4096)
    good = SlotWriter(NorPartition(), 4 * SECTOR, 4096).journal()
    assert not w.resume({**good, "chunk": 1024})
    assert not w.resume({**good, "got": "zz"})
    assert not w.resume({"chunk": 4096})
    assert not w.resume({**good, "erased": "0000"})
    assert w.resume(good) and w.count == 0


def test_flash_errors_become_FLASH():
    w = SlotWriter(NorPartition(fail_after=1), 3 * SECTOR, 4096)
    assert w.write_chunk(0, memoryview(image(SECTOR)))
    with pytest.raises(OtaError) as e:
        w.write_chunk(SECTOR, memoryview(image(SECTOR)))
    assert e.value.code == errors.FLASH and not w.has(1)


# -- inflater (deflate.DeflateIO stood in for by zlib, pulling input a byte at a time) ---------

_RAW, _ZLIB = 1, 2  # MicroPython's deflate.RAW, deflate.ZLIB


class _DeflateIO:
    def __init__(self, stream, fmt, wbits=0):
        self.src, self.d = stream, zlib.decompressobj(-(wbits or 15) if fmt == _RAW else (wbits or 15))
        self.one = bytearray(1)

    def readinto(self, b):
        out = b""
        while len(out) < len(b) and not self.d.eof:
            if self.d.unconsumed_tail:
                more = self.d.unconsumed_tail
            elif self.src.readinto(self.one):
                more = bytes(self.one)
            else:
                break
            try:
                out += self.d.decompress(more, len(b) - len(out))
            except zlib.error:
                raise OSError(22, "corrupt stream") from None  # what MicroPython's DeflateIO raises
        b[: len(out)] = out
        return len(out)


@pytest.fixture
def deflate(monkeypatch):
    mod = types.ModuleType("deflate")
    mod.RAW, mod.ZLIB, mod.DeflateIO = _RAW, _ZLIB, _DeflateIO
    monkeypatch.setitem(sys.modules, "deflate", mod)
    return mod


def _inflater(data: bytes, encoded: bytes, part: NorPartition):
    m = types.SimpleNamespace(encoded_size=len(encoded), image_size=len(data), zlib_wbits=15)
    w = SlotWriter(part, len(data), 1024)
    inf = inflate_mod.Inflater(w.write_at, m, bytearray(SECTOR + inflate_mod.MARGIN), bytearray(SECTOR))
    return w, inf


def test_inflater_writes_the_image_and_hashes_the_stream(deflate):
    data = image(5 * SECTOR + 77)[:9000] * 3  # compressible
    encoded = zlib.compress(data, 9)
    part = NorPartition()
    w, inf = _inflater(data, encoded, part)
    for off in range(0, len(encoded), 1024):
        mv = memoryview(encoded)[off : off + 1024]
        assert not inf.feed(off + 1024, mv) or off + 1024 >= len(encoded)  # one from ahead: refused
        assert inf.feed(off, mv)
        assert not inf.feed(off, mv)  # a duplicate: ignored
    assert inf.finished() and inf.decoded == len(data)
    assert inf.sha.digest() == hashlib.sha256(encoded).digest()
    assert w.sha256(bytearray(SECTOR)) == hashlib.sha256(data).digest()
    assert max(part.erases) == 1


@pytest.mark.parametrize("damage", ["corrupt", "too-long"])
def test_inflater_refuses_a_bad_stream(deflate, damage):
    data = image(3 * SECTOR)
    encoded = bytearray(zlib.compress(data))
    if damage == "corrupt":
        encoded[2] ^= 0xFF  # the first deflate block header
    part = NorPartition()
    w, inf = _inflater(data[: 2 * SECTOR] if damage == "too-long" else data, bytes(encoded), part)
    with pytest.raises(OtaError) as e:
        for off in range(0, len(encoded), 1024):
            inf.feed(off, memoryview(encoded)[off : off + 1024])
    assert e.value.code == errors.INFLATE


def _resumable(data: bytes):
    import struct

    from host_tools.image.resume import deflate_resumable

    encoded, stride, points = deflate_resumable(data, 10)
    m = types.SimpleNamespace(encoded_size=len(encoded), image_size=len(data), zlib_wbits=10,
                              resume=struct.pack(f"<{1 + len(points)}I", stride, *points))
    return encoded, stride, points, m


def test_inflater_goes_on_from_each_resume_point_with_a_fresh_decoder(deflate):
    data = image(5 * 65536 + 777)[:20000] * 17  # compressible, 340,000 bytes: five points
    encoded, stride, points, m = _resumable(data)
    assert inflate_mod.resume_table(m) == (stride, 5) and stride == 65536
    for k in range(1, 6):
        part = NorPartition(size=84 * SECTOR)
        before = SlotWriter(part, len(data), 1024)
        before.write_at(0, memoryview(data)[: k * stride])  # what an earlier attempt left in flash
        w = SlotWriter(part, len(data), 1024)
        w.resume_prefix(k * stride)
        inf = inflate_mod.Inflater(w.write_at, m, bytearray(SECTOR + inflate_mod.MARGIN), bytearray(SECTOR),
                                   chunk=1024, point=k)
        assert inf.next == points[k - 1] // 1024 * 1024 and inf.decoded == k * stride and inf.sha is None
        for off in range(inf.next, len(encoded), 1024):
            assert inf.feed(off, memoryview(encoded)[off : off + 1024])
        assert inf.finished() and inf.decoded == len(data), k
        assert w.sha256(bytearray(SECTOR)) == hashlib.sha256(data).digest()


@pytest.mark.parametrize("damage", ["falling", "past-payload", "odd-stride", "short", "past-image"])
def test_a_resume_table_that_does_not_hold_together_is_not_used(damage):
    import struct

    data = image(3 * 65536 + 5)
    _, stride, points, m = _resumable(data)
    table = [stride, *points]
    if damage == "falling":
        table[1], table[2] = table[2], table[1]
    elif damage == "past-payload":
        table[-1] = m.encoded_size
    elif damage == "odd-stride":
        table[0] = stride + 512
    elif damage == "past-image":
        table[0] = stride * 2
    m.resume = struct.pack(f"<{len(table)}I", *table)[: 6 if damage == "short" else None]
    assert inflate_mod.resume_table(m) == (0, 0)


# -- store and boot state --------------------------------------------------------------------

def test_store_round_trip_and_bounded_error_log(tmp_path):
    path = str(tmp_path / "fota_state.json")
    st = store_mod.Store(path)
    assert st.data["seq_floor"] == 0 and st.data["pending"] is None
    for i in range(12):
        st.log_error(20 + i, "e%d" % i, i)
    st.set_result(16, 5, "verify", "2.0.0", 7)
    st.data["seq_floor"] = 3
    st.save()
    again = store_mod.Store(path).data
    assert again["seq_floor"] == 3 and again["result"]["lwm2m"] == 5
    assert [e[0] for e in again["errors"]] == list(range(24, 32))  # the last MAX_ERRORS
    assert not os.path.exists(path + ".tmp")


def test_store_survives_garbage_and_a_FAT_rename(tmp_path, monkeypatch):
    path = str(tmp_path / "s.json")
    with open(path, "w") as f:
        f.write("{half")
    assert store_mod.read_json(path) is None and store_mod.Store(path).data["errors"] == []
    real = os.rename

    def fat_rename(src, dst):  # FAT refuses to rename over an existing file (EEXIST)
        if os.path.exists(dst):
            raise OSError(17, "exists")
        real(src, dst)

    monkeypatch.setattr(store_mod.os, "rename", fat_rename)
    store_mod.write_atomic(path, '{"seq_floor": 9}')
    assert store_mod.Store(path).data["seq_floor"] == 9
    store_mod.remove(path)
    store_mod.remove(path)  # twice: no error


def test_boot_state_offers_done_source_and_journal(tmp_path):
    bs = state_mod.BootState(str(tmp_path / "st.json"), str(tmp_path / "j.json"), str(tmp_path / "c.json"))
    for i in range(12):
        bs.mark_done(i)
    bs.mark_done(11)
    assert not bs.is_done(3) and all(bs.is_done(i) for i in range(4, 12))
    assert bs.source(7) is None
    bs.pin_source(7, "abcd")
    assert bs.source(7) == "abcd" and bs.source(8) is None
    bs.forget_source()
    assert bs.source(7) is None
    bs.save_journal({"chunk": 4096, "got": "01", "erased": "01"}, "ff00", "ota_1")
    assert bs.journal("ff00", "ota_1")["got"] == "01"
    assert bs.journal("ff00", "ota_0") is None and bs.journal("00ff", "ota_1") is None
    bs.drop_journal()
    assert bs.journal("ff00", "ota_1") is None
    bs.failed(errors.FLASH, "chunk at 0", "2.0.0", None)
    seq, result, errs = state_mod.BootState(str(tmp_path / "st.json")).status()
    assert result["code"] == errors.FLASH and result["lwm2m"] == errors.lwm2m_result(errors.FLASH)
    assert errs[-1][:2] == [errors.FLASH, "chunk at 0"] and bs.is_done(11)
