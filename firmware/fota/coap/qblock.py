"""Q-Block2 download (RFC 9177): blocks asked for in bursts, the missing ones asked for again.

    rx = QBlock2(client, window=16)             # a CoapClient; at most 16 blocks asked for and not received
    rx.begin(path_options("fota/o/7"), szx=6, sink=agent.on_chunk, size=encoded_size)
    rx.fill(agent.wanted(16 + len(rx.inflight)))   # ask for these blocks (those not asked for yet), up to cwnd
    code = rx.receive(100)                       # None, or the response code of one answer

The same receiver as blockwise.Block2 (begin, drop, fill, receive, inflight, etag, first) and
the same checks on every answer before it reaches the sink, but one request asks for up to
MAX_PAYLOADS blocks: a NON GET with one Q-Block2 option per block (ascending, RFC 9177 4.4, the
form of a request for missing blocks), answered by one NON 2.05 per block, each with Q-Block2,
ETag and Size2 (host_tools/server/coap_service.py). Blocks are handed over in any order; a
block that is not outstanding (late, duplicated, asked again meanwhile and already handed over)
is dropped, so no block reaches the sink twice.

Loss is found by order, not by timers: the server answers in the order blocks were asked for,
so when a block arrives, an outstanding block asked for _REORDER or more blocks before it is
counted lost and becomes askable again (agent.wanted() lists it: it is missing). Only the
answer to a block's latest ask counts for order, round trip and losses: answers carry their
request's token, whose last byte numbers the requests, and that byte is kept with each ask (an
answer to an earlier ask, after a probe asked again, is data and nothing more). Only when
nothing at all arrives for a retransmission timeout (ACK_TIMEOUT randomised by
ACK_RANDOM_FACTOR, doubled per timeout in a row, MAX_RETRANSMIT of them end the download with
TIMEOUT, RFC 7252 4.8) is everything outstanding asked for again.

Congestion control (RFC 7252 4.7 and 4.8.1 allow more than NSTART outstanding only with it;
RFC 8085 3.1): `cwnd` interactions may be outstanding: blocks asked for, and the client's
confirmable exchange when one is on its way (a report POST beside the download). It starts at
min(window, MAX_PAYLOADS) (RFC 9177 7.2: the burst a server may send before it hears from the
client), grows by one after `cwnd` blocks arrived, up to `window`, and halves, never below that
start, once per round trip with a loss (a loss of a block asked for after the last decrease;
RFC 6582's one reduction per window). A timeout puts it back to the start. When nothing arrives
for two round trips, the oldest outstanding block is asked for again (a tail probe, RFC 8985);
the first round trip is the client's last confirmable exchange answered at its first try (the
offer's GET, or a report's later), so a lost first request is probed too instead of waiting the
retransmission timeout. The client's read buffer should hold `window` answers (CoapClient
rx_blocks): a burst read whole is not cut.
"""

from ..compat import const, getrandbits, ticks_add, ticks_diff, ticks_ms
from .blockwise import Block2
from .message import BAD_RESPONSE, CONTENT, GET, TIMEOUT, CoapError

MAX_PAYLOADS = const(10)  # RFC 9177 7.2: blocks per burst (the same on both peers)
_PROBE_SLACK_MS = const(5)  # added to 2 x SRTT (timer ticks, the peer's and our own processing)
_REORDER = const(3)  # a block this many places behind one that arrived is lost (TCP's dupthresh, RFC 5681)


class QBlock2(Block2):
    def __init__(self, client, window=16):
        super().__init__(client, window, 0)
        self.window = window if window > 1 else 1
        self.floor = window if window < MAX_PAYLOADS else MAX_PAYLOADS  # cwnd never below this
        self.inflight = []  # payload offsets asked for and not received, in the order asked
        self._seq = []  # (ask number << 8) | the request's token byte, of each (parallel to inflight)
        self._asked = 0  # ask numbers handed out
        self._recover = 0  # no decrease for a loss of a block asked before this
        self._nums = [0] * MAX_PAYLOADS  # Q-Block2 values of the next request
        self._st = None
        self._deadline = self._probe = 0  # ticks: the retransmission timeout, the next probe
        self._rto = 0
        self._tries = 0
        self._srtt = 0  # smoothed round trip (ms), 0: none measured yet
        self._timed = 0  # the first ask number of the request being timed, 0: none
        self._timed_at = 0
        self._probes = 0  # probes since the last answer
        self.lost = 0  # counters for tests and benchmarks
        self.requests = 0
        self.timeouts = 0
        self.probes = 0

    def begin(self, path, szx, sink, size=-1, limit=-1, etag=None):
        super().begin(path, szx, sink, size, limit, etag)
        self.cwnd = self.floor
        self._seq = []
        self._st = None
        self._tries = self._timed = 0
        self._srtt = self.client.rtt_ms  # the offer's GET just before: probes from the first request on

    def drop(self):
        self.client.end_stream()  # the stream alone: a report POST beside it goes on
        self.inflight = []
        self._seq = []
        self._st = None

    def hungry(self):
        """fill() would ask for more now (so the caller lists what it wants only then)."""
        room = self.cwnd - len(self.inflight) - self.client.busy()  # a report POST on its way takes a place
        return room > 0 and (not self.inflight or room >= (self.cwnd // 3 or 1))

    # Ask for the blocks at `offsets` that are not outstanding, up to cwnd, in requests of a third of
    # cwnd (so that one lost request leaves room for another, whose answers show the loss).
    def fill(self, offsets):
        if not self.hungry():
            return  # wait until a whole request's worth can go
        per = self.cwnd // 3 or 1
        room = self.cwnd - len(self.inflight) - self.client.busy()  # a report POST on its way takes a place
        nums, n = self._nums, 0
        if self._st is None:
            self._st = self.client.stream()
            self._timer(True)
        elif not self.inflight:  # nothing was outstanding: the timer starts now (after a timeout: doubled)
            self._deadline = ticks_add(ticks_ms(), self._rto)
        idle = not self.inflight
        for c in offsets:
            if room == 0:
                break
            if c in self.inflight:
                continue
            nums[n] = c
            n += 1
            room -= 1
            if n == per or n == MAX_PAYLOADS:
                self._send(n)
                n = 0
        if n and (idle or room):  # a part of a request: only when nothing else is outstanding, or nothing more is wanted
            self._send(n)

    # One request for the offsets nums[:n] (turned into Q-Block2 values here, ascending: RFC 9177 4.4).
    def _send(self, n):
        nums, sh, first = self._nums, self.szx + 4, -1
        nums_sorted(nums, n)
        req = self.client.stream_next()
        for i in range(n):
            c = nums[i]
            self.inflight.append(c)
            self._asked += 1
            self._seq.append((self._asked << 8) | req)
            if c == 0:
                first = 0  # Size2 0 on block 0: the size comes back
            nums[i] = ((c >> sh) << 4) | self.szx
        if not self._timed:
            self._timed, self._timed_at = self._asked - n + 1, ticks_ms()
        self.client.send_stream(GET, self.path, nums, n, size2=first)
        self.requests += 1
        self._arm_probe()

    def ask(self, offset):
        self.fill((offset,))

    def receive(self, timeout_ms):
        """Wait up to `timeout_ms` for one answer: None, or its response code (CONTENT: delivered).

        Raises CoapError: nothing arrived after MAX_RETRANSMIT timeouts (TIMEOUT), the server
        reset the stream (RESET), or an answer failed a check.
        """
        if self.inflight:
            if not self._srtt and self.client.rtt_ms:  # no round trip yet: the client's first clean one (a report's)
                self._srtt = self.client.rtt_ms
                self._arm_probe()
            now = ticks_ms()
            due = self._probe if self._srtt and ticks_diff(self._probe, self._deadline) < 0 else self._deadline
            left = ticks_diff(due, now)
            if left < timeout_ms:
                timeout_ms = left if left > 0 else 0
        ex = self.client.poll(timeout_ms)
        if ex is None or ex is not self._st:  # an exchange of someone else's (a report beside the blocks): theirs to free
            if self.inflight:
                self._timers()
            return None
        if ex.error:
            raise CoapError(ex.error)
        m = self.client.msg
        if m.code != CONTENT:
            return m.code
        if m.block2 < 0 or not m.qblock:
            raise CoapError(BAD_RESPONSE, "no Q-Block2")
        offset = (m.block2 >> 4) << ((m.block2 & 7) + 4)
        try:
            i = self.inflight.index(offset)
        except ValueError:
            return None  # not outstanding: a late or duplicated answer, or one handed over already
        if m.block2 & 7 != self.szx:  # answered as asked, or not at all (no smaller block size in a burst)
            raise CoapError(BAD_RESPONSE, "block size")
        self._check(offset, m)
        self.inflight.pop(i)
        seq = self._seq.pop(i)
        if self.client.stream_req() == seq & 0xFF:
            self._answered(seq >> 8)
        else:  # the answer to an earlier ask of a block asked again (a probe's): good data, but its place
            self._heard()  # in the order is not this ask's, so it shows no loss and no round trip
        self.sink(offset, self.client.payload())
        return CONTENT

    # Block `seq` arrived: timers, round trip, the blocks it overtook, the window.
    def _answered(self, seq):
        if self._timed and seq >= self._timed:
            rtt = ticks_diff(ticks_ms(), self._timed_at) or 1  # under a tick: 1 (0 means none measured)
            self._srtt = rtt if not self._srtt else ((7 * self._srtt + rtt) >> 3 or 1)
            self._timed = 0
        self._losses(seq - _REORDER)
        self._heard()

    # A block arrived: the timers start again, the window may grow.
    def _heard(self):
        self._probes = 0
        self._timer(True)
        self._arm_probe()
        self._run += 1
        if self._run >= self.cwnd and self.cwnd < self.window:
            self.cwnd += 1
            self._run = 0

    # The outstanding blocks asked for as `upto`-th or earlier were overtaken: lost, askable again.
    def _losses(self, upto):
        seq, newest = self._seq, 0
        while seq and seq[0] >> 8 <= upto:
            self.inflight.pop(0)
            newest = seq.pop(0) >> 8
            self.lost += 1
        if newest > self._recover:  # the first loss of this round trip: halve once
            self.cwnd = self.cwnd >> 1 if self.cwnd >> 1 > self.floor else self.floor
            self._run = 0
            self._recover = self._asked

    def _timers(self):
        now = ticks_ms()
        if ticks_diff(now, self._deadline) >= 0:
            self._timeout()
        elif self._srtt and ticks_diff(now, self._probe) >= 0:
            self._tail_probe()

    # Nothing arrived for a while, yet the retransmission timeout is not up (RFC 8985's tail loss
    # probe): the oldest outstanding block is asked for again, once; its answer, or the original's,
    # shows what else was lost. The window does not grow: the probe takes the old ask's place.
    def _tail_probe(self):
        self._probes += 1
        self.probes += 1
        c = self.inflight.pop(0)
        self._seq.pop(0)
        self._nums[0] = c
        self._send(1)

    # The probe is due two smoothed round trips after the last answer or request (doubling per
    # probe without an answer); none before a round trip was measured.
    def _arm_probe(self):
        self._probe = ticks_add(ticks_ms(), (2 * self._srtt + _PROBE_SLACK_MS) << self._probes)

    # Nothing arrived for the timeout: everything outstanding is askable again.
    def _timeout(self):
        self.timeouts += 1
        self.lost += len(self.inflight)
        self.inflight = []
        self._seq = []
        self.cwnd = self.floor
        self._run = 0
        self._recover = self._asked
        self._timed = 0
        if self._tries >= self.client.max_retransmit:
            self._timer(True)  # the caller decides whether to go on: then with fresh timers
            raise CoapError(TIMEOUT)
        self._tries += 1
        self._timer(False)

    # Arm the retransmission timer: a fresh randomised ACK_TIMEOUT after progress, doubled after a timeout.
    def _timer(self, progress):
        c = self.client
        if progress:
            self._tries = 0
            self._rto = c.ack_timeout_ms + ((getrandbits(16) * c.ack_spread_ms) >> 16)
        else:
            self._rto *= 2
        self._deadline = ticks_add(ticks_ms(), self._rto)


# Insertion sort of a[:n] (n <= MAX_PAYLOADS; no list is made).
def nums_sorted(a, n):
    for i in range(1, n):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v
