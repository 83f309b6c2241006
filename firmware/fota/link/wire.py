"""The device side of the update wire formats (docs/PROTOCOL.md), written once for every link.

    offer = parse_offer(buf, n)         # (offer id, chunk, policy name, blob start) or None
    n = pack_get(req, offer_id, [0, 4096])  # MQTT `get` request into a reused buffer
    head = parse_data(payload)          # (offer id, offset, length) or None
    cmd = parse_command(text)           # ("approve" | "cancel" | ..., offer id or None) or None

Offer (retained on MQTT, the offer resource on CoAP): b"OFR1", u32 offer id, u16 chunk, u8
policy, u8 reserved, then the package's header, manifest and signature. Get: u32 offer id, u16
count, count x u32 offset. Data: u32 offer id, u32 offset, u16 length, length bytes.
All little-endian.
"""

import json
import struct

from ..compat import const

OFFER_MAGIC = b"OFR1"
OFFER_HEAD = const(12)  # b"OFR1", u32 offer id, u16 chunk, u8 policy, u8 reserved
OFFER_MAX = const(12 + 32 + 1024 + 64)  # head, package header, largest manifest, signature
GET_HEAD = const(6)  # u32 offer id, u16 count
GET_MAX = const(16)  # offsets per get request
DATA_HEAD = const(10)  # u32 offer id, u32 offset, u16 length
_MAX_COMMAND = const(256)  # bytes of a command (PROTOCOL.md "Commands": a few dozen)
POLICIES = ("auto", "consent", "download-only")  # the policy byte of an offer


# (offer id, chunk, policy name) of an offer of `n` bytes in `buf`, or None when it is none.
def parse_offer(buf, n):
    if n < OFFER_HEAD or bytes(buf[:4]) != OFFER_MAGIC:
        return None
    offer_id, chunk, policy = struct.unpack_from("<IHB", buf, 4)
    return offer_id, chunk, POLICIES[policy] if policy < len(POLICIES) else "auto"


# Write a get request for `offsets` (at most GET_MAX) into `buf`; returns its length.
def pack_get(buf, offer_id, offsets):
    struct.pack_into("<IH", buf, 0, offer_id, len(offsets))
    for i, offset in enumerate(offsets):
        struct.pack_into("<I", buf, GET_HEAD + 4 * i, offset)
    return GET_HEAD + 4 * len(offsets)


# (offer id, offset, length) of a data message whose payload is whole, or None.
def parse_data(payload):
    if len(payload) < DATA_HEAD:
        return None
    head = struct.unpack_from("<IIH", payload, 0)
    return head if DATA_HEAD + head[2] <= len(payload) else None


# (name, offer id or None) of a command (docs/PROTOCOL.md "Commands"), or None for any other bytes.
def parse_command(text):
    if len(text) > _MAX_COMMAND:
        return None
    try:
        cmd = json.loads(text)
    except (ValueError, TypeError):  # not JSON (UnicodeError is a ValueError)
        return None
    if not isinstance(cmd, dict):
        return None
    name, offer = cmd.get("cmd"), cmd.get("offer")
    if not isinstance(name, str) or not (offer is None or isinstance(offer, int)):
        return None
    return name, offer
