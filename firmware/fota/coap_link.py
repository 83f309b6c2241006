"""The device side of docs/COAP.md: offers, block-wise downloads, state and events over CoAP.

One object owns the CoAP client and feeds the agent. It polls the offer resource; an offer
goes to the agent (tag = offer id) and the payload is fetched with Block2 straight into
`agent.on_chunk`, at most `window` blocks in flight (1 = RFC 7252's NSTART). A failed
exchange is simply asked again; `max_failures` failures in a row end the attempt
(CONNECTION_LOST) and the link goes quiet for a capped, jittered back-off before it takes the
attempt up again where it stopped (`agent.wanted()` knows what is missing, across power cuts too).

    client = CoapClient(host, 5683, slots=1)
    link = CoapLink(agent, client, device_id)
    agent.reporter = link.report          # agent events are POSTed to fota/<device>/events
    agent.boot()
    link.run()                             # forever: poll offers, download, report

Checks on what the server sends: Size2 must equal the signed manifest's payload size before
the first block reaches the agent (nothing is erased before that); every block must carry the
ETag of the first (a change, also one seen across a reset, starts the download over from
block 0 with the journal dropped); a smaller block size from the server is kept, and chunks
are then assembled from several blocks (the agent's chunk stays `chunk`).
"""

import gc
import json
import struct
import time

from coap.message import (
    BAD_RESPONSE,
    CONTENT,
    GET,
    NOT_FOUND,
    CoapError,
    block2,
    path_options,
    szx_for,
)
from mqtt.backoff import Backoff

from . import errors, store
from .errors import OtaError

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_OFFER_HEAD = const(12)  # b"OFR1", u32 offer id, u16 chunk, u8 policy, u8 reserved (docs/PROTOCOL.md)
_OFFER_MAX = const(12 + 32 + 1024 + 64)  # head, package header, largest manifest, signature
_MAX_EVENTS = const(16)
_MAX_RESTARTS = const(3)  # ETag changes tolerated per offer before the attempt is failed
_DOWNLOADING = const(1)  # agent.DOWNLOADING
_SERVER_ERROR = const(0xA0)  # 5.00 and above: the server failed, try again
_POLICIES = ("auto", "consent", "download-only")


class CoapLink:
    def __init__(self, agent, client, device_id, *, prefix="fota", chunk=1024, window=1, poll_ms=5000,
                 max_failures=4, retry_base_ms=2000, retry_cap_ms=300000):
        self.agent = agent
        self.client = client  # a CoapClient with at least `window` slots
        self.device_id = device_id
        self.prefix = prefix
        base = prefix + "/" + device_id + "/"
        self._p_offer = path_options(base + "offer")
        self._p_state = path_options(base + "state")
        self._p_events = path_options(base + "events")
        self._p_data = None
        self.chunk = chunk  # the agent's chunk: a power of two, 16..1024, the block size asked for
        self.window = window
        self.poll_ms = poll_ms
        self.max_failures = max_failures
        self.connected = False
        self.offer_id = None
        self._offer_blob = None
        self._events = []
        self._state_due = True
        self._flushing = False
        self._quiet = False
        self._complete = False
        self._fails = 0
        self._restarts = 0
        self._restart_offer = None
        self._retry_at = None
        self._resume = False
        self._retry = Backoff(retry_base_ms, retry_cap_ms)
        self._next_poll = time.ticks_ms()
        self._offer_buf = bytearray(_OFFER_MAX)
        self._inflight = []  # payload offsets of the blocks asked for
        self._size = 0
        self._szx = self._bs = 0
        self._etag = bytearray(8)
        self._etag_len = -1  # -1: no block seen yet in this attempt
        self._asm = None  # [[buffer, chunk offset or -1, bitmap of blocks]] when blocks < chunk

    # -- reporting -------------------------------------------------------------
    # The agent's reporter: events queue (bounded) and go out when the link can send.
    def report(self, event, info):
        if self._quiet and event == "failed":
            return  # a restart the link chose (ETag change): not the offer's outcome
        info["event"] = event
        if "tag" in info:
            info["offer"] = info.pop("tag")
        self._events.append(info)
        while len(self._events) > _MAX_EVENTS:
            self._events.pop(0)
        # Not in the middle of a download (the block being handed over lives in the client's
        # buffer): those events go out from step(). "downloaded", "rebooting" go now.
        if self.connected and not self._flushing and not self._inflight and self.agent.state != _DOWNLOADING:
            try:
                self._flush()
            except OSError:
                self._fails += 1  # still queued; step() retries and, if need be, backs off

    def _flush(self):
        self._flushing = True
        try:
            while self._events:
                self._post(self._p_events, json.dumps(self._events[0]))
                self._events.pop(0)
                self._state_due = True
            if self._state_due:
                self._post(self._p_state, self.agent.state_json(self.device_id, self.offer_id))
                self._state_due = False
        finally:
            self._flushing = False

    def _post(self, path, text):
        code = self.client.post(path, text)
        if code >= _SERVER_ERROR:
            raise CoapError(BAD_RESPONSE, code)
        self._ok()  # 2.xx, or a 4.xx that retrying cannot change: either way the message is done

    # -- running ---------------------------------------------------------------
    def connect(self):
        self.client.connect()
        self.connected = True

    def run(self, until=None):
        """Serve forever (or until `until()` is true)."""
        while until is None or not until():
            self.step(100)

    def step(self, timeout_ms=100):
        now = time.ticks_ms()
        if self._retry_at is not None:
            left = time.ticks_diff(self._retry_at, now)
            if left > 0:
                time.sleep_ms(min(left, timeout_ms))
                return
            self._retry_at = None
        if self.client.sock is None:  # first step, or after a back-off: a fresh socket (and DNS lookup)
            try:
                self.connect()
            except OSError as e:
                print("fota: CoAP socket failed:", repr(e))
                self._retry_at = time.ticks_add(now, self._retry.next_ms())
                return
            if self._resume and self.offer_id is not None:
                self._start_attempt()  # take the download up again where it stopped
            self._resume = False
        try:
            if (self._events or self._state_due) and not self._inflight:
                self._flush()
            if self._complete:
                self._complete = False
                self._finish()
            elif self.agent.state == _DOWNLOADING and self._p_data is not None:
                self._download(timeout_ms)
            elif time.ticks_diff(now, self._next_poll) >= 0:
                self._poll_offer()
            else:
                self.client.poll(min(timeout_ms, time.ticks_diff(self._next_poll, now)))
        except OtaError:
            pass  # the agent reported it
        except OSError as e:  # CoapError included
            self._failure(e)
        except MemoryError as e:  # a fragmented heap: end the attempt, report it, try again later
            gc.collect()
            self._fails = self.max_failures - 1
            self._failure(e, errors.OUT_OF_MEMORY, "download")

    def _ok(self):
        self._fails = 0
        if not self.connected:
            self.connected = True
        self._retry.reset()

    def _failure(self, e, code=errors.CONNECTION_LOST, detail=None):
        self._fails += 1
        if self._fails < self.max_failures:
            return  # the next step asks again
        print("fota: CoAP attempt ends:", repr(e))
        self._fails = 0
        self.connected = False  # events queue until the back-off is over
        self._drop_window()
        self.client.close()
        if self.agent.state == _DOWNLOADING:
            self.agent.cancel_with(code, detail or "no answer after %d tries" % self.max_failures)
            self._resume = True
        self._retry_at = time.ticks_add(time.ticks_ms(), self._retry.next_ms())

    def _drop_window(self):
        self.client.cancel_all()
        self._inflight = []
        if self._asm:
            for a in self._asm:
                a[1] = -1

    # -- offers ------------------------------------------------------------------
    def _poll_offer(self):
        self._next_poll = time.ticks_add(time.ticks_ms(), self.poll_ms)
        code, n = self.client.get(self._p_offer, self._offer_buf)
        self._ok()
        if code == NOT_FOUND:  # no offer, or it was withdrawn
            if self.offer_id is not None and self.agent.state == _DOWNLOADING:
                self.agent.cancel()
            self.offer_id = None
            return
        buf = self._offer_buf
        if code != CONTENT or n < _OFFER_HEAD or buf[0] != 0x4F or buf[1:4] != b"FR1":
            return
        offer_id, _chunk, policy = struct.unpack_from("<IHB", buf, 4)
        if offer_id == self.offer_id or offer_id in self.agent.store.data.get("offers_done", ()):
            return
        self.offer_id = offer_id
        self._offer_blob = bytes(buf[_OFFER_HEAD:n])
        if offer_id != self._restart_offer:
            self._restarts, self._restart_offer = 0, offer_id
        self.agent.policy = _POLICIES[policy] if policy < len(_POLICIES) else "auto"
        self._start_attempt()

    def _start_attempt(self):
        self._retry_at = None
        self._resume = False
        self._drop_window()
        self._p_data = None
        try:
            m = self.agent.offer(self._offer_blob, self.chunk, tag=self.offer_id)
        except OtaError as e:
            self._done(e.code)
            return
        self._size = m.encoded_size
        self._szx = szx_for(self.chunk)
        self._bs = 16 << self._szx
        self._etag_len = -1
        self._p_data = path_options(self.prefix + "/o/" + str(self.offer_id))

    def _done(self, code):
        # An offer with an outcome is never tried again, even if the server still offers it.
        self._drop_window()
        self._p_data = None
        done = self.agent.store.data.setdefault("offers_done", [])
        done.append(self.offer_id)
        del done[:-8]
        self.agent.store.save()
        self._state_due = True

    def _finish(self):
        self._drop_window()
        try:
            self.agent.finish()  # resets into the new image when the policy says so
        except OtaError as e:
            self._done(e.code)
            return
        self._state_due = True

    # -- blocks ------------------------------------------------------------------
    def _download(self, timeout_ms):
        self._fill()
        ex = self.client.poll(timeout_ms)
        if ex is None:
            return
        offset, error = ex.tag, ex.error
        self.client.free(ex)  # its response stays in client.msg until the next poll
        if offset in self._inflight:
            self._inflight.remove(offset)
        if error:
            raise CoapError(error)
        self._on_block(offset, self.client.msg)
        self._ok()

    # Ask for the blocks of the chunks the agent wants, up to the window.
    def _fill(self):
        if self._events:
            return  # let the window drain: events go out between blocks (step)
        per = self.chunk // self._bs
        for c in self.agent.wanted(self.window):
            if len(self._inflight) >= self.window:
                return
            if per == 1:
                if c not in self._inflight:
                    self._ask(c)
                continue
            a = self._assembly(c)
            if a is None:
                return
            for k in range(per):
                b = c + k * self._bs
                if b >= self._size or len(self._inflight) >= self.window:
                    break
                if not a[2] & (1 << k) and b not in self._inflight:
                    self._ask(b)

    def _ask(self, offset):
        num = offset >> (self._szx + 4)
        self.client.start(GET, self._p_data, block=block2(num, 0, self._szx), size2=0 if num == 0 else -1, tag=offset)
        self._inflight.append(offset)

    def _on_block(self, offset, m):
        if m.code == NOT_FOUND:  # the server no longer has this offer
            self.agent.cancel()
            self._done(errors.CANCELLED)
            return
        if m.code != CONTENT:
            raise CoapError(BAD_RESPONSE, m.code)
        n = m.payload_len()
        num, more, szx = 0, 0, self._szx
        if m.block2 >= 0:
            num, more, szx = m.block2 >> 4, m.block2 & 8, m.block2 & 7
        if szx > self._szx or (num << (szx + 4)) != offset:
            raise CoapError(BAD_RESPONSE, "block")
        if (more and n != 16 << szx) or (not more and offset + n != self._size):
            raise CoapError(BAD_RESPONSE, "block length")
        if m.size2 >= 0 and m.size2 != self._size:  # before block 0 reaches the agent: nothing erased
            code = errors.TOO_BIG if m.size2 > self._size else errors.CHUNK_RANGE
            self.agent.cancel_with(code, "Size2 %d, manifest %d" % (m.size2, self._size))
            self._done(code)
            return
        if not self._same_etag(m):
            self._restart()
            return
        if szx < self._szx:  # RFC 7959 2.4: keep the server's smaller block size
            self._szx, self._bs = szx, 16 << szx
        mv = self.client.payload()
        try:
            if 16 << szx >= self.chunk:
                self.agent.on_chunk(offset, mv)
            else:
                self._assemble(offset, szx, mv)
        except OtaError as e:
            self._done(e.code)
            return
        if self.agent.complete():
            self._complete = True

    def _assembly(self, c):
        # The assembly slot of chunk `c` (claimed if new), or None when all are taken.
        if self._asm is None:
            self._asm = [[bytearray(self.chunk), -1, 0] for _ in range(self.window)]
        free = None
        for a in self._asm:
            if a[1] == c:
                return a
            if a[1] < 0 and free is None:
                free = a
        if free is not None:
            free[1], free[2] = c, 0
        return free

    def _assemble(self, offset, szx, mv):
        c = offset - offset % self.chunk
        a = self._assembly(c)
        if a is None:
            return
        bs = 16 << szx
        k = (offset - c) >> (szx + 4)
        a[0][offset - c : offset - c + len(mv)] = mv
        a[2] |= 1 << k
        end = min(c + self.chunk, self._size)
        need = (1 << ((end - c + bs - 1) // bs)) - 1
        if a[2] & need == need:
            a[1] = -1
            self.agent.on_chunk(c, memoryview(a[0])[: end - c])

    # -- ETag --------------------------------------------------------------------------
    # The first block's ETag is kept (RAM, and the state file for after a reset); later ones must match.
    def _same_etag(self, m):
        n = m.etag_len
        if self._etag_len < 0:
            self._etag[:n] = m.etag[:n]
            self._etag_len = n
            tag = [self.offer_id, bytes(m.etag[:n]).hex()]
            data = self.agent.store.data
            before = data.get("coap_etag")
            if before != tag:
                data["coap_etag"] = tag
                self.agent.store.save()
            return before is None or before[0] != self.offer_id or before == tag
        if n != self._etag_len:
            return False
        for i in range(n):
            if m.etag[i] != self._etag[i]:
                return False
        return True

    def _restart(self):
        # The resource changed under this offer: what is in flash may be of the old one.
        self._drop_window()
        self._restarts += 1
        if self._restarts > _MAX_RESTARTS:
            self.agent.cancel_with(errors.CANCELLED, "ETag keeps changing")
            self._done(errors.CANCELLED)
            return
        self._quiet = True
        try:
            self.agent.cancel_with(errors.CANCELLED, "ETag changed: download restarts")
        finally:
            self._quiet = False
        store.remove(self.agent.journal_path)
        self.agent.store.data.pop("coap_etag", None)
        self.agent.store.save()
        self.offer_id = None  # fetch the offer again: it may have changed too
        self._p_data = None
        self._next_poll = time.ticks_ms()
