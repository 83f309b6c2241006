"""Device-side package manifest checks (docs/FORMAT.md, "Device checks, in order").

The agent reads the 32-byte header, learns the manifest length, reads the
manifest and the 64-byte signature, and asks `check` whether to go on. Nothing
has been erased or written yet; every refusal is an `OtaError` with its code:

    from fota.check import manifest
    from fota.errors import OtaError
    from trusted_keys import KEYS

    header = stream.read(manifest.HEADER_SIZE)
    mlen, key_id = manifest.parse_header(header)        # checks 1-2
    signed = header + stream.read(mlen)
    signature = stream.read(manifest.SIGNATURE_SIZE)
    device = manifest.Device("esp32_generic", 0, "A", seq_floor=6, version="1.4.0", now=None)
    try:
        m = manifest.check(signed, signature, KEYS, device, slot_size)   # checks 1-9
    except OtaError as e:
        report(e.code)
    # m.image_size, m.image_sha256, m.encoding, m.zlib_wbits ... drive the download

The manifest is at most 1024 bytes and is walked through a memoryview: no
allocation is larger than one record value, and no exception other than
OtaError leaves `check` or `parse_manifest`, whatever the bytes.
"""

from .ed25519 import small_order, verify
from ..errors import (
    BAD_ENCODING,
    BAD_HEADER,
    BAD_SIGNATURE,
    EXPIRED,
    FORMAT_VERSION,
    KEY_LIST_OLD,
    KEY_REVOKED,
    MALFORMED,
    MANIFEST_SIZE,
    MIN_VERSION,
    ROLLBACK,
    TOO_BIG,
    UNKNOWN_KEY,
    UNSUPPORTED_FIELD,
    WEAK_KEY,
    WRONG_BOARD,
    WRONG_CHIP,
    WRONG_HW_REV,
    OtaError,
)

from ..compat import const


# FORMAT.md layout: header, manifest (TLV), signature, payload.
HEADER_SIZE = const(32)
SIGNATURE_SIZE = const(64)
MANIFEST_MAX = const(1024)

# FORMAT.md "Header (32 bytes)".
_MAGIC = b"FOTA"
_FORMAT_VERSION = const(1)
_SIG_ALG_ED25519 = const(1)  # RFC 8032 pure Ed25519

# FORMAT.md "Manifest: TLV records": type u8 | length u16 | value.
_TLV_HEAD = const(3)
_T_HW_REV = const(0x05)  # the one repeatable record
_T_KEY_LIST = const(0x0E)  # the root-signed key list (fota.check.keylist), checked before the signature
_T_LAST = const(0x0F)  # highest critical type this device knows (0x0F: a delta's base, read by slot.patch)
_T_INFO = const(0x80)  # 0x80..0xFF: informational, skipped
_T_CREATED = const(0x80)  # u32 Unix time the package was signed: the device's signed time floor
_T_RESUME = const(0x82)  # zlib resume points: stride u32 | encoded offset u32 each (FORMAT.md "Resume points")
_RESUME_MAX_LEN = const(196)  # 4 + 4 * 48 points (host_tools/image/resume.py RESUME_MAX); a longer record is ignored
_ENC_RAW = const(0)
_ENC_ZLIB = const(1)
_ENC_DELTA = const(2)  # zlib-compressed patch records applied to the running image (slot/patch.py)
_WBITS_MIN = const(9)
_WBITS_MAX = const(15)

# Per type 0x00..0x0D (index = type): the Manifest attribute, the allowed
# value length (min, max), and which types hold UTF-8 text or raw bytes (bit
# masks by type); the others are little-endian unsigned integers.
_FIELDS = (
    "",
    "sequence",
    "version",
    "board",
    "chip_id",
    "",  # hw_rev: appended to hw_revs
    "image_size",
    "image_sha256",
    "encoding",
    "encoded_size",
    "encoded_sha256",
    "zlib_wbits",
    "min_version",
    "expires",
)
_MIN_LEN = b"\x00\x04\x01\x01\x02\x01\x04\x20\x01\x04\x20\x01\x01\x04"
_MAX_LEN = b"\x00\x04\x20\x20\x02\x10\x04\x20\x01\x04\x20\x01\x20\x04"
_TEXT = const(0x102C)  # version 0x02, board 0x03, hw_rev 0x05, min_version 0x0C
_BYTES = const(0x0480)  # image_sha256 0x07, encoded_sha256 0x0A
_REQUIRED = const(0x03FE)  # types 0x01..0x09


class Manifest:
    """A parsed, signature-checked manifest: plain attributes, None when absent."""

    def __init__(self):
        self.sequence = None
        self.version = None
        self.board = None
        self.chip_id = None
        self.hw_revs = []
        self.image_size = None
        self.image_sha256 = None
        self.encoding = None
        self.encoded_size = None
        self.encoded_sha256 = None
        self.zlib_wbits = None
        self.min_version = None
        self.expires = None
        self.created = None
        self.resume = None  # record 0x82 as bytes (stride, encoded offsets), read by slot.inflate.resume_table


class Device:
    """What the checks compare a manifest with (any object with these attributes will do).

    board: board name ("esp32_generic"); chip_id: ESP chip id (ESP32 0);
    hw_rev: this unit's hardware revision; seq_floor: the stored anti-rollback
    sequence (0 on a fresh device; a package needs a greater one); version:
    the running version string; now: Unix time, or None while the clock is
    not set (expiry is then not checked).
    """

    def __init__(self, board, chip_id, hw_rev, seq_floor=0, version="0", now=None, kl_version=0):
        self.board = board
        self.chip_id = chip_id
        self.hw_rev = hw_rev
        self.seq_floor = seq_floor
        self.version = version
        self.now = now
        self.kl_version = kl_version  # the newest key-list version seen (0: none)
        self.kl_seen = None  # set by check(): the version of a verified key list in the package
        self.kl_stored = None  # the key list pushed to the device on its own (bytes), or None


# Checks 1-2 on the first 32 bytes of a package (more bytes are ignored):
# magic, format_version, header_size and sig_alg, then the manifest_len cap.
# Returns (manifest_len, key_id) with key_id as 8 bytes.
def parse_header(header):
    h = memoryview(header)
    if len(h) < HEADER_SIZE or bytes(h[0:4]) != _MAGIC:
        raise OtaError(BAD_HEADER)
    if h[4] | h[5] << 8 != _FORMAT_VERSION:
        raise OtaError(FORMAT_VERSION)
    if h[6] | h[7] << 8 != HEADER_SIZE or h[20] != _SIG_ALG_ED25519:
        raise OtaError(BAD_HEADER)
    manifest_len = int.from_bytes(h[8:12], "little")
    if manifest_len < 1 or manifest_len > MANIFEST_MAX:
        raise OtaError(MANIFEST_SIZE)
    return manifest_len, bytes(h[12:20])


# Checks 1-9 in FORMAT.md order. `signed` is header + manifest, exactly the
# signed bytes; `signature` the 64 bytes after them; `trusted_keys` a sequence
# of (key_id, public_key) pairs (the generated trusted_keys.KEYS); `device` a
# Device; `slot_size` the bytes of the target partition; `roots` the root keys (pairs)
# a carried key list must be signed by. Returns the Manifest.
#
# A package carrying a key list (record 0x0E) is checked against that list only: the list is
# verified first (root signature, version not below device.kl_version; device.kl_seen is set
# for the caller to store), the signing key must be in it, for this board, not revoked. A
# package without one is checked against `trusted_keys` until the device has seen a list; after
# that against the list pushed to it on its own (device.kl_stored, docs/PROTOCOL.md "Key lists"),
# which must still be the newest seen (else KEY_LIST_OLD).
def check(signed, signature, trusted_keys, device, slot_size, roots=()):
    manifest_len, key_id = parse_header(signed)
    if len(signed) != HEADER_SIZE + manifest_len:
        raise OtaError(MANIFEST_SIZE)
    body = memoryview(signed)[HEADER_SIZE:]
    raw = _record(body, _T_KEY_LIST)
    if raw is not None:
        from . import keylist  # only packages that carry a list pay for the module

        kl = keylist.check(raw, roots, device.kl_version)
        device.kl_seen = kl.version
        if key_id in kl.revoked:
            raise OtaError(KEY_REVOKED)
        trusted_keys = kl.keys_for(device.board)
    elif device.kl_version:
        if device.kl_stored is None:
            raise OtaError(KEY_LIST_OLD)  # a package without a list once a list was seen
        from . import keylist

        kl = keylist.check(device.kl_stored, roots, device.kl_version)
        if key_id in kl.revoked:
            raise OtaError(KEY_REVOKED)
        trusted_keys = kl.keys_for(device.board)
    _check_signature(signed, signature, trusted_keys, key_id)
    m = parse_manifest(body)
    check_device(m, device, slot_size)
    return m


# The value of the first record of type `tag` (a memoryview), or None; framing errors
# also give None (the signature check that follows refuses such a manifest).
def _record(mv, tag):
    pos = 0
    end = len(mv)
    while end - pos >= _TLV_HEAD:
        start = pos + _TLV_HEAD
        nxt = start + (mv[pos + 1] | mv[pos + 2] << 8)
        if nxt > end:
            return None
        if mv[pos] == tag:
            return mv[start:nxt]
        pos = nxt
    return None


# Checks 3-4: some trusted key has this id and verifies the signature (two
# trusted keys may share an id; any of them will do).
def _check_signature(signed, signature, trusted_keys, key_id):
    known = False
    for kid, public_key in trusted_keys:
        if kid == key_id:
            known = True
            if small_order(public_key):
                raise OtaError(WEAK_KEY)  # small order: signatures by it can be forged
            if verify(public_key, signed, signature):
                return
    raise OtaError(BAD_SIGNATURE if known else UNKNOWN_KEY)


# Check 5 on the manifest bytes (already verified): TLV framing, unknown
# critical types, duplicates, value lengths, required records. Returns a
# Manifest; raises OtaError(MALFORMED or UNSUPPORTED_FIELD) and nothing else.
def parse_manifest(body):
    mv = memoryview(body)
    _frame(mv)
    m = Manifest()
    seen = 0
    pos = 0
    end = len(mv)
    while pos < end:
        tag = mv[pos]
        start = pos + _TLV_HEAD
        pos = start + (mv[pos + 1] | mv[pos + 2] << 8)
        if tag >= _T_INFO:
            if tag == _T_CREATED and pos - start == 4:
                setattr(m, "created", int.from_bytes(mv[start:pos], "little"))  # noqa: B010 - as the fields above are set; pyright types attributes from __init__
            elif tag == _T_RESUME and pos - start <= _RESUME_MAX_LEN:
                setattr(m, "resume", bytes(mv[start:pos]))  # noqa: B010 - checked where it is used (slot.inflate)
            continue  # informational (notes, future): not used here
        bit = 1 << tag
        if seen & bit and tag != _T_HW_REV:
            raise OtaError(MALFORMED)
        seen |= bit
        if tag >= _T_KEY_LIST:
            continue  # 0x0E checked by check() before the signature; 0x0F by slot.patch.begin
        size = pos - start
        if size < _MIN_LEN[tag] or size > _MAX_LEN[tag]:
            raise OtaError(MALFORMED)
        value = mv[start:pos]
        if bit & _TEXT:
            value = _text(value)
        elif bit & _BYTES:
            value = bytes(value)
        else:
            value = int.from_bytes(value, "little")
        if tag == _T_HW_REV:
            m.hw_revs.append(value)
        else:
            setattr(m, _FIELDS[tag], value)
    if seen & _REQUIRED != _REQUIRED:
        raise OtaError(MALFORMED)
    if _ENC_ZLIB <= m.encoding <= _ENC_DELTA and (m.encoded_sha256 is None or m.zlib_wbits is None):  # pyright: ignore[reportOperatorIssue]
        raise OtaError(MALFORMED)  # (a delta without its base record: MALFORMED in slot.patch.begin)
    return m


# First pass: every record header and value lies inside the manifest
# (MALFORMED), then no unknown critical type (UNSUPPORTED_FIELD). Framing
# comes first so a broken manifest is never reported as a newer one.
def _frame(mv):
    unknown = False
    pos = 0
    end = len(mv)
    while pos < end:
        if end - pos < _TLV_HEAD:
            raise OtaError(MALFORMED)
        tag = mv[pos]
        pos += _TLV_HEAD + (mv[pos + 1] | mv[pos + 2] << 8)
        if pos > end:
            raise OtaError(MALFORMED)
        if tag == 0 or _T_LAST < tag < _T_INFO:
            unknown = True
    if unknown:
        raise OtaError(UNSUPPORTED_FIELD)


# A text value: strict UTF-8 (RFC 3629, as CPython decodes it) or MALFORMED.
# MicroPython's own decoder lets overlong forms and surrogates through, so the
# check is done here to give the same verdict on both.
def _text(mv):
    if not _utf8_ok(mv):
        raise OtaError(MALFORMED)
    try:
        return str(bytes(mv), "utf-8")
    except UnicodeError:
        raise OtaError(MALFORMED)


# True if the bytes are well-formed UTF-8 (Unicode 15, table 3-7).
def _utf8_ok(mv):
    i = 0
    end = len(mv)
    while i < end:
        c = mv[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            more = 1
        elif 0xE0 <= c <= 0xEF:
            more = 2
            if c == 0xE0:
                lo = 0xA0  # no overlong 3-byte forms
            elif c == 0xED:
                hi = 0x9F  # no surrogates
        elif 0xF0 <= c <= 0xF4:
            more = 3
            if c == 0xF0:
                lo = 0x90  # no overlong 4-byte forms
            elif c == 0xF4:
                hi = 0x8F  # nothing above U+10FFFF
        else:
            return False
        if i + more >= end:
            return False
        c = mv[i + 1]
        if c < lo or c > hi:
            return False
        for j in range(i + 2, i + more + 1):
            if mv[j] & 0xC0 != 0x80:
                return False
        i += more + 1
    return True


# Checks 6-9 on a parsed manifest: board, chip, hardware revision; sequence
# above the floor; expiry (only with a set clock) and minimum version; sizes
# against the slot, then the encoding and its parameters.
def check_device(m, device, slot_size):
    if m.board != device.board:
        raise OtaError(WRONG_BOARD)
    if m.chip_id != device.chip_id:
        raise OtaError(WRONG_CHIP)
    if "*" not in m.hw_revs and device.hw_rev not in m.hw_revs:
        raise OtaError(WRONG_HW_REV)
    if m.sequence <= device.seq_floor:
        raise OtaError(ROLLBACK)
    if m.expires is not None and device.now is not None and device.now > m.expires:
        raise OtaError(EXPIRED)
    if m.min_version is not None and version_tuple(device.version) < version_tuple(m.min_version):
        raise OtaError(MIN_VERSION)
    if m.image_size > slot_size or m.encoded_size > slot_size:
        raise OtaError(TOO_BIG)
    if m.encoding == _ENC_RAW:
        if m.encoded_size != m.image_size:
            raise OtaError(BAD_ENCODING)  # a raw payload is the image itself
    elif m.encoding <= _ENC_DELTA:  # zlib, or a delta (zlib-deflated patch records)
        if m.zlib_wbits < _WBITS_MIN or m.zlib_wbits > _WBITS_MAX:
            raise OtaError(BAD_ENCODING)
    else:
        raise OtaError(BAD_ENCODING)


# "1.4.2" -> (1, 4, 2) for comparison. Each dot-separated part counts by its
# leading digits ("0-rc1" -> 0, "rc" -> 0) and trailing zero parts are
# dropped, so "1.4" == "1.4.0" == "1.4.0-rc1" < "1.4.1". None or "" -> ().
def version_tuple(text):
    out = []
    if text:
        for part in text.split("."):
            n = 0
            for ch in part:
                if ch < "0" or ch > "9":
                    break
                n = n * 10 + ord(ch) - 48
            out.append(n)
    while out and out[-1] == 0:
        out.pop()
    return tuple(out)
