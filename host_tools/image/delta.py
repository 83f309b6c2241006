"""Delta payloads (docs/FORMAT.md "Delta payloads", encoding 2): bsdiff matches as patch records.

bsdiff4 finds the matches (suffix sorting, the bsdiff algorithm); its control triples
(diff length, extra length, seek) become records the device applies while streaming, reading
the base from its running slot (firmware/fota/slot/patch.py):

    varint(length << 2 | op)    op 0 COPY (base bytes), 1 ADD (base + patch bytes), 2 INSERT
                                (patch bytes), 3 SEEK (base pointer += zigzag(length))

A diff region is split into COPY for runs of unchanged bytes and ADD for the bytes that differ
(short unchanged gaps stay inside an ADD), so the device touches single bytes only where the
images differ. The record stream is then deflated (zlib, like `encoding zlib`).

    records = make_records(base, new)
    assert apply_records(base, records) == new
    payload, patch_size = encode_delta(base, new, wbits=10)
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import bsdiff4.core

from host_tools.errors import FotaError

COPY, ADD, INSERT, SEEK = 0, 1, 2, 3
MAX_LENGTH = (1 << 26) - 1  # the device reads at most 4 varint bytes (28 bits = length << 2 | op)
GAP = 4  # unchanged bytes between two changed runs shorter than this stay inside one ADD
DELTA_WBITS = 11  # at least a 2 KiB zlib window for patches (bench/delta.py: ~20 % smaller than 1 KiB)
_CHANGED = re.compile(rb"[^\x00]+")


class DeltaError(FotaError):
    """A patch that cannot be made or does not apply."""


@dataclass(frozen=True)
class DeltaStats:
    """Sizes of one delta, for `fota inspect` and the bench."""

    records: int
    copied: int
    added: int
    inserted: int
    patch_size: int
    encoded_size: int


def _varint(v: int, out: bytearray) -> None:
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)


def _put(out: bytearray, op: int, length: int, data: bytes = b"") -> None:
    # One record (split when longer than MAX_LENGTH); data follows ADD and INSERT headers.
    pos = 0
    while length > 0:
        n = min(length, MAX_LENGTH)
        _varint(n << 2 | op, out)
        if op in (ADD, INSERT):
            out += data[pos : pos + n]
        pos += n
        length -= n


def _zigzag(d: int) -> int:
    return d << 1 if d >= 0 else (-d << 1) - 1


def _diff_region(out: bytearray, diff: bytes) -> None:
    # COPY the unchanged stretches, ADD the changed runs (merging runs across gaps < GAP).
    pos = 0
    runs: list[tuple[int, int]] = []
    for m in _CHANGED.finditer(diff):
        if runs and m.start() - runs[-1][1] < GAP:
            runs[-1] = (runs[-1][0], m.end())
        else:
            runs.append((m.start(), m.end()))
    for start, end in runs:
        _put(out, COPY, start - pos)
        _put(out, ADD, end - start, diff[start:end])
        pos = end
    _put(out, COPY, len(diff) - pos)


def make_records(base: bytes, new: bytes) -> bytes:
    """The record stream that turns `base` into `new` (uncompressed)."""
    control, diff, extra = bsdiff4.core.diff(base, new)
    out = bytearray()
    dpos = epos = 0
    seek = 0
    for i in range(0, len(control), 24):
        x, y, z = (bsdiff4.core.decode_int64(control[i + k : i + k + 8]) for k in (0, 8, 16))
        if x:
            if seek:
                _put_seek(out, seek)
                seek = 0
            _diff_region(out, diff[dpos : dpos + x])
        if y:
            _put(out, INSERT, y, extra[epos : epos + y])
        dpos += x
        epos += y
        seek += z  # applied lazily: a seek before nothing read is folded into the next one
    return bytes(out)


def _put_seek(out: bytearray, d: int) -> None:
    while d:
        step = max(-(MAX_LENGTH >> 1), min(MAX_LENGTH >> 1, d))
        _varint(_zigzag(step) << 2 | SEEK, out)
        d -= step


def _records(patch: bytes):
    # (op, length, data) for each record; DeltaError on a truncated stream.
    pos = 0
    while pos < len(patch):
        v = shift = 0
        while True:
            if pos >= len(patch) or shift >= 28:
                raise DeltaError("patch ends inside a record header")
            b = patch[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        op, length = v & 3, v >> 2
        data = b""
        if op in (ADD, INSERT):
            data = patch[pos : pos + length]
            if len(data) != length:
                raise DeltaError("patch ends inside a record")
            pos += length
        yield op, length, data


def apply_records(base: bytes, patch: bytes) -> bytes:
    """The device's algorithm on the host: the image the records make from `base`."""
    out = bytearray()
    ptr = 0
    for op, length, data in _records(patch):
        if op == SEEK:
            ptr += (length >> 1) ^ -(length & 1)
            if not 0 <= ptr <= len(base):
                raise DeltaError("patch seeks outside the base")
        elif op == INSERT:
            out += data
        else:
            if ptr + length > len(base):
                raise DeltaError("patch reads beyond the base")
            chunk = base[ptr : ptr + length]
            out += chunk if op == COPY else bytes((a + b) & 0xFF for a, b in zip(chunk, data))
            ptr += length
    return bytes(out)


def stats(records: bytes, encoded_size: int) -> DeltaStats:
    n = copied = added = inserted = 0
    for op, length, _ in _records(records):
        n += 1
        copied += length if op == COPY else 0
        added += length if op == ADD else 0
        inserted += length if op == INSERT else 0
    return DeltaStats(n, copied, added, inserted, len(records), encoded_size)


def encode_delta(base: bytes, new: bytes, wbits: int) -> tuple[bytes, int]:
    """(payload, patch_size): the records deflated with a 2**wbits window, and their length."""
    records = make_records(base, new)
    if apply_records(base, records) != new:  # never ship a patch the device would get wrong
        raise DeltaError("the delta does not rebuild the new image (bsdiff4 output not understood)")
    comp = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return comp.compress(records) + comp.flush(), len(records)


def decode_delta(base: bytes, payload: bytes, wbits: int) -> bytes:
    """The image a delta payload makes from `base` (DeltaError when it does not inflate or apply)."""
    try:
        records = zlib.decompress(payload, wbits)
    except zlib.error as exc:
        raise DeltaError(f"delta payload does not inflate: {exc}") from exc
    return apply_records(base, records)

