"""Ed25519 signature verification (RFC 8032), pure Python, MicroPython + CPython.

    from ota.ed25519 import verify
    if not verify(public_key, message, signature):
        ...  # reject the manifest

verify() returns True or False and never raises for bad input. Rules
(RFC 8032 section 5.1.7): the signature is 64 bytes and the key 32; S < L;
R and A are canonical (y < p), on the curve, and not x = 0 with the sign bit
set. The check is cofactorless, encode([S]B - [k]A) == R, like OpenSSL
and libsodium, so small-order keys and R values get the same verdict as
pyca/cryptography. One difference: OpenSSL (hence pyca) accepts a
non-canonical A or an A of x = 0 with the sign bit set; we reject both.

Speed: instead of [S]B - [k]A with a 253-bit k, find k1, k2 of ~128 bits
with k1 = k * k2 (mod 8L), k2 odd (lattice reduction, as in T. Pornin,
"Optimized lattice basis reduction in dimension 2, and fast Schnorr and
EdDSA signature verification", 2020), and test
    [k2 * S mod L]B - [k1]A - [k2]R == identity.
Because 8L kills every point, that point is [k2](S B - k A - R), and k2 odd
and below L makes it zero exactly when S B - k A - R is zero: the verdict
is the cofactorless one, with half the doublings. The B tables are built at
the first call (no work at import).
"""

from .sha512 import sha512

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_SIG_LEN = const(64)  # RFC 8032 section 5.1.6
_KEY_LEN = const(32)
_W_B = const(6)  # wNAF widths: fixed-base tables (built once) ...
_W_V = const(5)  # ... and per-verify tables for A and R
_HALF = const(128)  # the split point of the B scalar, bits

# Curve constants, RFC 8032 section 5.1 (too big for const()).
_P = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFED
_L = 0x1000000000000000000000000000000014DEF9DEA2F79CD65812631A5CF5D3ED
_D = 0x52036CEE2B6FFE738CC740797779E89800700A4D4141D8AB75EB4DCA135978A3
_D2 = 0x2406D9DC56DFFCE7198E80F2EEF3D13000E0149A8283B156EBD69B9426B2F159
_SQRTM1 = 0x2B8324804FC1DF0B2B4D00993DFBD7A72F431806AD2FE478C4EE1B274A0EA0B0
_BX = 0x216936D3CD6E53FEC0A4E231FDD6DC5C692CC7609525A7B2C9562D608F25D51A
_BY = 0x6666666666666666666666666666666666666666666666666666666666666658
_MASK255 = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF

_btabs = None  # (table of B, table of 2^128 B), affine, built on first use


# x^(2^n) mod p.
def _sqn(x, n, p):
    for _ in range(n):
        x = x * x % p
    return x


# z^(2^250 - 1) and z^11: the shared head of the inversion and square-root
# exponent chains (ref10 fe_invert / fe_pow22523). A Python chain of
# squarings beats the built-in three-argument pow() on MicroPython.
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


# 1/z mod p as z^(p - 2).
def _inv(z):
    t, z11 = _pow250(z)
    return _sqn(t, 5, _P) * z11 % _P


# Decode 32 bytes to an extended point (X, Y, Z, T), or None when the
# encoding is non-canonical, off the curve, or x = 0 with the sign bit set
# (RFC 8032 section 5.1.3).
def _decode(b):
    p = _P
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= _MASK255
    if y >= p:
        return None
    yy = y * y % p
    u = yy - 1  # x^2 = u / v
    v = (_D * yy + 1) % p
    v3 = v * v % p * v % p
    uv7 = u * v3 % p * v3 % p * v % p
    t, _ = _pow250(uv7)
    x = u * v3 % p * _sqn(t, 2, p) % p * uv7 % p  # u v^3 (u v^7)^((p-5)/8)
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


# Extended point plus a cached point (ref10 ge_add); z2 None means Z = 1.
def _add(pt, q):
    p = _P
    x, y, z, t = pt
    yp, ym, t2, z2 = q
    a = (y - x) * ym % p
    b = (y + x) * yp % p
    c = t * t2 % p
    d = z * z2 % p if z2 is not None else z + z
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % p, g * h % p, f * g % p, e * h % p)


# Point doubling in extended coordinates (ref10 ge_p2_dbl + p1p1 -> p3).
def _dbl(pt):
    p = _P
    x, y, z, _ = pt
    a = x * x % p
    b = y * y % p
    c = z * z % p
    h = a + b
    e = (x + y) * (x + y) % p - h
    g = b - a
    f = c + c - g
    return (e * f % p, g * h % p, f * g % p, e * h % p)


# Cached odd multiples P, 3P, ..., (2n - 1)P.
def _odd_multiples(pt, n):
    two = _cached(_dbl(pt))
    out = [_cached(pt)]
    for _ in range(n - 1):
        pt = _add(pt, two)
        out.append(_cached(pt))
    return out


# Cached odd multiples with Z = 1 (affine), one shared inversion for all
# points (Montgomery's trick). Used for the fixed-base tables only.
def _affine(tables):
    p = _P
    flat = [e for tab in tables for e in tab]
    acc = [1]
    for e in flat:
        acc.append(acc[-1] * e[3] % p)  # e[3] = 2Z
    inv = _inv(acc[-1])
    out = []
    for i in range(len(flat) - 1, -1, -1):
        yp, ym, t2, z2 = flat[i]
        zi = inv * acc[i] % p * 2 % p  # 1 / Z
        inv = inv * z2 % p
        out.append((yp * zi % p, ym * zi % p, t2 * zi % p, None))
    out.reverse()
    n = len(tables[0])
    return (out[:n], out[n:])


# The fixed-base tables for B and 2^128 B, computed on the first call.
def _base_tables():
    global _btabs
    if _btabs is None:
        b = (_BX, _BY, 1, _BX * _BY % _P)
        b128 = b
        for _ in range(_HALF):
            b128 = _dbl(b128)
        n = 1 << (_W_B - 2)
        _btabs = _affine((_odd_multiples(b, n), _odd_multiples(b128, n)))
    return _btabs


# Width-w NAF of k >= 0 into out (a zeroed bytearray, digits stored as
# d & 0xFF, least significant first); returns the top digit index or -1.
# Digits are odd, |d| < 2^(w-1) (libsecp256k1 secp256k1_ecmult_wnaf).
def _naf(k, w, out):
    kb = k.to_bytes(35, "little")
    n = 33
    while n and not kb[n - 1]:
        n -= 1
    end = n * 8
    mask = (1 << w) - 1
    half = 1 << (w - 1)
    i = 0
    carry = 0
    top = -1
    while i < end or carry:
        j = i >> 3
        if (kb[j] >> (i & 7)) & 1 == carry:
            i += 1
            continue
        word = (((kb[j] | (kb[j + 1] << 8)) >> (i & 7)) & mask) + carry
        carry = 1 if word & half else 0
        out[i] = (word - (carry << w)) & 0xFF
        top = i
        i += w
    return top


# Short (k1, k2) with k1 = k * k2 (mod 8L), k2 odd and 0 < |k2| < L, from
# the Euclidean remainder sequence of (8L, k) stopped halfway. Falls back
# to (k, 1) in the (never expected) case that no short odd pair turns up.
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
    # consecutive t are coprime: if t1 is even, t0 and t0 - q t1 are odd
    if t1 & 1:
        return r1, t1
    if r0 < lim << 2:
        return r0, t0
    if r1:
        q = r0 // r1
        r2 = r0 - q * r1
        t2 = t0 - q * t1
        if -lim << 2 < t2 < lim << 2:
            return r2, t2
    return k, 1


# Sum the streams: tabs[j] holds cached odd multiples, nafs[j] the digits;
# one shared doubling chain from bit top down (Straus / Shamir's trick).
# Returns the extended point (X, Y, Z); T is dropped.
def _straus(nafs, tabs, top):
    p = _P
    ns = len(nafs)
    cnt = bytearray(top + 1)
    for naf in nafs:
        for i in range(top + 1):
            if naf[i]:
                cnt[i] += 1
    x = 0
    y = 1
    z = 1
    t = 0
    for i in range(top, -1, -1):
        k = cnt[i]
        # double; T is only needed when an addition follows
        a = x * x % p
        b = y * y % p
        c = z * z % p
        h = a + b
        e = (x + y) * (x + y) % p - h
        g = b - a
        f = c + c - g
        x = e * f % p
        y = g * h % p
        z = f * g % p
        if not k:
            continue
        t = e * h % p
        for j in range(ns):
            v = nafs[j][i]
            if not v:
                continue
            if v < 128:
                yp, ym, t2, z2 = tabs[j][v >> 1]
                c = t * t2 % p
            else:
                ym, yp, t2, z2 = tabs[j][(256 - v) >> 1]
                c = -t * t2 % p
            a = (y - x) * ym % p
            b = (y + x) * yp % p
            d = z * z2 % p if z2 is not None else z + z
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


# Negate an extended point.
def _neg(pt):
    return (-pt[0], pt[1], pt[2], -pt[3])


# RFC 8032 section 5.1.7 verification; True only for a valid signature.
def verify(public_key, message, signature):
    if len(signature) != _SIG_LEN or len(public_key) != _KEY_LEN:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    a = _decode(public_key)
    if a is None:
        return False
    r = _decode(signature[:32])
    if r is None:
        return False
    h = sha512(bytes(signature[:32]) + bytes(public_key) + bytes(message))
    k1, k2 = _split(int.from_bytes(h, "little") % _L)
    if k2 < 0:
        k1 = -k1
        k2 = -k2
    # want [k2 s]B - [k1]A - [k2]R == identity
    if k1 >= 0:
        a = _neg(a)
    else:
        k1 = -k1
    s = k2 * s % _L
    tb, tb128 = _base_tables()
    w = _W_V
    nafs = [bytearray(260) for _ in range(4)]
    top = max(
        _naf(s & ((1 << _HALF) - 1), _W_B, nafs[0]),
        _naf(s >> _HALF, _W_B, nafs[1]),
        _naf(k1, w, nafs[2]),
        _naf(k2, w, nafs[3]),
    )
    n = 1 << (w - 2)
    tabs = (tb, tb128, _odd_multiples(a, n), _odd_multiples(_neg(r), n))
    x, y, z = _straus(nafs, tabs, top)
    return x % _P == 0 and (y - z) % _P == 0
