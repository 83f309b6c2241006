"""Ed25519 signature verification (RFC 8032), pure Python.

Runs on MicroPython (ESP32 and the Unix port) and CPython:

    from fota.check.ed25519 import verify
    if not verify(public_key, message, signature):
        ...  # reject the manifest

verify() returns True or False and never raises for malformed input.
"""

# Rules (RFC 8032 section 5.1.7): the signature is 64 bytes and the key 32;
# S < L; R and A are canonical (y < p), on the curve, and not x = 0 with
# the sign bit set. The equation is the cofactorless one, as in OpenSSL and
# libsodium: accept iff [S]B - [k]A encodes to R. Small-order keys and R
# values therefore get the same verdict as pyca/cryptography (our host-side
# oracle). One deliberate difference: OpenSSL (so pyca) accepts a
# non-canonical A (y >= p) and an A of x = 0 with the sign bit set; RFC
# 8032 and this module reject both.
#
# Speed: rather than [S]B - [k]A with a 253-bit k, find k1, k2 of ~128 bits
# with k1 = k * k2 (mod 8L) and k2 odd (lattice reduction, as in T. Pornin,
# "Optimized lattice basis reduction in dimension 2, and fast Schnorr and
# EdDSA signature verification", 2020) and test
#     [k2 * S mod L]B - [k1]A - [k2]R == identity.
# 8L kills every curve point, so the left side is [k2]([S]B - [k]A - R);
# k2 odd and below L makes that zero exactly when [S]B - [k]A - R is: the
# cofactorless verdict with half the doublings. B and 2^128 B have fixed
# tables (constants in check/ed25519_base.py); R's square root replaces the
# final inversion of the textbook method.

from .sha512 import SHA512

from ..compat import const


_SIG_LEN = const(64)  # RFC 8032 section 5.1.6
_KEY_LEN = const(32)
_W_B = const(6)  # wNAF width of the fixed-base streams (B, 2^128 B)
_W_V = const(4)  # wNAF width of the per-verify streams (A, R)
_HALF = const(128)  # the fixed-base scalar is split at this bit
_ENTRY = const(96)  # bytes per fixed-table entry: y + x, y - x, 2dxy
_ENTRY_Z = const(128)  # bytes per entry of A's and R's tables: Y + X, Y - X, 2dT, 2Z

# RFC 8032 section 5.1: p, L, d, 2d, sqrt(-1), y of the base point B.
_P = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFED
_L = 0x1000000000000000000000000000000014DEF9DEA2F79CD65812631A5CF5D3ED
_D = 0x52036CEE2B6FFE738CC740797779E89800700A4D4141D8AB75EB4DCA135978A3
_D2 = 0x2406D9DC56DFFCE7198E80F2EEF3D13000E0149A8283B156EBD69B9426B2F159
_SQRTM1 = 0x2B8324804FC1DF0B2B4D00993DFBD7A72F431806AD2FE478C4EE1B274A0EA0B0
_BY = 0x6666666666666666666666666666666666666666666666666666666666666658

# x^(2^n) mod p.
def _sqn(x, n, p):
    m = p + 18  # 2^255 - 1
    if n & 1:
        x = x * x % p
    for _ in range(n >> 1):
        x = x * x
        x = (x & m) + (x >> 255) * 19  # fold, see _straus
        x = x * x % p
    return x


# (z^(2^250 - 1), z^11): the shared head of the exponent chains for the
# inverse and the square root (ref10 fe_invert, fe_pow22523). On
# MicroPython this beats the built-in pow(z, e, p) by ~2x.
def _pow250(z):
    p = _P
    z2 = z * z % p
    z9 = _sqn(z2, 2, p) * z % p
    z11 = z9 * z2 % p
    t = z11 * z11 % p * z9 % p  # 2^5 - 1
    t10 = _sqn(t, 5, p) * t % p  # 2^10 - 1
    t = _sqn(t10, 10, p) * t10 % p  # 2^20 - 1
    t = _sqn(t, 20, p) * t % p  # 2^40 - 1
    t50 = _sqn(t, 10, p) * t10 % p  # 2^50 - 1
    t = _sqn(t50, 50, p) * t50 % p  # 2^100 - 1
    t = _sqn(t, 100, p) * t % p  # 2^200 - 1
    return _sqn(t, 50, p) * t50 % p, z11  # 2^250 - 1


# 1 / z mod p, as z^(p - 2).
def _inv(z):
    t, z11 = _pow250(z)
    return _sqn(t, 5, _P) * z11 % _P


# Decode 32 bytes to an extended point (X, Y, Z, T), or None if the
# encoding is non-canonical, off the curve, or x = 0 with the sign bit set
# (RFC 8032 section 5.1.3; the square root is x = u v^3 (u v^7)^((p-5)/8)).
def _decode(b):
    p = _P
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y -= sign << 255
    if y >= p:
        return None
    u = y * y % p - 1  # x^2 = u / v
    v = (_D * (u + 1) + 1) % p
    v3 = v * v % p * v % p
    uv7 = u * v3 % p * v3 % p * v % p
    t, _ = _pow250(uv7)
    x = u * v3 % p * _sqn(t, 2, p) % p * uv7 % p
    vxx = v * x % p * x % p
    if vxx != u % p:
        if vxx != -u % p:
            return None
        x = x * _SQRTM1 % p
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = p - x
    return (x, y, 1, x * y % p)


# Extended point -> cached form (Y + X, Y - X, 2d T, 2 Z) for additions.
def _cached(pt):
    x, y, z, t = pt
    return (y + x, y - x, t * _D2 % _P, z + z)


# Extended point + cached point (ref10 ge_add). The formula is complete on
# this curve, so _add(pt, _cached(pt)) doubles.
def _add(pt, q):
    p = _P
    x, y, z, t = pt
    yp, ym, t2, z2 = q
    a = (y - x) * ym % p
    b = (y + x) * yp % p
    c = t * t2 % p
    d = z * z2 % p
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % p, g * h % p, f * g % p, e * h % p)


# Cached odd multiples P, 3P, ..., (2n - 1)P packed as 128-byte entries in one
# bytearray (values reduced mod p): n tuples of four big ints held ~3.5x the
# bytes for the whole verify, the peak of a small heap.
def _odd_multiples(pt, n):
    p = _P
    out = bytearray(n * _ENTRY_Z)
    q = _cached(pt)
    two = _cached(_add(pt, q))
    o = 0
    for i in range(n):
        if i:
            pt = _add(pt, two)
            q = _cached(pt)
        for v in q:
            out[o : o + 32] = (v % p).to_bytes(32, "little")
            o += 32
    return out


# Fixed-base table: the odd multiples P, 3P, ..., (2n - 1)P of pt, made
# affine and packed as 96-byte entries (y + x, y - x, 2dxy) in one
# bytearray: one heap block instead of 3n big ints, so a small heap stays
# unfragmented. Eight points share one inversion (Montgomery's trick),
# which bounds the transient heap; n is a multiple of 8.
def _fixed_table(pt, n, out=None):
    p = _P
    if out is None:
        out = bytearray(n * _ENTRY)
    two = _cached(_add(pt, _cached(pt)))
    for i in range(0, n, 8):
        pts = [pt]
        for _ in range(8):
            pts.append(_add(pts[-1], two))
        pt = pts.pop()
        acc = [1]
        for q in pts:
            acc.append(acc[-1] * q[2] % p)
        inv = _inv(acc[-1])
        for j in range(7, -1, -1):
            x, y, z, _ = pts[j]
            zi = inv * acc[j] % p  # 1 / z
            inv = inv * z % p
            x = x * zi % p
            y = y * zi % p
            o = (i + j) * _ENTRY
            for v in (y + x, y - x, x * y % p * _D2):
                out[o : o + 32] = (v % p).to_bytes(32, "little")
                o += 32
    return out


# Entry o of a packed table (entries of `size` bytes) as a cached point; a
# fixed table's (size _ENTRY) has Z = 1, given as z2 None.
def _entry(tab, o, size):
    o *= size
    return (
        int.from_bytes(tab[o : o + 32], "little"),
        int.from_bytes(tab[o + 32 : o + 64], "little"),
        int.from_bytes(tab[o + 64 : o + 96], "little"),
        int.from_bytes(tab[o + 96 : o + 128], "little") if size > _ENTRY else None,
    )


# The tables of B and 2^128 B: constants (check/ed25519_base.py, from _fixed_table by
# scripts/gen_ed25519_base.py), in flash on a chip. Built here they took 3 KiB of heap and a
# transient a fragmented 64 KiB heap could not give at the first offer.
def _fixed_tables():
    from .ed25519_base import TABLE_B, TABLE_B128

    return TABLE_B, TABLE_B128


# Width-w NAF of k into out (a zeroed bytearray; digit d stored as d & 0xFF,
# least significant first), counting digits per bit in cnt. Returns the
# top digit's index, or -1. Digits are odd, |d| < 2^(w-1) (the loop of
# libsecp256k1's secp256k1_ecmult_wnaf); a negative k negates them all.
def _naf(k, w, out, cnt):
    sign = -1 if k < 0 else 1
    kb = (k * sign).to_bytes(35, "little")
    end = 264
    while end and not kb[(end >> 3) - 1]:
        end -= 8
    mask = (1 << w) - 1
    i = 0
    carry = 0
    top = -1
    while i < end or carry:
        j = i >> 3
        if (kb[j] >> (i & 7)) & 1 == carry:
            i += 1
            continue
        word = (((kb[j] | (kb[j + 1] << 8)) >> (i & 7)) & mask) + carry
        carry = (word >> (w - 1)) & 1
        out[i] = (word - (carry << w)) * sign & 0xFF
        cnt[i] += 1
        top = i
        i += w
    return top


# (k1, k2) with k1 = k * k2 (mod 8L), k2 odd, 0 < |k2| < L, both ~128 bits.
# The Euclidean remainders of (8L, k) satisfy r = t * k (mod 8L); stop at
# r1 < 2^128, where |t1| <= 8L / r0 < 2^127 too. Consecutive t are coprime,
# so if t1 is even every t0 - q t1 is odd: take the q balancing the sizes.
# Hash outputs give ~128-133 bits; a k of rare structure (8L mod k tiny) up
# to ~195, still correct. (k, 1) stays as an always-valid fallback.
def _split(k):
    r0 = _L << 3
    r1 = k
    t0 = 0
    t1 = 1
    lim = 1 << 128
    while r1 >= lim:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        t0, t1 = t1, t0 - q * t1
    if not t1 & 1:
        q = (r0 - abs(t0)) // (r1 + abs(t1))
        a1 = r0 - q * r1
        a2 = t0 - q * t1
        if max(abs(a1 - r1), abs(a2 - t1)) < max(abs(a1), abs(a2)):
            a1 -= r1  # q + 1 balances better
            a2 -= t1
        r1 = a1
        t1 = a2
    if -_L < t1 < _L:
        return r1, t1
    return k, 1


# Sum of the streams (Straus / Shamir's trick): one doubling chain from bit
# top down; at bit i, digit nafs[j][i] picks an entry of tabs[j] (packed:
# the two fixed tables first, then A's and R's) and cnt[i] counts the
# additions due there. Returns (X, Y, Z). Products that feed only other
# products are folded below ~2^261 (2^255 = 19 mod p), cheaper than % p;
# each step's outputs are fully reduced so sizes cannot creep up.
def _straus(nafs, tabs, cnt, top):
    p = _P
    m = p + 18  # 2^255 - 1
    x = 0
    y = 1
    z = 1
    t = 0
    for i in range(top, -1, -1):
        k = cnt[i]
        # double (ref10 ge_p2_dbl); T only when an addition follows
        a = x * x
        a = (a & m) + (a >> 255) * 19
        b = y * y
        b = (b & m) + (b >> 255) * 19
        c = z * z
        c = (c & m) + (c >> 255) * 19
        h = a + b
        e = (x + y) * (x + y)
        e = (e & m) + (e >> 255) * 19 - h
        g = b - a
        f = c + c - g
        x = e * f % p
        y = g * h % p
        z = f * g % p
        if not k:
            continue
        t = e * h % p
        for j in range(len(nafs)):
            v = nafs[j][i]
            if not v:
                continue
            # add (ref10 ge_add); a negative digit swaps Y+X and Y-X and
            # negates 2dT
            o = (256 - v if v > 127 else v) >> 1
            q = _entry(tabs[j], o, _ENTRY if j < 2 else _ENTRY_Z)
            if v > 127:
                ym, yp, t2, z2 = q
                c = -t * t2
            else:
                yp, ym, t2, z2 = q
                c = t * t2
            c = (c & m) + (c >> 255) * 19
            a = (y - x) * ym
            a = (a & m) + (a >> 255) * 19
            b = (y + x) * yp
            b = (b & m) + (b >> 255) * 19
            if z2 is None:
                d = z + z
            else:
                d = z * z2
                d = (d & m) + (d >> 255) * 19
            e = b - a
            f = d - c
            g = d + c
            h = b + a
            x = e * f % p
            y = g * h % p
            z = f * g % p
            k -= 1
            if k:
                t = e * h % p
    return x, y, z


# The eight points of small order ([8]P is the identity: the identity, one point of order 2,
# two of order 4, four of order 8), canonically encoded. Non-canonical encodings of them are
# refused by _decode already. A signature "by" such a key can be forged without any private
# key (cofactorless verification accepts R = -[k]A, S = 0 when A has small order).
_SMALL_ORDER = (
    b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # identity
    b"\xec\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",  # order 2
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # order 4
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80",
    b"\x26\xe8\x95\x8f\xc2\xb2\x27\xb0\x45\xc3\xf4\x89\xf2\xef\x98\xf0\xd5\xdf\xac\x05\xd3\xc6\x33\x39\xb1\x38\x02\x88\x6d\x53\xfc\x05",  # order 8
    b"\x26\xe8\x95\x8f\xc2\xb2\x27\xb0\x45\xc3\xf4\x89\xf2\xef\x98\xf0\xd5\xdf\xac\x05\xd3\xc6\x33\x39\xb1\x38\x02\x88\x6d\x53\xfc\x85",
    b"\xc7\x17\x6a\x70\x3d\x4d\xd8\x4f\xba\x3c\x0b\x76\x0d\x10\x67\x0f\x2a\x20\x53\xfa\x2c\x39\xcc\xc6\x4e\xc7\xfd\x77\x92\xac\x03\x7a",
    b"\xc7\x17\x6a\x70\x3d\x4d\xd8\x4f\xba\x3c\x0b\x76\x0d\x10\x67\x0f\x2a\x20\x53\xfa\x2c\x39\xcc\xc6\x4e\xc7\xfd\x77\x92\xac\x03\xfa",
)


# A key of small order: a byte comparison, no arithmetic (cheap enough for every verify).
def small_order(public_key):
    return bytes(public_key) in _SMALL_ORDER


# A public key no one should trust: of small order, or not a canonical curve point at all.
def weak_key(public_key):
    return len(public_key) != _KEY_LEN or small_order(public_key) or _decode(public_key) is None


# RFC 8032 section 5.1.7 verification: True only for a valid signature.
def verify(public_key, message, signature):
    if len(signature) != _SIG_LEN or len(public_key) != _KEY_LEN:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    fixed = _fixed_tables()
    a = _decode(public_key)
    r = _decode(signature[:32])
    if a is None or r is None:
        return False
    h = SHA512(signature[:32])  # k = SHA-512(R || A || M) mod L, no copy of M
    h.update(public_key)
    h.update(message)
    k1 = int.from_bytes(h.digest(), "little") % _L
    del h  # the hasher's state and buffer are garbage from here
    k1, k2 = _split(k1)
    s = s * k2 % _L
    # [k2 s mod L]B - [k1]A - [k2]R == identity, B's scalar split at _HALF
    n = 1 << (_W_V - 2)
    tabs = fixed + (_odd_multiples(a, n), _odd_multiples(r, n))
    scalars = (s & ((1 << _HALF) - 1), s >> _HALF, -k1, -k2)
    nafs = [bytearray(264) for _ in tabs]
    cnt = bytearray(264)
    top = -1
    for j in range(4):
        top = max(top, _naf(scalars[j], _W_B if j < 2 else _W_V, nafs[j], cnt))
    x, y, z = _straus(nafs, tabs, cnt, top)
    return x % _P == 0 and (y - z) % _P == 0
