"""The update link over CoAP (docs/COAP.md): resources and the block window; the rest is core.Link.

    client = CoapClient(host, 5683, slots=1)
    link = CoapLink(agent, client, device_id)
    agent.reporter = link.report          # agent events are POSTed to fota/<device>/events
    agent.boot()
    link.run()                             # forever: poll offers, download, report

It polls fota/<device>/offer every poll_ms and fetches fota/o/<offer id> with Block2
(fota.coap.blockwise: Size2 against the signed size before anything is erased, one ETag per
download, also across a reset, the server's smaller block size kept) straight into the agent,
`window` blocks in flight (1 = RFC 7252's NSTART). With `qblock` the payload comes in Q-Block2
bursts instead (fota.coap.qblock, RFC 9177: NON requests for up to 10 blocks each, lost blocks
found by order and asked again, `window` the most outstanding). A failed exchange is asked again;
`max_failures` in a row end the attempt (CONNECTION_LOST) and the link goes quiet for the
back-off, then takes the download up where it stopped. While a download runs, progress reports
are coalesced and go out at most every `report_ms` (other events at once, between blocks). With
`qblock` the reports of a download go beside the blocks: one confirmable POST at a time while the
blocks keep coming, so a lost report waits out its retransmission without stopping the download.
"""

import gc

from .. import errors
from ..agent import DOWNLOADING
from ..coap.blockwise import SIZE_MISMATCH, Block2
from ..coap.message import BAD_RESPONSE, CONTENT, ETAG_CHANGED, NOT_FOUND, TOO_LARGE, CoapError, path_options, szx_for
from ..compat import const, sleep_ms, ticks_add, ticks_diff, ticks_ms
from ..errors import OtaError
from .core import Link
from .wire import OFFER_MAX

_SERVER_ERROR = const(0xA0)  # 5.00 and above: the server failed, try again


class CoapLink(Link):
    def __init__(self, agent, client, device_id, *, prefix="fota", chunk=1024, window=1, poll_ms=5000,
                 max_failures=4, retry_base_ms=2000, retry_cap_ms=300000, qblock=False, report_ms=5000):
        super().__init__(agent, device_id, max_misses=max_failures, chunk=chunk, retry_base_ms=retry_base_ms,
                         retry_cap_ms=retry_cap_ms)
        self.client = client  # a CoapClient with at least `window` slots
        self.prefix = prefix
        base = prefix + "/" + device_id + "/"
        self._p_offer = path_options(base + "offer")
        self._p_state = path_options(base + "state")
        self._p_events = path_options(base + "events")
        self.window = window
        self.poll_ms = poll_ms
        self.max_failures = max_failures
        self._next_poll = ticks_ms()
        self._offer_buf = bytearray(OFFER_MAX)
        self.report_ms = report_ms  # while downloading, progress goes out at most this often (coalesced)
        self._reported = ticks_ms()  # when progress last went out
        self._progressed = False  # progress went out in this download (the first goes out at once)
        # chunk: a power of two, 16..1024, the block size asked for
        self._ahead = 1 if qblock else 0  # Q-Block2: blocks beyond those outstanding (lost ones stay behind)
        self._bs = None  # Q-Block2: reports go beside the blocks (link/beside.py)
        if qblock:
            from ..coap.qblock import QBlock2  # only on a device that uses it: its code stays out of the heap otherwise

            from .beside import Beside

            self._rx = QBlock2(client, window)
            self._bs = Beside(self)
        else:
            self._rx = Block2(client, window, chunk)

    # The agent's reports: a progress report replaces one still queued (the newest says it all).
    def report(self, event, info):
        q = self._events
        if event == "progress" and q and q[-1].get("event") == "progress":
            q.pop()
        if self._bs is not None and not self._bs.downloading():
            self._bs.settle()  # the download is over: the POST still on its way ends first, then this one goes
        super().report(event, info)

    # Queued reports wait while a download runs when all they say is progress and progress went out
    # less than report_ms ago: each flush is two confirmable POSTs (event, state) during which no
    # block moves, and under loss each waits out its own retransmissions.
    def _reports_wait(self):
        if self._state_due or self.agent.state != DOWNLOADING or self._rx.path is None:
            return False
        for e in self._events:
            if e.get("event") != "progress":
                return False
        return self._progressed and ticks_diff(ticks_ms(), self._reported) < self.report_ms

    # -- core.Link hooks: where events, state and blocks go ---------------------------
    def _send_event(self, text):
        self._post(self._p_events, text)

    def _send_state(self, text):
        self._post(self._p_state, text)

    # Not in the middle of a download (the block being handed over lives in the client's buffer):
    # those events go out from step(). "downloaded", "rebooting" go now.
    def _may_send(self):
        return not self._rx.inflight and self.agent.state != DOWNLOADING and (self._bs is None or self._bs.posting is None)

    def busy(self):
        return (self._bs is not None and self._bs.posting is not None) or super().busy()

    def _begin_fetch(self, m):
        self._progressed = False
        pinned = self.agent.source(self.offer_id)
        self._rx.begin(path_options(self.prefix + "/o/" + str(self.offer_id)), szx_for(self.chunk), self._sink,
                       size=m.encoded_size, etag=bytes.fromhex(pinned) if pinned else None)

    def _stop_fetch(self):
        self._rx.drop()  # Q-Block2: the stream alone, a report POST on its way goes on
        self._rx.path = None

    def _post(self, path, text):
        code = self.client.post(path, text)
        if code >= _SERVER_ERROR:
            raise CoapError(BAD_RESPONSE, code)
        self._ok()  # 2.xx, or a 4.xx that retrying cannot change: either way the message is done

    # -- running ---------------------------------------------------------------------
    def run(self, until=None):
        """Serve forever (or until `until()` is true)."""
        while until is None or not until():
            self.step(100)

    def step(self, timeout_ms=100):
        left = self._retry_left()
        if left:
            sleep_ms(min(left, timeout_ms))
            return
        if self.client.sock is None:  # first step, or after a back-off: a fresh socket (and DNS lookup)
            try:
                self.client.connect()
            except OSError as e:
                print("fota: CoAP socket failed:", repr(e))
                self._retry_at = ticks_add(ticks_ms(), self._retry.next_ms())
                return
            self.connected = True
        if self._retry_at is not None:
            self._retry_due()  # take the download up again where it stopped
        now = ticks_ms()
        try:
            if self._bs is not None and (self._bs.posting is not None or self._bs.downloading()):
                self._bs.step()
            elif self._flush_due() and not self._rx.inflight and not self._reports_wait():
                progress = self._events and self._events[-1].get("event") == "progress"
                self._flush()
                if progress and self.agent.state == DOWNLOADING:
                    self._reported, self._progressed = ticks_ms(), True
            if self._complete:
                self._finish()
            elif self._past_deadline():
                if self._bs is not None:
                    self._bs.abandon()
                self._rx.drop()
                self._give_up(errors.DEADLINE, "attempt over %d s" % (self.deadline_ms // 1000))
            elif self.agent.state == DOWNLOADING and self._rx.path is not None:
                self._download(timeout_ms)
            elif ticks_diff(now, self._next_poll) >= 0:
                self._poll_offer()
            else:
                self.client.poll(min(timeout_ms, ticks_diff(self._next_poll, now)))
        except OtaError:
            pass  # the agent reported it
        except OSError as e:  # CoapError included
            self._failure(e)
        except MemoryError as e:  # a fragmented heap: end the attempt, report it, try again later
            gc.collect()
            self._misses = self.max_misses - 1
            self._failure(e, errors.OUT_OF_MEMORY, "download")

    def _ok(self):
        self._misses = 0
        self.connected = True
        self._retry.reset()

    def _failure(self, e, code=errors.CONNECTION_LOST, detail=None):
        if not self._miss():
            return  # the next step asks again
        print("fota: CoAP attempt ends:", repr(e))
        self.connected = False  # events queue until the back-off is over
        if self._bs is not None:
            self._bs.abandon()
        self._rx.drop()
        self.client.close()
        self._give_up(code, detail or "no answer after %d tries" % self.max_failures)

    # -- offers and blocks -------------------------------------------------------------
    def _poll_offer(self):
        self._next_poll = ticks_add(ticks_ms(), self.poll_ms)
        code, n = self.client.get(self._p_offer, self._offer_buf)
        self._ok()
        if code == NOT_FOUND:  # no offer, or it was withdrawn
            self.withdrawn()
        elif code == CONTENT:
            self.on_offer(self._offer_buf, n)

    def _download(self, timeout_ms):
        rx = self._rx
        if (self._bs is not None or not self._events or self._reports_wait()) and rx.hungry():  # Block2: drain, reports go between blocks
            rx.fill(self.agent.wanted(self.window + self._ahead * len(rx.inflight)))
        try:
            code = rx.receive(timeout_ms)  # a block that passed the checks went to the agent
        except CoapError as e:
            if e.code == ETAG_CHANGED:
                self._source_changed()
                self._next_poll = ticks_ms()  # fetch the offer again now
            elif e.code == TOO_LARGE or e.code == SIZE_MISMATCH:  # Size2: nothing was erased
                code = errors.TOO_BIG if e.code == TOO_LARGE else errors.CHUNK_RANGE
                self.agent.cancel_with(code, "Size2 %d, manifest %d" % (e.args[1], rx.size))
                self._done(code)
            else:
                raise
            self._ok()
            return
        if code is None:
            return
        if code == NOT_FOUND:  # the server no longer has this offer
            self.agent.cancel()
            self._done(errors.CANCELLED)
        elif code != CONTENT:
            raise CoapError(BAD_RESPONSE, code)
        elif rx.first:  # the ETag this download is of, kept for after a reset
            self.agent.pin_source(self.offer_id, bytes(rx.etag[: rx.etag_len]).hex())
        self._ok()
