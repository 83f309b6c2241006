"""Key lists: the offline root key's signed, versioned list of release keys (docs/FORMAT.md).

A package may carry a key list in its manifest (record 0x0E). The firmware trusts only the
root keys baked into it (`trusted_keys.ROOTS`); the root signs which release keys may sign
packages (and for which board) and which key ids are revoked. The device keeps the newest
version it has seen (fota.boot.store anchors) and refuses older lists:

    from fota.check import keylist
    kl = keylist.check(raw, trusted_keys.ROOTS, seen_version=3)   # OtaError on any refusal
    kl.version, kl.keys_for("esp32_generic"), kl.revoked

Layout (little-endian): magic "FKL1" | version u32 | root key id [8] | key count u8 (1..8) |
revoked count u8 (0..16) | keys: public key [32] | board length u8 (0..32) | board |
revoked key ids [8] each | Ed25519 signature [64] by the root over every byte before it.
"""

import hashlib

from ..compat import const
from ..errors import KEY_LIST, KEY_LIST_OLD, WEAK_KEY, OtaError
from .ed25519 import verify, weak_key

# docs/FORMAT.md "Key lists".
MAX_SIZE = const(512)  # a key list is at most this many bytes (record 0x0E)
_MAGIC = b"FKL1"
_FIXED = const(18)  # magic, version, root key id, the two counts
_SIG = const(64)
_KEY = const(32)
_ID = const(8)
_MAX_KEYS = const(8)
_MAX_REVOKED = const(16)
_BOARD_MAX = const(32)


class KeyList:
    """A verified key list: version, [(key_id, public_key, board or "")], revoked key ids."""

    def __init__(self, version, keys, revoked):
        self.version = version
        self.keys = keys
        self.revoked = revoked

    # (key_id, public_key) pairs allowed to sign packages for `board`, revoked ids left out.
    def keys_for(self, board):
        return [(k, pk) for k, pk, b in self.keys if (not b or b == board) and k not in self.revoked]


def key_id(public_key):
    return hashlib.sha256(public_key).digest()[:_ID]


# Verify and parse `raw` (bytes or memoryview): framing and root signature (KEY_LIST), every
# key a sound curve point of large order (WEAK_KEY), version not below `seen_version`
# (KEY_LIST_OLD). `roots` is a sequence of (key_id, public_key) pairs.
def check(raw, roots, seen_version):
    mv = memoryview(raw)
    n = len(mv)
    if n < _FIXED + _SIG or n > MAX_SIZE or bytes(mv[0:4]) != _MAGIC:
        raise OtaError(KEY_LIST)
    root_id = bytes(mv[8:16])
    root = None
    for kid, pk in roots:
        if kid == root_id:
            root = pk
    if root is None:
        raise OtaError(KEY_LIST)
    if weak_key(root):
        raise OtaError(WEAK_KEY)
    signed = bytes(mv[: n - _SIG])
    if not verify(root, signed, bytes(mv[n - _SIG :])):
        raise OtaError(KEY_LIST)
    version = int.from_bytes(mv[4:8], "little")
    if version < 1:
        raise OtaError(KEY_LIST)
    if version < seen_version:
        raise OtaError(KEY_LIST_OLD)
    return _parse(mv, n - _SIG, version)


def _parse(mv, end, version):
    count, nrev = mv[16], mv[17]
    if count < 1 or count > _MAX_KEYS or nrev > _MAX_REVOKED:
        raise OtaError(KEY_LIST)
    pos = _FIXED
    keys = []
    for _ in range(count):
        if pos + _KEY + 1 > end:
            raise OtaError(KEY_LIST)
        pk = bytes(mv[pos : pos + _KEY])
        blen = mv[pos + _KEY]
        start = pos + _KEY + 1
        pos = start + blen
        if blen > _BOARD_MAX or pos > end:
            raise OtaError(KEY_LIST)
        try:
            board = str(bytes(mv[start:pos]), "utf-8")
        except UnicodeError:
            raise OtaError(KEY_LIST)
        if weak_key(pk):
            raise OtaError(WEAK_KEY)
        keys.append((key_id(pk), pk, board))
    if pos + nrev * _ID != end:
        raise OtaError(KEY_LIST)
    revoked = [bytes(mv[pos + i * _ID : pos + (i + 1) * _ID]) for i in range(nrev)]
    return KeyList(version, keys, revoked)
