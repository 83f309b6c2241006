"""docs/PROTOCOL.md on the host, written once: wire layouts, size caps, policies, the event rule.

Every host role speaks the update protocol through this module: the MQTT service (server side),
the CoAP service (the same offer, over CoAP), the gateway (the device side upstream, the server side
downstream) and the protocol simulator (protodevice, protofleet). The error codes and names are the
firmware's own (firmware/fota/errors.py, loaded by host_tools.firmware), never a copy.

    payload = encode_offer(7, 4096, policy_code("consent"), blob)    # retained on P/D/offer
    offer = decode_offer(payload)                                     # Offer(7, 4096, 1, blob) or None
    offer_id, offsets = decode_get(encode_get(7, [0, 4096]))
    status, code, reason = status_for_event({"event": "failed", "code": 11, "name": "ROLLBACK", "detail": "offer refused"})
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from host_tools import firmware

# "Offer": magic, u32 offer id, u16 chunk size, u8 install policy, u8 reserved; then header + manifest + signature
OFFER_MAGIC = b"OFR1"
OFFER = struct.Struct("<4sIHBB")
# "Chunk request": u32 offer id, u16 count; then count x u32 offset
GET = struct.Struct("<IH")
OFFSET = struct.Struct("<I")
# "Chunk data": u32 offer id, u32 offset, u16 length; then length bytes
DATA = struct.Struct("<IIH")

MAX_CHUNK = 4096  # chunk sizes are 1..4096 (a device refuses others with CHUNK_RANGE)
MAX_REQUEST = 16  # offsets in one chunk request at most
POLICIES = ("auto", "consent", "download-only")  # install policy byte -> name (PROTOCOL.md "Offer")
TOPICS = ("offer", "get", "data", "state", "events", "cmd")  # P/D/<kind>

# Offer statuses on the server: OFFERED -> DOWNLOADING -> DOWNLOADED -> INSTALLING -> SUCCEEDED, or one of
# ROLLED_BACK, REFUSED (the device refused the package, with its reason), FAILED, TIMED_OUT, CANCELLED.
FINAL = ("SUCCEEDED", "ROLLED_BACK", "REFUSED", "FAILED", "TIMED_OUT", "CANCELLED")


@dataclass(frozen=True)
class Offer:
    """A decoded offer message: what the device is offered and how to fetch it."""

    offer_id: int
    chunk: int
    policy: int
    blob: bytes  # the package's header, manifest and signature, as in the package file


def policy_code(name: str) -> int:
    """"auto" -> 0, "consent" -> 1, "download-only" -> 2 (KeyError for another name)."""
    if name not in POLICIES:
        raise KeyError(name)
    return POLICIES.index(name)


def policy_name(code: int) -> str:
    """The install policy byte's name; an unknown byte means "auto" (what the firmware does)."""
    return POLICIES[code] if 0 <= code < len(POLICIES) else "auto"


def topic(prefix: str, device: str, kind: str) -> str:
    """`P/D/kind`, the MQTT topic of one device's messages."""
    return f"{prefix}/{device}/{kind}"


def parse_topic(prefix: str, name: str) -> tuple[str, str] | None:
    """`P/D/kind` -> (device, kind), or None for a topic outside `prefix`."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != prefix:
        return None
    return parts[1], parts[2]


def encode_offer(offer_id: int, chunk: int, policy: int, blob: bytes) -> bytes:
    """The offer message for a package whose header + manifest + signature is `blob`."""
    return OFFER.pack(OFFER_MAGIC, offer_id, chunk, policy, 0) + blob


def decode_offer(payload: bytes) -> Offer | None:
    """An offer message, or None when it is too short or has another magic (an empty payload: withdrawn)."""
    if len(payload) < OFFER.size:
        return None
    magic, offer_id, chunk, policy, _ = OFFER.unpack_from(payload)
    if magic != OFFER_MAGIC:
        return None
    return Offer(offer_id, chunk, policy, bytes(payload[OFFER.size :]))


def encode_get(offer_id: int, offsets: list[int]) -> bytes:
    """A chunk request for `offsets` (at most MAX_REQUEST of them)."""
    if not 0 < len(offsets) <= MAX_REQUEST:
        raise ValueError(f"a chunk request carries 1..{MAX_REQUEST} offsets, not {len(offsets)}")
    return GET.pack(offer_id, len(offsets)) + struct.pack(f"<{len(offsets)}I", *offsets)


def decode_get(payload: bytes) -> tuple[int, tuple[int, ...]]:
    """A chunk request -> (offer id, offsets); ValueError when it is malformed or asks for too many."""
    try:
        offer_id, count = GET.unpack_from(payload)
        if count > MAX_REQUEST:
            raise ValueError(f"a chunk request for {count} offsets (at most {MAX_REQUEST})")
        return offer_id, struct.unpack_from(f"<{count}I", payload, GET.size)
    except struct.error as exc:
        raise ValueError(f"malformed chunk request: {exc}") from None


def encode_data(offer_id: int, offset: int, data: bytes) -> bytes:
    """A chunk data message."""
    return DATA.pack(offer_id, offset, len(data)) + data


def decode_data(payload: bytes) -> tuple[int, int, bytes] | None:
    """A chunk data message -> (offer id, offset, data), or None when it is shorter than it says."""
    if len(payload) < DATA.size:
        return None
    offer_id, offset, length = DATA.unpack_from(payload)
    if DATA.size + length > len(payload):
        return None
    return offer_id, offset, payload[DATA.size : DATA.size + length]


def is_refusal(code: object) -> bool:
    """A code of the manifest checks (firmware/fota/errors.py: BAD_HEADER .. BAD_ENCODING, and issue 14's
    SECURE_VERSION .. WEAK_KEY: anti-rollback and key lists): the package was refused."""
    e = firmware.errors()
    return isinstance(code, int) and (e.BAD_HEADER <= code <= e.BAD_ENCODING or e.SECURE_VERSION <= code <= e.WEAK_KEY)


def status_for_event(event: dict) -> tuple[str, int | None, str | None] | None:
    """What a device event means for its offer: (status, code, reason), or None."""
    name = event.get("event")
    code = event.get("code")
    if name == "downloading":
        return "DOWNLOADING", None, None
    if name == "deferred" and event.get("stage") == "download":
        return None  # a download not started (the device's power check): the offer stays as it was
    if name in ("downloaded", "deferred"):
        return "DOWNLOADED", None, None
    if name == "rebooting":
        return "INSTALLING", None, None
    if name == "committed":
        return "SUCCEEDED", None, None
    if name == "rolled_back":
        return "ROLLED_BACK", code, f"{event.get('name')}: {event.get('detail')}"
    if name == "failed":
        status = "REFUSED" if is_refusal(code) else "FAILED"
        return status, code, f"{event.get('name')}: {event.get('detail')}"
    return None


def final_status(event: dict) -> str | None:
    """The final offer status a device event settles (SUCCEEDED, ROLLED_BACK, REFUSED, FAILED), or None."""
    outcome = status_for_event(event)
    return outcome[0] if outcome is not None and outcome[0] in FINAL else None


# -- authenticated reports (PROTOCOL.md "Authenticated reports"; docs/SECURITY.md) -------------------
# A state or event report is `JSON \n COUNTER MAC`: COUNTER in decimal, MAC = 64 hex digits of
# HMAC-SHA256(device key, "D/KIND COUNTER\n" + JSON); the counter only grows (replay defence).
REPORT_KINDS = ("state", "events")
MAX_REPORT = 8192  # bytes of one report at most (state with its bounded error list is well under)


def report_mac(key: bytes, device: str, kind: str, counter: int, body: bytes) -> bytes:
    """The MAC of a report: it binds the device, the kind (state or events), the counter and the JSON."""
    return hmac.new(key, f"{device}/{kind} {counter}\n".encode() + body, hashlib.sha256).digest()


def seal_report(key: bytes, device: str, kind: str, counter: int, body: bytes) -> bytes:
    """A report as a device sends it (what the protocol simulator and tests use)."""
    return body + f"\n{counter} ".encode() + report_mac(key, device, kind, counter, body).hex().encode()


def split_report(payload: bytes) -> tuple[bytes, int, bytes] | None:
    """`JSON \n COUNTER MAC` -> (JSON bytes, counter, MAC), or None when it has no well-formed trailer."""
    if len(payload) > MAX_REPORT:
        return None
    body, sep, trailer = bytes(payload).rpartition(b"\n")
    parts = trailer.split(b" ")
    if not sep or len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10 or len(parts[1]) != 64:
        return None
    try:
        return body, int(parts[0]), bytes.fromhex(parts[1].decode())
    except ValueError:
        return None
