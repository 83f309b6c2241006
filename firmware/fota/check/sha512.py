"""SHA-512 (FIPS 180-4) in pure Python, for ports whose hashlib lacks it.

The ESP32 MicroPython port ships sha256 and sha1 only, and Ed25519 needs
SHA-512. Usage (same results as CPython's hashlib.sha512):

    from fota.check.sha512 import sha512, SHA512
    digest = sha512(b"abc")
    h = SHA512()
    h.update(b"a")
    h.update(b"bc")
    digest = h.digest()

Each 64-bit word is held as two 32-bit halves (hi, lo) so that every
intermediate value stays a small int on 64-bit ports (63-bit small ints):
64-bit words would be heap-allocated big ints, several times slower. On
32-bit ports (ESP32: 31-bit small ints) part of the halves still spill
into big ints: correct, slower. Keep the input short (an Ed25519
R || A || manifest): ~0.9 MB/s under the Unix port on a desktop, ~0.3 MB/s
under CPython, far less on a device.
"""

import struct

from ..compat import const


_M32 = const(0xFFFFFFFF)
_BLOCK = const(128)  # FIPS 180-4 section 5.1.2: 1024-bit blocks

# FIPS 180-4 section 4.2.3: the 80 round constants, hi and lo halves.
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


# Split "hhhhhhhhllllllll ..." into a flat list of 32-bit halves.
def _halves(text):
    out = []
    for word in text.split():
        out.append(int(word[:8], 16))
        out.append(int(word[8:], 16))
    return out


# Return the round constants, the IV and a 160-entry message-schedule
# scratch list, made on the first call only. The scratch is shared by all
# hashers (it is fully rewritten for each block), so hashing allocates no
# large blocks later, when a small heap may be too fragmented for them.
def _tables():
    global _tabs
    if _tabs is None:
        _tabs = (tuple(_halves(_K_HEX)), tuple(_halves(_IV_HEX)), [0] * 160)
    return _tabs


# Expand the 16 message words in w[0:32] into the 80-word schedule w[0:160]
# (FIPS 180-4 section 6.4.2 step 1). Halves sit at w[2t] (hi), w[2t+1] (lo).
def _schedule(w):
    m = _M32
    for i in range(32, 160, 2):
        xh = w[i - 30]
        xl = w[i - 29]
        # sigma0 = ROTR1 ^ ROTR8 ^ SHR7; (x & 1) << 31 keeps small ints small
        s0h = ((xh >> 1) ^ ((xl & 1) << 31) ^ (xh >> 8) ^ (xl << 24) ^ (xh >> 7)) & m
        s0l = ((xl >> 1) ^ ((xh & 1) << 31) ^ (xl >> 8) ^ (xh << 24) ^ (xl >> 7) ^ (xh << 25)) & m
        xh = w[i - 4]
        xl = w[i - 3]
        # sigma1 = ROTR19 ^ ROTR61 ^ SHR6
        s1h = ((xh >> 19) ^ (xl << 13) ^ (xl >> 29) ^ (xh << 3) ^ (xh >> 6)) & m
        s1l = ((xl >> 19) ^ (xh << 13) ^ (xh >> 29) ^ (xl << 3) ^ (xl >> 6) ^ (xh << 26)) & m
        lo = s1l + w[i - 13] + s0l + w[i - 31]
        w[i] = (s1h + w[i - 14] + s0h + w[i - 32] + (lo >> 32)) & m
        w[i + 1] = lo & m


# Run the 80 rounds over schedule w and add the result into state st
# (FIPS 180-4 section 6.4.2 steps 2-4). st holds 8 words as 16 halves.
def _rounds(st, w, k):
    m = _M32
    ah, al, bh, bl, ch_, cl, dh, dl = st[0:8]
    eh, el, fh, fl, gh, gl, hh, hl = st[8:16]
    for i in range(0, 160, 2):
        # Sigma1(e) = ROTR14 ^ ROTR18 ^ ROTR41
        s1h = ((eh >> 14) ^ (el << 18) ^ (eh >> 18) ^ (el << 14) ^ (el >> 9) ^ (eh << 23)) & m
        s1l = ((el >> 14) ^ (eh << 18) ^ (el >> 18) ^ (eh << 14) ^ (eh >> 9) ^ (el << 23)) & m
        # T1 = h + Sigma1(e) + Ch(e, f, g) + K[t] + W[t], carry folded below
        t1l = hl + s1l + (gl ^ (el & (fl ^ gl))) + k[i + 1] + w[i + 1]
        t1h = hh + s1h + (gh ^ (eh & (fh ^ gh))) + k[i] + w[i] + (t1l >> 32)
        t1l &= m
        # Sigma0(a) = ROTR28 ^ ROTR34 ^ ROTR39
        s0h = ((ah >> 28) ^ (al << 4) ^ (al >> 2) ^ (ah << 30) ^ (al >> 7) ^ (ah << 25)) & m
        s0l = ((al >> 28) ^ (ah << 4) ^ (ah >> 2) ^ (al << 30) ^ (ah >> 7) ^ (al << 25)) & m
        # T2 = Sigma0(a) + Maj(a, b, c)
        t2l = s0l + ((al & bl) | (cl & (al | bl)))
        t2h = s0h + ((ah & bh) | (ch_ & (ah | bh)))
        hh = gh
        hl = gl
        gh = fh
        gl = fl
        fh = eh
        fl = el
        el = dl + t1l
        eh = (dh + t1h + (el >> 32)) & m
        el &= m
        dh = ch_
        dl = cl
        ch_ = bh
        cl = bl
        bh = ah
        bl = al
        al = t1l + t2l
        ah = (t1h + t2h + (al >> 32)) & m
        al &= m
    new = (ah, al, bh, bl, ch_, cl, dh, dl, eh, el, fh, fl, gh, gl, hh, hl)
    # add as 64-bit words: lo halves carry into hi halves
    for j in range(0, 16, 2):
        lo = st[j + 1] + new[j + 1]
        st[j] = (st[j] + new[j] + (lo >> 32)) & m
        st[j + 1] = lo & m


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
        w[0:32] = struct.unpack_from(">32I", buf, off)
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
        out = struct.pack(">16I", *self._st)
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
