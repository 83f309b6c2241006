"""SHA-512 (FIPS 180-4) in pure Python, for ports whose hashlib lacks it.

The ESP32 MicroPython port ships sha256 and sha1 only, and Ed25519 needs
SHA-512. Usage (same results as CPython's hashlib.sha512):

    from fota.check.sha512 import sha512, SHA512
    digest = sha512(b"abc")
    h = SHA512()
    h.update(b"a")
    h.update(b"bc")
    digest = h.digest()

Each 64-bit word is held as four 16-bit limbs, most significant first, and
no intermediate value reaches 2^30: every value is a small int on every
port, including the ESP32's 31-bit small ints, so hashing allocates no big
ints (32-bit halves would: on an ESP32 each of them above 2^30 is a heap
object, ~7x slower and a steady stream of garbage). Keep the input short (an
Ed25519 R || A || manifest): ~0.47 MB/s under the Unix port on a desktop,
32-bit or 64-bit alike, far less on a device.
"""

import struct
from array import array

from ..compat import const


_M16 = const(0xFFFF)
_BLOCK = const(128)  # FIPS 180-4 section 5.1.2: 1024-bit blocks

# FIPS 180-4 section 4.2.3: the 80 round constants.
# Parsed on first use (see _tables), not at import.
_K_HEX = (
    "428a2f98d728ae22 7137449123ef65cd b5c0fbcfec4d3b2f e9b5dba58189dbbc "
    "3956c25bf348b538 59f111f1b605d019 923f82a4af194f9b ab1c5ed5da6d8118 "
    "d807aa98a3030242 12835b0145706fbe 243185be4ee4b28c 550c7dc3d5ffb4e2 "
    "72be5d74f27b896f 80deb1fe3b1696b1 9bdc06a725c71235 c19bf174cf692694 "
    "e49b69c19ef14ad2 efbe4786384f25e3 0fc19dc68b8cd5b5 240ca1cc77ac9c65 "
    "2de92c6f592b0275 4a7484aa6ea6e483 5cb0a9dcbd41fbd4 76f988da831153b5 "
    "983e5152ee66dfab a831c66d2db43210 b00327c898fb213f bf597fc7beef0ee4 "
    "c6e00bf33da88fc2 d5a79147930aa725 06ca6351e003826f 142929670a0e6e70 "
    "27b70a8546d22ffc 2e1b21385c26c926 4d2c6dfc5ac42aed 53380d139d95b3df "
    "650a73548baf63de 766a0abb3c77b2a8 81c2c92e47edaee6 92722c851482353b "
    "a2bfe8a14cf10364 a81a664bbc423001 c24b8b70d0f89791 c76c51a30654be30 "
    "d192e819d6ef5218 d69906245565a910 f40e35855771202a 106aa07032bbd1b8 "
    "19a4c116b8d2d0c8 1e376c085141ab53 2748774cdf8eeb99 34b0bcb5e19b48a8 "
    "391c0cb3c5c95a63 4ed8aa4ae3418acb 5b9cca4f7763e373 682e6ff3d6b2b8a3 "
    "748f82ee5defb2fc 78a5636f43172f60 84c87814a1f0ab72 8cc702081a6439ec "
    "90befffa23631e28 a4506cebde82bde9 bef9a3f7b2c67915 c67178f2e372532b "
    "ca273eceea26619c d186b8c721c0c207 eada7dd6cde0eb1e f57d4f7fee6ed178 "
    "06f067aa72176fba 0a637dc5a2c898a6 113f9804bef90dae 1b710b35131c471b "
    "28db77f523047d84 32caab7b40c72493 3c9ebe0a15c9bebc 431d67c49c100d4c "
    "4cc5d4becb3e42b6 597f299cfc657e2a 5fcb6fab3ad6faec 6c44198c4a475817"
)

# FIPS 180-4 section 5.3.5: the initial hash value H(0).
_IV_HEX = (
    "6a09e667f3bcc908 bb67ae8584caa73b 3c6ef372fe94f82b a54ff53a5f1d36f1 "
    "510e527fade682d1 9b05688c2b3e6c1f 1f83d9abfb41bd6b 5be0cd19137e2179"
)

_tabs = None  # (k, iv, w): constants and schedule scratch, built on first use


# Parse "hhhhhhhhllllllll hhhh..." (17 characters a word) into an array of
# 16-bit limbs: 2 bytes a limb on every port, allocated once at its size.
def _limbs(text):
    n = 4 * ((len(text) + 1) // 17)
    out = array("H", bytes(2 * n))
    for i in range(n):
        o = (i >> 2) * 17 + (i & 3) * 4
        out[i] = int(text[o : o + 4], 16)
    return out


# Return the round constants, the IV and a 320-limb message-schedule
# scratch array, made on the first call only. The scratch is shared by all
# hashers (it is fully rewritten for each block), so hashing allocates no
# large blocks later, when a small heap may be too fragmented for them.
def _tables():
    global _tabs
    if _tabs is None:
        _tabs = (_limbs(_K_HEX), _limbs(_IV_HEX), array("H", bytes(640)))
    return _tabs


# Limb arithmetic, used below. Word x is (x0, x1, x2, x3), x0 most
# significant. ROTR(x, 16q + s) has limb j = x[j-q] >> s | x[j-q-1] << (16-s)
# (indices mod 4, the left part masked to 16 bits); SHR the same without
# the wrap. A limb (< 2^16) shifted left by up to 14 stays below 2^30, so
# the left parts of a function are XORed first and masked once; only
# sigma0's ROTR1 (a shift by 15) masks its input bit first. Sums of five
# limbs stay below 2^19; carries are propagated once per new word.


# Expand the 16 message words in w[0:64] into the 80-word schedule w[0:320]
# (FIPS 180-4 section 6.4.2 step 1): W[t] = s1(W[t-2]) + W[t-7] +
# s0(W[t-15]) + W[t-16].
def _schedule(w):
    m = _M16
    for i in range(64, 320, 4):
        x0 = w[i - 60]
        x1 = w[i - 59]
        x2 = w[i - 58]
        x3 = w[i - 57]
        # sigma0 = ROTR1 ^ ROTR8 ^ SHR7
        a0 = (x0 >> 1) ^ (x0 >> 8) ^ (x0 >> 7) ^ ((x3 & 1) << 15) ^ ((x3 << 8) & m)
        a1 = (x1 >> 1) ^ (x1 >> 8) ^ (x1 >> 7) ^ ((x0 & 1) << 15) ^ (((x0 << 8) ^ (x0 << 9)) & m)
        a2 = (x2 >> 1) ^ (x2 >> 8) ^ (x2 >> 7) ^ ((x1 & 1) << 15) ^ (((x1 << 8) ^ (x1 << 9)) & m)
        a3 = (x3 >> 1) ^ (x3 >> 8) ^ (x3 >> 7) ^ ((x2 & 1) << 15) ^ (((x2 << 8) ^ (x2 << 9)) & m)
        x0 = w[i - 8]
        x1 = w[i - 7]
        x2 = w[i - 6]
        x3 = w[i - 5]
        # sigma1 = ROTR19 ^ ROTR61 ^ SHR6
        a0 += (x3 >> 3) ^ (x1 >> 13) ^ (x0 >> 6) ^ (((x2 << 13) ^ (x0 << 3)) & m)
        a1 += (x0 >> 3) ^ (x2 >> 13) ^ (x1 >> 6) ^ (((x3 << 13) ^ (x1 << 3) ^ (x0 << 10)) & m)
        a2 += (x1 >> 3) ^ (x3 >> 13) ^ (x2 >> 6) ^ (((x0 << 13) ^ (x2 << 3) ^ (x1 << 10)) & m)
        a3 += (x2 >> 3) ^ (x0 >> 13) ^ (x3 >> 6) ^ (((x1 << 13) ^ (x3 << 3) ^ (x2 << 10)) & m)
        a3 += w[i - 25] + w[i - 61]
        a2 += w[i - 26] + w[i - 62] + (a3 >> 16)
        a1 += w[i - 27] + w[i - 63] + (a2 >> 16)
        w[i] = (a0 + w[i - 28] + w[i - 64] + (a1 >> 16)) & m
        w[i + 1] = a1 & m
        w[i + 2] = a2 & m
        w[i + 3] = a3 & m


# Run the 80 rounds over schedule w and add the result into state st
# (FIPS 180-4 section 6.4.2 steps 2-4). st holds 8 words as 32 limbs.
def _rounds(st, w, k):
    m = _M16
    a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3 = st[0:16]
    e0, e1, e2, e3, f0, f1, f2, f3, g0, g1, g2, g3, h0, h1, h2, h3 = st[16:32]
    for i in range(0, 320, 4):
        # T1 = h + Sigma1(e) + Ch(e, f, g) + K[t] + W[t], limbs not yet carried;
        # Sigma1 = ROTR14 ^ ROTR18 ^ ROTR41, Ch = g ^ (e & (f ^ g))
        t0 = h0 + k[i] + w[i] + (g0 ^ (e0 & (f0 ^ g0)))
        t0 += (e0 >> 14) ^ (e3 >> 2) ^ (e2 >> 9) ^ (((e3 << 2) ^ (e2 << 14) ^ (e1 << 7)) & m)
        t1 = h1 + k[i + 1] + w[i + 1] + (g1 ^ (e1 & (f1 ^ g1)))
        t1 += (e1 >> 14) ^ (e0 >> 2) ^ (e3 >> 9) ^ (((e0 << 2) ^ (e3 << 14) ^ (e2 << 7)) & m)
        t2 = h2 + k[i + 2] + w[i + 2] + (g2 ^ (e2 & (f2 ^ g2)))
        t2 += (e2 >> 14) ^ (e1 >> 2) ^ (e0 >> 9) ^ (((e1 << 2) ^ (e0 << 14) ^ (e3 << 7)) & m)
        t3 = h3 + k[i + 3] + w[i + 3] + (g3 ^ (e3 & (f3 ^ g3)))
        t3 += (e3 >> 14) ^ (e2 >> 2) ^ (e1 >> 9) ^ (((e2 << 2) ^ (e1 << 14) ^ (e0 << 7)) & m)
        h0 = g0
        h1 = g1
        h2 = g2
        h3 = g3
        g0 = f0
        g1 = f1
        g2 = f2
        g3 = f3
        f0 = e0
        f1 = e1
        f2 = e2
        f3 = e3
        # e = d + T1
        e3 = d3 + t3
        e2 = d2 + t2 + (e3 >> 16)
        e1 = d1 + t1 + (e2 >> 16)
        e0 = (d0 + t0 + (e1 >> 16)) & m
        e1 &= m
        e2 &= m
        e3 &= m
        d0 = c0
        d1 = c1
        d2 = c2
        d3 = c3
        c0 = b0
        c1 = b1
        c2 = b2
        c3 = b3
        b0 = a0
        b1 = a1
        b2 = a2
        b3 = a3
        # a = T1 + Sigma0(a) + Maj(a, b, c) (a, b, c now in b, c, d);
        # Sigma0 = ROTR28 ^ ROTR34 ^ ROTR39
        t3 += (b3 & c3) | (d3 & (b3 | c3))
        t3 += (b2 >> 12) ^ (b1 >> 2) ^ (b1 >> 7) ^ (((b1 << 4) ^ (b0 << 14) ^ (b0 << 9)) & m)
        t2 += (b2 & c2) | (d2 & (b2 | c2))
        t2 += (b1 >> 12) ^ (b0 >> 2) ^ (b0 >> 7) ^ (((b0 << 4) ^ (b3 << 14) ^ (b3 << 9)) & m)
        t1 += (b1 & c1) | (d1 & (b1 | c1))
        t1 += (b0 >> 12) ^ (b3 >> 2) ^ (b3 >> 7) ^ (((b3 << 4) ^ (b2 << 14) ^ (b2 << 9)) & m)
        t0 += (b0 & c0) | (d0 & (b0 | c0))
        t0 += (b3 >> 12) ^ (b2 >> 2) ^ (b2 >> 7) ^ (((b2 << 4) ^ (b1 << 14) ^ (b1 << 9)) & m)
        a3 = t3
        a2 = t2 + (a3 >> 16)
        a1 = t1 + (a2 >> 16)
        a0 = (t0 + (a1 >> 16)) & m
        a1 &= m
        a2 &= m
        a3 &= m
    new = (a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3,
           e0, e1, e2, e3, f0, f1, f2, f3, g0, g1, g2, g3, h0, h1, h2, h3)
    # add as 64-bit words: carries run from limb 3 up to limb 0 of each word
    for j in range(0, 32, 4):
        v = st[j + 3] + new[j + 3]
        st[j + 3] = v & m
        v = st[j + 2] + new[j + 2] + (v >> 16)
        st[j + 2] = v & m
        v = st[j + 1] + new[j + 1] + (v >> 16)
        st[j + 1] = v & m
        st[j] = (st[j] + new[j] + (v >> 16)) & m


# Incremental SHA-512: update() any number of times, then digest() once or more.
class SHA512:
    digest_size = 64
    block_size = _BLOCK

    def __init__(self, data=b""):
        self._k, iv, self._w = _tables()
        self._st = list(iv)
        self._buf = bytearray()
        self._len = 0
        if data:
            self.update(data)

    # Hash one 128-byte block held in buf at offset off.
    def _block(self, buf, off):
        w = self._w
        for i in range(64):  # big-endian limbs, read in place
            w[i] = (buf[off] << 8) | buf[off + 1]
            off += 2
        _schedule(w)
        _rounds(self._st, w, self._k)

    # Absorb bytes; whole blocks are hashed straight from data, no copies.
    def update(self, data):
        data = memoryview(data)
        self._len += len(data)
        buf = self._buf
        off = 0
        if buf:
            take = min(_BLOCK - len(buf), len(data))
            buf.extend(data[:take])
            off = take
            if len(buf) < _BLOCK:
                return
            self._block(buf, 0)
            buf[:] = b""
        end = len(data) - _BLOCK
        while off <= end:
            self._block(data, off)
            off += _BLOCK
        if off < len(data):
            buf.extend(data[off:])

    # Return the 64-byte digest; the object stays usable for more update().
    def digest(self):
        saved_st = list(self._st)
        saved_buf = bytes(self._buf)
        saved_len = self._len
        bits = saved_len * 8
        pad = (_BLOCK - 17 - saved_len) % _BLOCK  # 0x80, pad, 16-byte length
        self.update(b"\x80" + bytes(pad) + struct.pack(">QQ", bits >> 64, bits & ((1 << 64) - 1)))
        out = struct.pack(">32H", *self._st)
        self._st = saved_st
        self._buf = bytearray(saved_buf)
        self._len = saved_len
        return out

    # Hex form of digest(), like hashlib.
    def hexdigest(self):
        return "".join("%02x" % b for b in self.digest())


# One-shot helper: sha512(data) -> 64-byte digest.
def sha512(data):
    return SHA512(data).digest()
