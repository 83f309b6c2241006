"""MicroPython: the device's CoAP client fetching one payload into RAM, nothing else (bench/coap.py runs it).

    micropython bench/coap_fetch.py PORT OFFER SIZE WINDOW ACK_MS QBLOCK
    -> prints "FETCH <ms> <sha256 hex> <requests> <lost>"

The same receivers the update link uses (fota.coap.qblock.QBlock2 or fota.coap.blockwise.Block2)
with the same checks, so its time compares with aiocoap's client fetching the same resource: no
agent, no flash, no digest check from flash.
"""

import binascii
import hashlib
import sys
import time

from fota.coap.blockwise import Block2
from fota.coap.client import CoapClient
from fota.coap.message import CONTENT, CoapError, path_options


def main(port, offer, size, window, ack_ms, qblock):
    c = CoapClient("127.0.0.1", port, slots=1 if qblock else window, ack_timeout_ms=ack_ms,
                   rx_blocks=window if qblock else 0)
    c.connect()
    if qblock:
        from fota.coap.qblock import QBlock2

        rx = QBlock2(c, window)
    else:
        rx = Block2(c, window, 0)
    buf = bytearray(size)
    have = bytearray((size + 1023) // 1024)
    left = [len(have)]

    def sink(off, mv):
        i = off >> 10
        if not have[i]:
            have[i] = 1
            left[0] -= 1
            buf[off : off + len(mv)] = mv

    rx.begin(path_options("fota/o/%d" % offer), 6, sink, size=size)
    low, want = 0, []
    t0 = time.ticks_ms()
    while left[0]:
        if rx.hungry():
            while have[low]:
                low += 1
            want.clear()
            i = low
            while len(want) < window + len(rx.inflight) and i < len(have):
                if not have[i]:
                    want.append(i << 10)
                i += 1
            rx.fill(want)
        try:
            code = rx.receive(100)
        except CoapError as e:  # a timeout: ask again (the update link counts these as failures)
            print("retry after", e.code)
            continue
        if code is not None and code != CONTENT:
            raise SystemExit("code %d" % code)
    ms = time.ticks_diff(time.ticks_ms(), t0)
    digest = binascii.hexlify(hashlib.sha256(buf).digest()).decode()
    print("FETCH", ms, digest, getattr(rx, "requests", 0), getattr(rx, "lost", 0))


main(*[int(a) for a in sys.argv[1:7]])
