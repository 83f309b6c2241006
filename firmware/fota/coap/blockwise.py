"""Block-wise GET (RFC 7959 Block2): one receiver for the client's `get` and the update link.

    rx = Block2(client, window=4, unit=1024)     # at most 4 blocks in flight; hand over 1024-byte units
    rx.begin(path_options("fota/o/7"), szx=6, sink=agent.on_chunk, size=encoded_size)
    rx.fill(agent.wanted(4))                     # ask for the blocks of these units, up to the window
    code = rx.receive(100)                       # None, or the response code of one answer
    # CONTENT: the block passed every check and went to sink(offset, memoryview)

The checks, in this order, on every answer and before its payload reaches the sink (so
nothing is erased on a bad answer): 2.05 Content (another code is returned, nothing else
happens); the Block2 number, size and length agree with what was asked (BAD_RESPONSE); Size2,
when the server sends it, is the size the caller expects (TOO_LARGE when larger or beyond
`limit`, SIZE_MISMATCH when smaller); the ETag is the first block's (ETAG_CHANGED: the
resource changed, the caller starts over). A smaller block size in an answer is kept for the
rest of the transfer (RFC 7959 2.4); a larger one is refused. When blocks are smaller than
`unit`, blocks are assembled into whole units (one `unit` buffer per window slot, allocated
once) and the sink sees whole units only; `unit=0` hands every block over as it comes.

More than one block in flight (RFC 7252 4.7: NSTART above 1 needs congestion control, 4.8.1): the
blocks asked for at once (`cwnd`) start at 1, grow by one after `cwnd` answers in a row and halve,
down to 1, when an exchange was retransmitted or failed (additive increase, multiplicative
decrease), never above `window`. Each exchange keeps its own exponential back-off (client.py).
"""

from ..compat import const
from .message import BAD_RESPONSE, CONTENT, ETAG_CHANGED, GET, MAX_ETAG, TOO_LARGE, CoapError, block2

SIZE_MISMATCH = const(226)  # Size2 smaller than the size the caller expects (CoapError.code)


class Block2:
    def __init__(self, client, window=1, unit=0):
        self.client = client  # a CoapClient with at least `window` slots
        self.window = window
        self.cwnd = 1  # blocks asked for at once now: 1..window (AIMD, see above)
        self._run = 0  # answers since cwnd last changed
        self._rtx = 0  # client.retransmissions when last looked
        self.unit = unit
        self.inflight = []  # payload offsets of the blocks asked for
        self.path = None
        self.sink = None
        self.size = -1  # the exact size expected, or -1
        self.limit = -1  # refuse data or a Size2 beyond this, or -1
        self.szx = 6
        self.bs = 1024
        self.etag = bytearray(MAX_ETAG)
        self.etag_len = -1  # -1: no block seen yet in this transfer
        self.more = 0  # the last answer said more blocks follow
        self.first = False  # the last answer was the first of the transfer (its ETag was taken)
        self._expect = None
        self._asm = None  # [[buffer, unit offset or -1, bitmap of blocks]] when blocks < unit

    # Start a transfer (or start one over): nothing in flight. `etag` (bytes), when given, is the
    # one the first block must carry too (a transfer resumed after a reset).
    def begin(self, path, szx, sink, size=-1, limit=-1, etag=None):
        self.drop()
        self.path = path
        self.sink = sink
        self.szx, self.bs = szx, 16 << szx
        self.size = size
        self.limit = limit
        self.etag_len = -1
        self._expect = etag
        self.cwnd, self._run, self._rtx = 1, 0, self.client.retransmissions

    # Forget what is in flight (late answers are then ignored) and any half-assembled unit.
    def drop(self):
        self.client.cancel_all()
        self.inflight = []
        if self._asm:
            for a in self._asm:
                a[1] = -1

    def hungry(self):
        """fill() could ask for more now."""
        return len(self.inflight) < self.cwnd

    # Ask for the blocks of the units at `offsets` (or the blocks themselves when unit=0).
    def fill(self, offsets):
        per = self.unit // self.bs if self.unit > self.bs else 1
        for c in offsets:
            if len(self.inflight) >= self.cwnd:
                return
            if per == 1:
                if c not in self.inflight:
                    self.ask(c)
                continue
            a = self._assembly(c)
            if a is None:
                return
            for k in range(per):
                b = c + k * self.bs
                if (self.size >= 0 and b >= self.size) or len(self.inflight) >= self.cwnd:
                    break
                if not a[2] & (1 << k) and b not in self.inflight:
                    self.ask(b)

    def ask(self, offset):
        num = offset >> (self.szx + 4)
        self.client.start(GET, self.path, block=block2(num, 0, self.szx), size2=0 if num == 0 else -1, tag=offset)
        self.inflight.append(offset)

    def receive(self, timeout_ms):
        """Wait up to `timeout_ms` for one answer: None, or its response code (CONTENT: delivered).

        Raises CoapError: the exchange failed (TIMEOUT, RESET) or the answer failed a check.
        """
        ex = self.client.poll(timeout_ms)
        rtx = self.client.retransmissions
        if rtx != self._rtx or (ex is not None and ex.error):  # a loss: halve what is asked for at once
            self._rtx = rtx
            self.cwnd = self.cwnd >> 1 or 1
            self._run = 0
        if ex is None:
            return None
        offset, error = ex.tag, ex.error
        self.client.free(ex)  # its response stays in client.msg until the next poll
        if offset in self.inflight:
            self.inflight.remove(offset)
        if error:
            raise CoapError(error)
        m = self.client.msg
        if m.code != CONTENT:
            return m.code
        self._check(offset, m)
        self._run += 1
        if self._run >= self.cwnd and self.cwnd < self.window:
            self.cwnd += 1
            self._run = 0
        mv = self.client.payload()
        if self.unit <= self.bs:
            self.sink(offset, mv)
        else:
            self._assemble(offset, mv)
        return CONTENT

    def _check(self, offset, m):
        n = m.payload_len()
        num, more, szx = 0, 0, self.szx
        if m.block2 >= 0:
            num, more, szx = m.block2 >> 4, m.block2 & 8, m.block2 & 7
        if szx > self.szx or (num << (szx + 4)) != offset:
            raise CoapError(BAD_RESPONSE, "block")
        if (more and n != 16 << szx) or (not more and self.size >= 0 and offset + n != self.size):
            raise CoapError(BAD_RESPONSE, "block length")
        if m.size2 >= 0:  # before the block reaches the sink: nothing erased on a wrong size
            if (self.limit >= 0 and m.size2 > self.limit) or (self.size >= 0 and m.size2 > self.size):
                raise CoapError(TOO_LARGE, m.size2)
            if self.size >= 0 and m.size2 != self.size:
                raise CoapError(SIZE_MISMATCH, m.size2)
        if self.limit >= 0 and offset + n > self.limit:
            raise CoapError(TOO_LARGE, offset + n)
        self.first = self.etag_len < 0
        if self.first:
            if self._expect is not None and bytes(m.etag[: m.etag_len]) != self._expect:
                raise CoapError(ETAG_CHANGED)
            self.etag[: m.etag_len] = m.etag[: m.etag_len]
            self.etag_len = m.etag_len
        elif not self._same_etag(m):
            raise CoapError(ETAG_CHANGED)
        if szx < self.szx:  # RFC 7959 2.4: keep the server's smaller block size
            self.szx, self.bs = szx, 16 << szx
        self.more = more

    def _same_etag(self, m):
        n = m.etag_len
        if n != self.etag_len:
            return False
        for i in range(n):
            if m.etag[i] != self.etag[i]:
                return False
        return True

    # The assembly slot of unit `c` (claimed if new), or None when all are taken.
    def _assembly(self, c):
        if self._asm is None:
            self._asm = [[bytearray(self.unit), -1, 0] for _ in range(self.window)]
        free = None
        for a in self._asm:
            if a[1] == c:
                return a
            if a[1] < 0 and free is None:
                free = a
        if free is not None:
            free[1], free[2] = c, 0
        return free

    def _assemble(self, offset, mv):
        c = offset - offset % self.unit
        a = self._assembly(c)
        if a is None:
            return
        bs = self.bs
        a[0][offset - c : offset - c + len(mv)] = mv
        a[2] |= 1 << ((offset - c) // bs)
        end = min(c + self.unit, self.size)
        need = (1 << ((end - c + bs - 1) // bs)) - 1
        if a[2] & need == need:
            a[1] = -1
            self.sink(c, memoryview(a[0])[: end - c])
