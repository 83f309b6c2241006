"""Encoding MQTT 3.1.1 packets the client sends once per connection (no I/O here).

    put_length(hdr, 1, remaining)        # section 2.2.3 into a reused header buffer
    pkt = connect_packet(b"id", 30, True, will=(b"t", b"gone", True, 1))
"""

import struct

from ..compat import const


_CONNECT = const(0x10)  # section 2.2.1
_LEVEL = const(4)  # section 3.1.2.2: protocol level of 3.1.1
_CLEAN = const(0x02)  # section 3.1.2.4
_WILL = const(0x04)  # section 3.1.2.5
_WILL_QOS_SHIFT = const(3)  # section 3.1.2.6
_WILL_RETAIN = const(0x20)  # section 3.1.2.7
_PASSWORD = const(0x40)  # section 3.1.2.9
_USER = const(0x80)  # section 3.1.2.8


# A str becomes UTF-8 bytes (section 1.5.3); bytes-like values pass unchanged.
def to_bytes(s):
    return s.encode() if isinstance(s, str) else s


# Remaining length (section 2.2.3) into buf at i; returns the index after it.
def put_length(buf, i, n):
    while n > 0x7F:
        buf[i] = (n & 0x7F) | 0x80
        n >>= 7
        i += 1
    buf[i] = n
    return i + 1


# A two-byte length and the bytes of s (section 1.5.3) into buf at i; returns the index after it.
def put_str(buf, i, s):
    n = len(s)
    struct.pack_into("!H", buf, i, n)
    buf[i + 2 : i + 2 + n] = s
    return i + 2 + n


# The whole CONNECT packet (section 3.1). will = (topic, msg, retain, qos).
def connect_packet(client_id, keepalive, clean, will=None, user=None, password=None):
    cid = to_bytes(client_id)
    flags = _CLEAN if clean else 0
    rl = 10 + 2 + len(cid)
    wt = wm = b""
    if will:
        wt, wm = to_bytes(will[0]), to_bytes(will[1])
        flags |= _WILL | will[3] << _WILL_QOS_SHIFT | (_WILL_RETAIN if will[2] else 0)
        rl += 4 + len(wt) + len(wm)
    if user is not None:
        user = to_bytes(user)
        flags |= _USER
        rl += 2 + len(user)
        if password is not None:
            password = to_bytes(password)
            flags |= _PASSWORD
            rl += 2 + len(password)
    elif password is not None:
        raise ValueError("password without user")  # section 3.1.2.9
    pkt = bytearray(5 + rl)
    pkt[0] = _CONNECT
    i = put_length(pkt, 1, rl)
    struct.pack_into("!H4sBBH", pkt, i, 4, b"MQTT", _LEVEL, flags, keepalive)
    i = put_str(pkt, i + 10, cid)
    if will:
        i = put_str(pkt, put_str(pkt, i, wt), wm)
    if flags & _USER:
        i = put_str(pkt, i, user)
    if flags & _PASSWORD:
        i = put_str(pkt, i, password)
    return memoryview(pkt)[:i]
