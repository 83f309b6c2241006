"""The Ed25519 and SHA-512 vectors under a 32-bit MicroPython (31-bit small ints, as on an ESP32).

Runs when FOTA_MICROPYTHON32 names such a binary (`make micropython32 MICROPY_DIR=...` builds one);
skipped otherwise. The same checks as tests/test_ed25519.py, on the interpreter whose small ints
match the device's: RFC 8032 section 7.1, cryptography-vectors' sign.input, SHA-512 lengths,
verify in a 48k heap, and SHA-512 allocating no big ints.
"""

from __future__ import annotations

import hashlib
import os

import pytest

import conftest
import test_ed25519 as vec
from host_tools.sim.interpreter import check_micropython

MP32 = os.environ.get("FOTA_MICROPYTHON32")
pytestmark = [
    pytest.mark.fw,
    pytest.mark.skipif(not MP32, reason="set FOTA_MICROPYTHON32 to a 32-bit MicroPython (make micropython32 MICROPY_DIR=...)"),
]


@pytest.fixture(autouse=True)
def on_32bit(monkeypatch):
    """Route conftest.run_micropython (which test_ed25519's helpers use) to the 32-bit binary."""
    info = check_micropython(MP32)
    assert info.small_int_bits == 31, f"{MP32}: {info.label}, not a 32-bit build"
    monkeypatch.setattr(conftest, "MICROPYTHON", info.path)


def test_rfc8032_32bit() -> None:
    vectors = vec.rfc8032_vectors()
    assert vec.mp_verify(vectors) == "1" * len(vectors)


def test_sign_input_32bit() -> None:
    vectors = vec.sampled_vectors()  # 256 keys, messages 0..1020 bytes, each with 4 corruptions
    got = vec.mp_verify(vectors)
    bad = [v.name for v, c in zip(vectors, got) if c != ("1" if v.expected else "0")]
    assert len(got) == len(vectors) and not bad, bad[:20]


def test_verify_in_48k_heap_32bit() -> None:
    vectors = vec.rfc8032_vectors()
    bad = vectors[3]._replace(sig=vec.flip(vectors[3].sig, 40, 1), expected=False)
    assert vec.mp_verify(vectors + [bad], heapsize="48k") == "111110"


def test_sha512_32bit() -> None:
    cases = [(n, 1 + n % 37) for n in vec.SHA_LENGTHS]
    res = conftest.run_micropython(["-c", vec.MP_SHA512], stdin="".join(f"{n} {s}\n" for n, s in cases).encode())
    assert res.returncode == 0, res.stderr.decode()
    for (n, _), line in zip(cases, res.stdout.decode().split("\n")):
        want = hashlib.sha512(vec.sha_data(n)).hexdigest()
        assert line == f"{want} {want}", n


SHA_ALLOC = """
import gc
from fota.check import sha512 as s
k, iv, w = s._tables()
st = list(iv)
for i in range(64):
    w[i] = (i * 40503) & 0xFFFF
s._schedule(w)
s._rounds(st, w, k)
gc.collect()
gc.disable()
a = gc.mem_alloc()
s._schedule(w)
s._rounds(st, w, k)
print(gc.mem_alloc() - a)
"""


def test_sha512_block_allocates_no_big_ints() -> None:
    # One block: the two 16-entry state slices and the 32-entry result tuple, nothing per round.
    res = conftest.run_micropython(["-c", SHA_ALLOC])
    assert res.returncode == 0, res.stderr.decode()
    assert int(res.stdout) < 512
