"""CoAP messages (RFC 7252 section 3) and the Block2 option (RFC 7959): written into, and read
from, buffers the caller owns.

    n = encode(buf, CON, GET, mid, token_src, path_options("fota/o/7"), block2=block2(0, 0, 6))
    msg = Msg()
    if msg.parse(rx_mv, n):                  # fields below; the payload is rx_mv[msg.pay:msg.end]
        num, more, szx = msg.block2 >> 4, msg.block2 & 8, msg.block2 & 7

Only the options a fota device needs are decoded (ETag, Observe, Content-Format, Block2, Size2,
Q-Block2 (RFC 9177) into the same `block2` field with `qblock` set);
other elective options are skipped, an unknown critical one is remembered in `msg.critical`
so the caller can reject the message (section 5.4.1). Nothing here allocates except
`path_options`, which runs once per resource and attempt.
"""

from ..compat import const


# Section 3: header. Version 1, type, token length; code class.detail as c << 5 | dd.
_VERSION = const(1)
CON = const(0)
NON = const(1)
ACK = const(2)
RST = const(3)
EMPTY = const(0x00)
GET = const(0x01)
POST = const(0x02)
CREATED = const(0x41)  # 2.01
CHANGED = const(0x44)  # 2.04
CONTENT = const(0x45)  # 2.05
BAD_OPTION = const(0x82)  # 4.02
NOT_FOUND = const(0x84)  # 4.04
INCOMPLETE = const(0x88)  # 4.08 Request Entity Incomplete (RFC 7959 2.9.2)
TOKEN_LEN = const(4)  # our tokens: 32 random bits (section 5.3.1)
PAYLOAD_MARKER = const(0xFF)

# Section 5.10 (and RFC 7959 2.1, 4): option numbers; odd ones are critical.
OPT_ETAG = const(4)
OPT_OBSERVE = const(6)
OPT_URI_PATH = const(11)
OPT_CONTENT_FORMAT = const(12)
OPT_BLOCK2 = const(23)
OPT_SIZE2 = const(28)
OPT_QBLOCK2 = const(31)  # RFC 9177 4.1: Q-Block2, Block2's layout; NON bodies, more than one per request
MAX_ETAG = const(8)  # section 5.10.6: 1..8 bytes

# Section 12.3: content formats
FORMAT_OCTETS = const(42)
FORMAT_JSON = const(50)

# RFC 7959 2.2: block size 2**(SZX+4), SZX 0..6 (7 is BERT, not used here)
MAX_SZX = const(6)

# Errors of the CoAP client (CoapError.code). Clear of errno values, like mqtt.errors (200+).
TIMEOUT = const(220)  # no answer after MAX_RETRANSMIT retransmissions, or no separate response in time
RESET = const(221)  # the server answered with RST
BAD_RESPONSE = const(222)  # malformed, unknown critical option, wrong block, or an unexpected code
ETAG_CHANGED = const(223)  # the resource changed between blocks (RFC 7959 2.4)
TOO_LARGE = const(224)  # the representation does not fit the caller's buffer (Size2 or data)
NO_SLOT = const(225)  # every exchange slot is busy (more requests than NSTART allows)


class CoapError(OSError):
    """A failed exchange; an OSError, so one handler covers the socket's errors too."""

    def __init__(self, code, detail=None):
        super().__init__(code, detail)
        self.code = code


def szx_for(size):
    """The largest SZX whose block fits `size` bytes (16 -> 0 ... 1024 and more -> 6)."""
    szx = 0
    while szx < MAX_SZX and (32 << szx) <= size:
        szx += 1
    return szx


def block2(num, more, szx):
    return (num << 4) | (8 if more else 0) | szx


def path_options(path):
    """Uri-Path options for "a/b/c" (first delta 11, then 0); bytes to splice into requests."""
    out = bytearray()
    delta = OPT_URI_PATH
    for seg in path.split("/"):
        seg = seg.encode()
        n = len(seg)
        if n > 255:
            raise ValueError("path segment")
        if n < 13:
            out.append((delta << 4) | n)
        else:
            out.append((delta << 4) | 13)
            out.append(n - 13)
        out.extend(seg)
        delta = 0
    return bytes(out)


def _uint_len(v):
    return 0 if v == 0 else 1 if v < 0x100 else 2 if v < 0x10000 else 3 if v < 0x1000000 else 4


# One option with an unsigned integer value (section 3.2: minimal length, big-endian).
def _put_uint(buf, pos, delta, v):
    n = _uint_len(v)
    if delta < 13:
        buf[pos] = (delta << 4) | n
        pos += 1
    else:  # option numbers we write are < 269 apart: the one-byte extended delta
        buf[pos] = (13 << 4) | n
        buf[pos + 1] = delta - 13
        pos += 2
    for i in range(n - 1, -1, -1):
        buf[pos + i] = v & 0xFF
        v >>= 8
    return pos + n


def first_byte(mtype):
    """The first byte of our messages of `mtype`: version, type, token length TOKEN_LEN (section 3)."""
    return (_VERSION << 6) | (mtype << 4) | TOKEN_LEN


def encode(buf, mtype, code, mid, token, path, *, content_format=-1, block=-1, size2=-1, payload=None, qblocks=None,
           nq=0):
    """Write a request into `buf`; returns its length.

    `token`: TOKEN_LEN bytes (any buffer); `path`: path_options(); the others are left out when < 0.
    `qblocks`: the first `nq` values are written as Q-Block2 options (RFC 9177 4.4: ascending).
    """
    buf[0] = first_byte(mtype)
    buf[1] = code
    buf[2] = mid >> 8
    buf[3] = mid & 0xFF
    buf[4 : 4 + TOKEN_LEN] = token
    pos = 4 + TOKEN_LEN
    n = len(path)
    buf[pos : pos + n] = path
    pos += n
    last = OPT_URI_PATH if n else 0
    if content_format >= 0:
        pos = _put_uint(buf, pos, OPT_CONTENT_FORMAT - last, content_format)
        last = OPT_CONTENT_FORMAT
    if block >= 0:
        pos = _put_uint(buf, pos, OPT_BLOCK2 - last, block)
        last = OPT_BLOCK2
    if size2 >= 0:
        pos = _put_uint(buf, pos, OPT_SIZE2 - last, size2)
        last = OPT_SIZE2
    for i in range(nq):
        pos = _put_uint(buf, pos, OPT_QBLOCK2 - last, qblocks[i])
        last = OPT_QBLOCK2
    if payload:
        buf[pos] = PAYLOAD_MARKER
        n = len(payload)
        buf[pos + 1 : pos + 1 + n] = payload
        pos += 1 + n
    return pos


def encode_empty(buf, mtype, mid):
    """An empty ACK or RST for message `mid` (section 4.2, 4.3): 4 bytes."""
    buf[0] = (_VERSION << 6) | (mtype << 4)
    buf[1] = EMPTY
    buf[2] = mid >> 8
    buf[3] = mid & 0xFF
    return 4


class Msg:
    """A parsed message; offsets point into the buffer that was parsed."""

    def __init__(self):
        self.etag = bytearray(MAX_ETAG)
        self.reset()

    def reset(self):
        self.type = self.code = self.mid = self.tkl = 0
        self.etag_len = 0
        self.block2 = self.size2 = self.observe = self.content_format = -1
        self.qblock = 0  # block2 came in a Q-Block2 option (RFC 9177)
        self.critical = 0  # the first unknown critical option number, or 0
        self.start = self.pay = self.end = 0

    def same_etag(self, other):
        """Same ETag as Msg `other` (both absent counts as the same)."""
        n = self.etag_len
        if n != other.etag_len:
            return False
        for i in range(n):
            if self.etag[i] != other.etag[i]:
                return False
        return True

    # Fill the fields from the message at mv[start:limit]; False for a format error (section 4.2).
    # `end` is where the message ends: `limit`, unless it is framed by its own fields (an empty
    # message is 4 bytes; a block with Block2 and Size2 has a known payload length), in which
    # case another message may follow (MicroPython's readinto() can merge queued datagrams).
    def parse(self, mv, start, limit):
        self.reset()
        self.start = start
        if limit - start < 4 or mv[start] >> 6 != _VERSION:
            return False
        self.type = (mv[start] >> 4) & 3
        self.tkl = mv[start] & 15
        self.code = mv[start + 1]
        self.mid = (mv[start + 2] << 8) | mv[start + 3]
        if self.tkl > 8 or start + 4 + self.tkl > limit:
            return False
        pos = start + 4 + self.tkl
        if self.code == EMPTY:  # section 4.1: an empty message is just the header
            self.pay = self.end = pos
            return self.tkl == 0
        num = 0
        while pos < limit:
            b = mv[pos]
            pos += 1
            if b == PAYLOAD_MARKER:
                if pos == limit:
                    return False  # a marker followed by nothing is a format error
                self.pay, self.end = pos, limit
                return self._frame()
            delta, length = b >> 4, b & 15
            if delta == 15 or length == 15:
                return False
            # section 3.1: 13 and 14 take 1 and 2 extension bytes, which must be inside the message
            if pos + (delta > 12) + (delta > 13) + (length > 12) + (length > 13) > limit:
                return False
            if delta == 13:
                delta = mv[pos] + 13
                pos += 1
            elif delta == 14:
                delta = ((mv[pos] << 8) | mv[pos + 1]) + 269
                pos += 2
            if length == 13:
                length = mv[pos] + 13
                pos += 1
            elif length == 14:
                length = ((mv[pos] << 8) | mv[pos + 1]) + 269
                pos += 2
            num += delta
            if pos + length > limit:
                return False
            if num == OPT_ETAG:
                if not 0 < length <= MAX_ETAG:
                    return False
                self.etag[:length] = mv[pos : pos + length]
                self.etag_len = length
            elif num in (OPT_BLOCK2, OPT_SIZE2, OPT_OBSERVE, OPT_CONTENT_FORMAT, OPT_QBLOCK2):
                if length > 4:
                    return False
                v = 0
                for i in range(length):
                    v = (v << 8) | mv[pos + i]
                if num == OPT_BLOCK2 or num == OPT_QBLOCK2:
                    if self.block2 >= 0:  # RFC 9177 4.1: not both, and one block per response
                        return False
                    self.block2 = v
                    self.qblock = num == OPT_QBLOCK2
                elif num == OPT_SIZE2:
                    self.size2 = v
                elif num == OPT_OBSERVE:
                    self.observe = v
                else:
                    self.content_format = v
            elif num & 1 and not self.critical:
                self.critical = num
            pos += length
        self.pay = self.end = limit
        return True

    # A block whose payload length follows from Block2 and Size2 ends there (RFC 7959 2.2: a block
    # with M set is exactly 2**(SZX+4) bytes; the last one is what remains of Size2). A shorter
    # payload is left as it is: the caller refuses it (or the datagram was cut, see the client).
    def _frame(self):
        b = self.block2
        if b < 0 or self.size2 < 0 or b & 7 > MAX_SZX:
            return True
        size = 16 << (b & 7)
        if not b & 8:
            size = self.size2 - (b >> 4) * size
        if 0 <= size < self.end - self.pay:
            self.end = self.pay + size
        return True

    def payload_len(self):
        return self.end - self.pay
