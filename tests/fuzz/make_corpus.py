"""Write tests/fuzz/corpus/: the valid inputs (and a few named attacks) the device fuzzer mutates.

    PYTHONPATH=tests .venv/bin/python tests/fuzz/make_corpus.py     # once; the files are kept in the tree
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption, UintOption

from host_tools import protocol
from host_tools.image.package import parse_package
from simkit import fw_image, fw_package

OUT = Path(__file__).resolve().parent / "corpus"


def put(target: str, name: str, data: bytes) -> None:
    (OUT / target).mkdir(parents=True, exist_ok=True)
    (OUT / target / f"{name}.bin").write_bytes(data)


def mqtt_packet(kind: int, body: bytes) -> bytes:
    n, rl = len(body), bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        rl.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes([kind]) + bytes(rl) + body


def qblock2_burst() -> bytes:
    """Two NON 2.05 answers of a Q-Block2 burst (issue 18) as one read: blocks 4 and 5 of 5200 bytes."""
    out = b""
    for num, more, n in ((4, True, 1024), (5, False, 80)):
        m = Message(mtype=Type.NON, code=Code.CONTENT, mid=40 + num, token=b"\1\2\3" + bytes([num]), payload=bytes(n),
                    etag=b"\xaa" * 8, size2=5200, content_format=42)
        m.opt.add_option(UintOption(OptionNumber.Q_BLOCK2, (num << 4) | (8 if more else 0) | 6))
        out += m.encode()
    return out


def main() -> None:
    image = fw_image("2.0.0")
    raw = parse_package(fw_package(image, version="2.0.0", sequence=2))
    zpkg = parse_package(fw_package(image, version="2.0.0", sequence=2, encoding="zlib"))
    for name, pkg in (("raw", raw), ("zlib", zpkg)):
        blob = pkg.header + pkg.manifest_bytes + pkg.signature
        put("offer", name, protocol.encode_offer(7, 4096, 0, blob))
        put("manifest", name, pkg.manifest_bytes)
    put("offer", "consent_small_chunk", protocol.encode_offer(0xFFFFFFFF, 1, 1, raw.header))
    put("data", "chunk", protocol.encode_data(7, 4096, bytes(range(256)) * 2))
    put("data", "empty", protocol.encode_data(7, 0, b""))

    block = Message(mtype=Type.ACK, code=Code.CONTENT, mid=0x1234, token=b"\1\2\3\4", payload=bytes(1024),
                    etag=b"\xaa" * 8, size2=5000, content_format=42)
    block.opt.block2 = BlockOption.BlockwiseTuple(2, True, 6)
    put("coap", "block", block.encode())
    last = Message(mtype=Type.CON, code=Code.CONTENT, mid=7, token=b"\x09" * 4, payload=b"tail", size2=2052)
    last.opt.block2 = BlockOption.BlockwiseTuple(2, False, 6)
    put("coap", "last_block_then_ack", last.encode() + bytes([0x60, 0, 0, 8]))
    put("coap", "empty_ack", bytes([0x60, 0x00, 0x12, 0x34]))
    put("coap", "not_found", Message(mtype=Type.ACK, code=Code.NOT_FOUND, mid=5, token=b"abcd").encode())
    opts = Message(mtype=Type.NON, code=Code.CHANGED, mid=9, token=b"wxyz", uri_path=("fota", "x" * 20, "y" * 300))
    put("coap", "long_options", opts.encode())
    put("coap", "qblock2_burst", qblock2_burst())
    # issue 12: a full receive buffer whose last byte is an option header needing an extension byte
    put("coap", "attack_option_at_end", block.encode()[:11] + bytes(1152 - 12) + b"\xd0")

    topic = b"fota/a1b2/data"
    pub0 = mqtt_packet(0x30, struct.pack("!H", len(topic)) + topic + protocol.encode_data(7, 0, bytes(300)))
    pub1 = mqtt_packet(0x33, struct.pack("!H", 14) + b"fota/a1b2/offe" + b"\0\5" + b"OFR1" + bytes(40))
    put("mqtt", "publish_qos0", pub0)
    put("mqtt", "publish_qos1_retained", pub1)
    put("mqtt", "acks", mqtt_packet(0x40, b"\0\1") + mqtt_packet(0x90, b"\0\2\1") + mqtt_packet(0xD0, b""))
    put("mqtt", "oversized_publish", mqtt_packet(0x30, struct.pack("!H", 5) + b"a/b/c" + bytes(1500)))

    data = b"".join(b"%05d fota sensor reading\n" % i for i in range(300))
    c = zlib.compressobj(9, zlib.DEFLATED, 10)
    put("inflate", "stream", c.compress(data) + c.flush())
    # issue 12: a zlib header, then empty stored blocks and nothing more (once raised EOFError)
    put("inflate", "attack_stored_empty", b"\x78\x9c" + b"\x00\x00\x00\xff\xff" * 4)

    put("cmd", "approve", json.dumps({"cmd": "approve", "offer": 7}).encode())
    put("cmd", "cancel", json.dumps({"cmd": "cancel"}).encode())


if __name__ == "__main__":
    main()
