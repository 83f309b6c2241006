"""CoAP client over UDP (RFC 7252); whole resources with Block2 (RFC 7959, blockwise.py).

    c = CoapClient("192.168.1.10", 5683, ack_timeout_ms=2000)   # RFC 7252 4.8 defaults
    c.connect()                                   # a UDP socket; nothing is sent yet
    code, n = c.get("fota/a1b2/offer", buf)       # whole resource, block-wise, into buf
    code = c.post("fota/a1b2/events", b'{"event": "progress"}')
    ex = c.start(GET, path_options("fota/o/7"), block=block2(5, 0, 6))   # one exchange of a window
    done = c.poll(100)                            # an exchange that ended (or None); c.msg is its answer
    c.free(done)
    st = c.stream()                               # NON requests sharing a token prefix (coap/qblock.py)
    c.send_stream(GET, path_options("fota/o/7"), qblocks, 10)   # every response to them: poll() -> st

Every request is confirmable. The first timeout is random in [ack_timeout, ack_timeout *
ack_random_factor], doubled on each of at most `max_retransmit` retransmissions (section 4.2);
then the exchange ends with TIMEOUT. An empty ACK means a separate response will follow: it is
awaited for `separate_ms` more, and ACKed when it comes as CON. Responses match requests by
token (piggybacked ones by message id too); a CON/NON seen before (message id kept in a small
ring) is ACKed again but handed over once. `slots` exchanges can be outstanding (NSTART).
A stream (one at a time) is the exception: its requests are NON, each with a new message id and
a token of the stream's 3 random bytes plus a counter; every response with that token prefix is
handed over and the stream stays open until free(); its timing is the caller's (qblock.py).

Memory: one request buffer per slot and one receive buffer of `buf_size` bytes per slot, all
allocated here; a response is parsed in place and `msg` / payload() stay valid until the next
poll(). MicroPython sockets have no recv_into, and their readinto() reads until the buffer is full
or nothing more is queued, so datagrams that queued up (a window of answers, a duplicate) arrive
merged in one read: each message is then cut out by its own framing (an empty message is 4 bytes,
a block's length follows from Block2 and Size2, which fota servers put on every block), and what
cannot be framed is dropped like a lost datagram (retransmission recovers it). A message that
reaches the end of a full buffer may be cut short and is dropped too. CPython reads one datagram
at a time (recv_into).
"""

import select
import socket

from .message import (
    ACK, CON, CONTENT, EMPTY, FORMAT_JSON, MAX_SZX, NON, NO_SLOT, POST, RST, TIMEOUT, TOKEN_LEN, BAD_RESPONSE,
    ETAG_CHANGED, RESET, CoapError, Msg, encode, encode_empty, first_byte, path_options,
)

from .blockwise import Block2
from ..compat import const, getrandbits, ticks_add, ticks_diff, ticks_ms

# Section 4.8: transmission parameters (the defaults; all are constructor arguments)
_ACK_TIMEOUT_MS = const(2000)
_MAX_RETRANSMIT = const(4)
_PROCESSING_DELAY_MS = const(2000)  # how long a server may take before its separate response
_FREE = const(0)
_WAIT_ACK = const(1)  # sent, retransmitting until an ACK (or the response) comes
_WAIT_SEPARATE = const(2)  # empty ACK seen: the response comes in a message of its own
_DONE = const(3)
_STREAM = const(4)  # a body in non-confirmable requests and responses (RFC 9177): no timers here, see qblock.py
_SEEN = const(8)  # message ids of received CON/NON kept for de-duplication
_REQ_SIZE = const(96)  # header, token, Uri-Path of a fota resource, Block2, Size2


class Exchange:
    """One request and its state; `code` is the response code, `error` a CoapError code."""

    def __init__(self, size):
        self.buf = bytearray(size)  # the request exactly as sent (retransmissions resend it)
        self.n = 0
        self.state = _FREE
        self.mid = 0
        self.deadline = ticks_ms()
        self.timeout = 0
        self.tries = 0
        self.tag = None  # the caller's
        self.code = 0
        self.error = 0


class CoapClient:
    def __init__(self, host, port=5683, *, slots=1, ack_timeout_ms=_ACK_TIMEOUT_MS, ack_random_factor=1.5,
                 max_retransmit=_MAX_RETRANSMIT, separate_ms=None, buf_size=1152, req_size=_REQ_SIZE, rx_blocks=0):
        self.host = host
        self.port = port
        self.ack_timeout_ms = ack_timeout_ms
        self.ack_spread_ms = int(ack_timeout_ms * (ack_random_factor - 1))
        self.max_retransmit = max_retransmit
        # after an empty ACK: the longest a separate response may take (MAX_TRANSMIT_WAIT-like)
        self.separate_ms = separate_ms if separate_ms is not None else ack_timeout_ms * 2 + _PROCESSING_DELAY_MS
        self.sock = None
        self.msg = Msg()  # the last message received, parsed (valid until the next poll)
        self.rtt_ms = 0  # the round trip of the last exchange answered at its first try (Karn's rule), 0: none yet
        self.retransmissions = 0  # counters for tests and benchmarks
        self.duplicates = 0
        self.merged = 0  # messages found after another one in the same read
        self._rx = bytearray(buf_size * (rx_blocks or slots))  # room for the answers of a whole window at once
        self._rxmv = memoryview(self._rx)
        self._pos = self._lim = 0  # the part of the last read not yet handled
        self._full = False  # the last read filled the buffer
        self._readinto = None
        self._ctl = bytearray(4)  # empty ACK / RST
        self._ex = [Exchange(req_size) for _ in range(slots)]
        self._st = None  # the stream's Exchange, made on the first stream()
        self._st_tag = None  # its token prefix (bytes), what a merged answer of the stream is found by
        self._req_size = req_size
        self._mid = getrandbits(16)
        self._seen = [-1] * _SEEN
        self._seen_at = 0
        self._tok = bytearray(TOKEN_LEN)
        self._blocks = None  # blockwise.Block2 for get(), made on the first call
        self._into = None
        self._got = 0
        self._poll = None
        self._ipoll = None

    # -- socket -----------------------------------------------------------------
    def connect(self):
        """Resolve the server and open a connected UDP socket (raises OSError)."""
        self.close()
        ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_DGRAM)[0]
        s = socket.socket(ai[0], socket.SOCK_DGRAM)
        try:
            s.connect(ai[-1])
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self.sock = s
        self._poll = select.poll()
        self._poll.register(s, select.POLLIN)
        self._ipoll = getattr(self._poll, "ipoll", self._poll.poll)  # MicroPython: no list per call
        self._readinto = getattr(s, "recv_into", None) or s.readinto  # one datagram, or see above
        self._pos = self._lim = 0
        self.cancel_all()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def _send(self, buf, n):
        try:
            self.sock.send(memoryview(buf)[:n])
        except OSError:
            pass  # a send that fails (no route, ICMP error pending) is a lost datagram: retransmission covers it

    # -- exchanges ----------------------------------------------------------------
    def busy(self):
        """Number of exchanges outstanding (no allocation: Q-Block2 asks before every request)."""
        n = 0
        for ex in self._ex:
            if ex.state == _WAIT_ACK or ex.state == _WAIT_SEPARATE:
                n += 1
        return n

    def waiting(self, ex):
        """`ex` still waits for its answer (False: answered, failed, or cancelled: code and error both 0)."""
        return ex.state == _WAIT_ACK or ex.state == _WAIT_SEPARATE

    def start(self, code, path, *, block=-1, size2=-1, payload=None, content_format=-1, tag=None):
        """Send a confirmable request (`path`: path_options()); returns its Exchange."""
        if self.sock is None:
            raise CoapError(NO_SLOT, "not connected")
        for ex in self._ex:
            if ex.state == _FREE:
                break
        else:
            raise CoapError(NO_SLOT)
        self._mid = (self._mid + 1) & 0xFFFF
        t = self._tok
        r = getrandbits(16)
        t[0], t[1] = r >> 8, r & 0xFF
        r = getrandbits(16)
        t[2], t[3] = r >> 8, r & 0xFF
        ex.n = encode(ex.buf, CON, code, self._mid, t, path, content_format=content_format, block=block,
                      size2=size2, payload=payload)
        ex.mid = self._mid
        ex.tag = tag
        ex.code = ex.error = ex.tries = 0
        ex.timeout = self.ack_timeout_ms + ((getrandbits(16) * self.ack_spread_ms) >> 16)
        ex.deadline = ticks_add(ticks_ms(), ex.timeout)
        ex.state = _WAIT_ACK
        self._send(ex.buf, ex.n)
        return ex

    def free(self, ex):
        ex.state = _FREE
        ex.tag = None

    def cancel_all(self):
        """Forget every outstanding exchange and the stream (late answers are then ignored, CONs reset)."""
        for ex in self._ex:
            ex.state = _FREE
            ex.tag = None
        if self._st is not None:
            self._st.state = _FREE

    def stream(self):
        """Open the stream (a new token prefix; answers to an earlier stream are ignored from now on)."""
        if self.sock is None:
            raise CoapError(NO_SLOT, "not connected")
        st = self._st
        if st is None:
            st = self._st = Exchange(self._req_size + 32)  # room for MAX_PAYLOADS Q-Block2 options
        r = getrandbits(24)
        st.buf[4], st.buf[5], st.buf[6], st.buf[7] = r >> 16, (r >> 8) & 0xFF, r & 0xFF, 0
        self._st_tag = bytes(st.buf[4:7])
        st.state = _STREAM
        st.code = st.error = 0
        return st

    def stream_next(self):
        """The token byte the stream's next request gets (its answers carry it: stream_req())."""
        return (self._st.buf[7] + 1) & 0xFF

    def stream_req(self):
        """The token byte of the request that the stream answer in `msg` answers."""
        return self._rx[self.msg.start + 4 + TOKEN_LEN - 1]

    def end_stream(self):
        """Close the stream alone (its late answers are then ignored); confirmable exchanges go on."""
        if self._st is not None:
            self._st.state = _FREE

    def send_stream(self, code, path, qblocks, nq, size2=-1):
        """One NON request of the stream with Q-Block2 options qblocks[:nq] (ascending)."""
        st = self._st
        self._mid = (self._mid + 1) & 0xFFFF
        t = self._tok
        t[0], t[1], t[2], t[3] = st.buf[4], st.buf[5], st.buf[6], (st.buf[7] + 1) & 0xFF
        st.n = encode(st.buf, NON, code, self._mid, t, path, size2=size2, qblocks=qblocks, nq=nq)
        st.mid = self._mid
        self._send(st.buf, st.n)

    def poll(self, timeout_ms):
        """Wait up to `timeout_ms` for one event; returns an Exchange that ended, or None.

        An ended exchange has `code` (the response code; `msg` holds the response until the
        next poll) or `error` (TIMEOUT, RESET, BAD_RESPONSE). Free it with free().
        """
        now = ticks_ms()
        wait = timeout_ms
        for ex in self._ex:
            if ex.state == _WAIT_ACK or ex.state == _WAIT_SEPARATE:
                left = ticks_diff(ex.deadline, now)
                if left < wait:
                    wait = left if left > 0 else 0
        if self._pos >= self._lim:  # nothing left of the last read: wait for a datagram
            for _ in self._ipoll(wait):
                self._read()
                break
        while self._pos < self._lim:
            done = self._receive()
            if done is not None:
                return done
        return self._timers()

    def _read(self):
        try:
            n = self._readinto(self._rx)
        except OSError:  # ECONNREFUSED from an earlier ICMP: the server is not there (yet)
            return
        if n:
            self._pos, self._lim = 0, n
            self._full = n >= len(self._rx)

    # The next message of the last read.
    def _receive(self):
        m, rx, start = self.msg, self._rx, self._pos
        ok = m.parse(self._rxmv, start, self._lim)
        if not ok or (m.end == self._lim and (m.block2 < 0 or m.size2 < 0)):  # not framed by its own fields
            cut = self._next_of_stream(start)
            if cut > 0:
                ok = m.parse(self._rxmv, start, cut)
        if not ok:
            if self._lim - start >= 4 and (rx[start] >> 4) & 3 == CON:  # section 4.2: reject a malformed CON
                self._reply(RST, (rx[start + 2] << 8) | rx[start + 3])
            self._pos = self._lim  # what follows cannot be framed: lost, like a dropped datagram
            return None
        self._pos = m.end
        if start:
            self.merged += 1
        if self._full and m.end == self._lim:
            return None  # it reaches the end of a full buffer: it may have been cut short
        if m.type == ACK or m.type == RST:
            ex = self._by_mid(m.mid)
            if ex is None:
                return None  # a late or duplicated ACK of an exchange that is over
            if m.type == RST:
                return self._end(ex, 0, RESET)
            if m.code == EMPTY:
                if ex.state == _WAIT_ACK:
                    ex.state = _WAIT_SEPARATE
                    ex.deadline = ticks_add(ticks_ms(), self.separate_ms)
                return None
            if not self._token_is(ex):
                return None
            return self._answer(ex)
        if m.code == EMPTY:  # CoAP ping (CON) or a stray empty NON: RST (section 4.3)
            if m.type == CON:
                self._reply(RST, m.mid)
            return None
        dup = self._was_seen(m.mid)
        ex = self._by_token()
        if m.type == CON:
            self._reply(ACK if (ex is not None or dup) else RST, m.mid)
        if dup:
            self.duplicates += 1
            return None
        self._seen[self._seen_at] = m.mid
        self._seen_at = (self._seen_at + 1) % _SEEN
        if ex is None:
            return None
        return self._answer(ex)

    # Where the stream's next answer starts in the last read after the message at `start`, or -1.
    # A message that its own fields do not frame (a report's 2.04 ACK has no payload) ends there
    # when the answers of a stream follow it in the same read: found by their header byte and
    # token prefix (3 random bytes), so the report's answer and the blocks behind it are not lost.
    def _next_of_stream(self, start):
        st, tag = self._st, self._st_tag
        if st is None or tag is None or st.state != _STREAM:
            return -1
        rx, lim = self._rx, self._lim
        non, con = first_byte(NON), first_byte(CON)
        i = rx.find(tag, start + 8, lim)
        while i >= 0:
            h = i - 4
            if rx[h] == non or rx[h] == con:
                return h
            i = rx.find(tag, i + 1, lim)
        return -1

    def _answer(self, ex):
        if self.msg.critical:  # section 5.4.1: an unrecognised critical option fails the exchange
            return self._end(ex, 0, BAD_RESPONSE)
        if ex.state == _WAIT_ACK and ex.tries == 0:  # sent once, at deadline - timeout: an unambiguous sample
            rtt = ticks_diff(ticks_ms(), ex.deadline) + ex.timeout
            self.rtt_ms = rtt if rtt > 0 else 1
        return self._end(ex, self.msg.code, 0)

    def _end(self, ex, code, error):
        if ex.state != _STREAM:  # a stream stays open: more answers follow
            ex.state = _DONE
        ex.code = code
        ex.error = error
        return ex

    def _timers(self):
        now = ticks_ms()
        for ex in self._ex:
            if ex.state == _WAIT_ACK and ticks_diff(now, ex.deadline) >= 0:
                if ex.tries >= self.max_retransmit:
                    return self._end(ex, 0, TIMEOUT)
                ex.tries += 1
                ex.timeout *= 2
                ex.deadline = ticks_add(now, ex.timeout)
                self.retransmissions += 1
                self._send(ex.buf, ex.n)
            elif ex.state == _WAIT_SEPARATE and ticks_diff(now, ex.deadline) >= 0:
                return self._end(ex, 0, TIMEOUT)
        return None

    def _reply(self, mtype, mid):
        self._send(self._ctl, encode_empty(self._ctl, mtype, mid))

    def _by_mid(self, mid):
        for ex in self._ex:
            if (ex.state == _WAIT_ACK or ex.state == _WAIT_SEPARATE) and ex.mid == mid:
                return ex
        st = self._st
        if st is not None and st.state == _STREAM and st.mid == mid:
            return st
        return None

    def _by_token(self):
        for ex in self._ex:
            if (ex.state == _WAIT_ACK or ex.state == _WAIT_SEPARATE) and self._token_is(ex):
                return ex
        st = self._st
        if st is not None and st.state == _STREAM and self._token_is(st, TOKEN_LEN - 1):
            return st
        return None

    # The received token (msg.tkl bytes at 4) is the one in ex's request (its first `n` bytes).
    def _token_is(self, ex, n=TOKEN_LEN):
        if self.msg.tkl != TOKEN_LEN:
            return False
        rx, tx, at = self._rx, ex.buf, self.msg.start
        for i in range(4, 4 + n):
            if rx[at + i] != tx[i]:
                return False
        return True

    def _was_seen(self, mid):
        for s in self._seen:
            if s == mid:
                return True
        return False

    def payload(self):
        """The payload of `msg` (a memoryview into the last datagram, valid until the next poll)."""
        return self._rxmv[self.msg.pay : self.msg.end]

    # -- blocking calls -------------------------------------------------------------
    def request(self, code, path, **kw):
        """One exchange, waited for; returns `msg` (the response). Raises CoapError on failure."""
        if self.busy():  # its answers would be consumed here: finish a window first
            raise CoapError(NO_SLOT, "exchanges outstanding")
        ex = self.start(code, path, **kw)
        while self.poll(1000) is not ex:
            pass
        self.free(ex)
        if ex.error:
            raise CoapError(ex.error)
        return self.msg

    def post(self, path, payload, content_format=FORMAT_JSON):
        """POST `payload` (bytes or str, one datagram); returns the response code."""
        if isinstance(path, str):
            path = path_options(path)
        if isinstance(payload, str):
            payload = payload.encode()
        return self.request(POST, path, payload=payload, content_format=content_format).code

    def get(self, path, buf, szx=MAX_SZX, restarts=2):
        """GET a whole resource into `buf`, block-wise when needed; returns (code, length).

        The checks are blockwise.Block2's: a smaller SZX in an answer is kept, the ETag must be
        the same on every block (a change starts over, at most `restarts` times), Size2 or data
        beyond len(buf) raise TOO_LARGE. A code other than 2.05 returns (code, 0).
        """
        if isinstance(path, str):
            path = path_options(path)
        if self.busy():  # its answers would be consumed here: finish a window first
            raise CoapError(NO_SLOT, "exchanges outstanding")
        if self._blocks is None:
            self._blocks = Block2(self)
        rx = self._blocks
        self._into = buf
        rx.begin(path, szx, self._store, limit=len(buf))
        got = 0
        while True:
            rx.ask(got)
            try:
                code = None
                while code is None:
                    code = rx.receive(1000)
            except CoapError as e:
                if e.code != ETAG_CHANGED or restarts <= 0:
                    raise
                restarts -= 1
                rx.begin(path, szx, self._store, limit=len(buf))
                got = 0
                continue
            if code != CONTENT:
                return code, 0
            got = self._got
            if not rx.more:
                return CONTENT, got

    def _store(self, offset, mv):
        self._into[offset : offset + len(mv)] = mv
        self._got = offset + len(mv)
