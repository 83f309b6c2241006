"""The link core: what every update link does, whatever carries it (MQTT, CoAP, ...).

It takes offers (parsing, policy, offers already done), runs attempts (start, chunks into the
agent, finish; misses counted, then the attempt ends and comes back after a capped, jittered
back-off, keeping what is in flash), and reports (a bounded event queue, then the state
document). A transport subclasses `Link` and supplies only its mapping onto the wire:

    _send_event(text), _send_state(text)   # deliver one event / the state document (raise OSError)
    _may_send()                            # True when sending now is safe (not inside a callback...)
    _begin_fetch(manifest), _stop_fetch()  # start / stop asking for chunks of the current offer

and calls `on_offer(buf, n)`, `withdrawn()`, `_chunk(offset, mv)`, `_miss()`, `_give_up(...)`,
`_retry_due()` from its own loop. Events queue while nothing can be sent; `agent.reporter =
link.report` connects the agent.
"""

import json

from .. import errors
from ..agent import DOWNLOADED, DOWNLOADING
from ..backoff import Backoff
from ..compat import const, ticks_add, ticks_diff, ticks_ms
from ..errors import OtaError
from .wire import OFFER_HEAD, parse_command, parse_offer

_MAX_EVENTS = const(16)  # events kept while offline (oldest dropped)
_MAX_RESTARTS = const(3)  # source changes tolerated per offer before the attempt is failed
_DEADLINE_MS = const(1800000)  # an attempt's overall deadline (threats table: slow retrieval): 30 min
_POWER_RETRY_MS = const(60000)  # an install the power check put off is tried again this often
_OUTCOMES = ("committed", "rolled_back")  # events that end an offer after the reboot


class Link:
    def __init__(self, agent, device_id, *, max_misses, chunk=None, retry_base_ms=2000, retry_cap_ms=300000,
                 deadline_ms=_DEADLINE_MS):
        self.agent = agent
        self.chunk = chunk  # the agent's chunk size, or None: the one each offer names
        self.device_id = device_id
        self.signer = None  # a link.auth.Signer: every report carries the device's MAC (docs/SECURITY.md)
        self.connected = False
        self.offer_id = None
        self.max_misses = max_misses  # misses in a row that end an attempt
        self._offer_blob = None
        self._chunk_size = 4096
        self._events = []
        self._state_due = True
        self._flushing = False
        self._complete = False
        self._took = False  # the last chunk was taken by the agent (_chunk)
        self._misses = 0
        self._last_data = 0
        self._restarts = 0
        self._restart_offer = None
        self._retry_at = None  # ticks when the next attempt may start (after a give-up)
        self._resume = False  # that attempt takes up an interrupted download
        self._retry = Backoff(retry_base_ms, retry_cap_ms)
        self._sink = self._chunk  # bound once: handed to transports that push chunks
        self.deadline_ms = deadline_ms  # an attempt's whole time (slow retrieval ends with DEADLINE); 0: none
        self._attempt_at = 0
        self._install_at = 0  # ticks of the last try of an install the power check put off

    # -- transport hooks ------------------------------------------------------
    def _send_event(self, text):
        raise NotImplementedError

    def _send_state(self, text):
        raise NotImplementedError

    def _may_send(self):
        return self.connected

    def _begin_fetch(self, m):
        pass

    def inflight(self) -> int:
        """Chunks asked for and not yet received (a duty cycle waits for them before it sleeps)."""
        return 0

    def _stop_fetch(self):
        pass

    # -- reporting -------------------------------------------------------------
    # The agent's reporter: events queue (bounded) and go out when the link can send.
    def report(self, event, info):
        info["event"] = event
        if "tag" in info:
            info["offer"] = info.pop("tag")
            if event in _OUTCOMES:
                self.agent.mark_done(info["offer"])
        self._events.append(info)
        while len(self._events) > _MAX_EVENTS:
            self._events.pop(0)
        if self.connected and not self._flushing and self._may_send():
            try:
                self._flush()
            except OSError as e:
                self._send_failed(e)  # still queued: the link's loop sends it later

    def _send_failed(self, e):
        self._misses += 1

    # Queued events, oldest first, then the state document when it changed (or was asked for).
    def _flush(self):
        self._flushing = True
        try:
            while self._events:
                self._send_event(self._report(self._events[0]))
                self._events.pop(0)
                self._state_due = True
            if self._state_due:
                self._send_state(self._report(None))
                self._state_due = False
        finally:
            self._flushing = False

    # A report's text: the event `ev`, or the state document when None; sealed (below).
    def _report(self, ev):
        if ev is None:
            return self._sealed("state", self.agent.state_json(self.device_id, self.offer_id))
        return self._sealed("events", json.dumps(ev))

    # A report as it goes on the wire: with the device's MAC and counter when it has a key.
    def _sealed(self, kind, text):
        return self.signer.seal(kind, text) if self.signer is not None else text

    def _flush_due(self):
        return self._events or self._state_due

    # -- offers ------------------------------------------------------------------
    def on_offer(self, buf, n):
        """An offer as received (`n` bytes of `buf`); an offer seen or done before is ignored."""
        offer = parse_offer(buf, n)
        if offer is None:
            return
        offer_id, chunk, policy = offer
        if offer_id == self.offer_id or self.agent.is_done(offer_id):
            return
        if self.agent.state == DOWNLOADING and self.agent.tag != offer_id:
            self.agent.cancel()  # the server replaced the offer being downloaded: that one is abandoned
        self.offer_id = offer_id
        self._offer_blob = bytes(buf[OFFER_HEAD:n])
        self._chunk_size = self.chunk or chunk
        if offer_id != self._restart_offer:
            self._restarts, self._restart_offer = 0, offer_id
        self.agent.policy = policy
        self._start_attempt()

    def withdrawn(self):
        """The server took the offer back: abandon its download."""
        if self.offer_id is not None and self.agent.state == DOWNLOADING:
            self.agent.cancel()
        self.offer_id = None

    def on_command(self, text):
        """A command for this device (JSON): approve or cancel the current offer."""
        cmd = parse_command(text)
        if cmd is None or cmd[1] not in (None, self.offer_id):
            return
        if cmd[0] == "approve":
            self.agent.approve()
        elif cmd[0] == "cancel":
            self.agent.cancel()
            self._done(errors.CANCELLED)

    # -- attempts ------------------------------------------------------------------
    def _start_attempt(self):
        self._retry_at = None
        self._resume = False
        self._misses = 0
        self._stop_fetch()
        try:
            m = self.agent.offer(self._offer_blob, self._chunk_size, tag=self.offer_id)
        except OtaError as e:
            if e.code in (errors.BUSY, errors.POWER):  # an install under way, or too little power to start: not an
                self._resume = True                     # outcome; the offer is tried again later
                self._retry_at = ticks_add(ticks_ms(), self._retry.next_ms())
                self._state_due = True
                return
            self._done(e.code)
            return
        self._attempt_at = ticks_ms()
        if self.agent.complete():  # verified in flash before a reset or a deep sleep: verify and install now
            self._complete = True
            return
        self._begin_fetch(m)

    # The offer has an outcome: it is never tried again, even if the server still offers it.
    def _done(self, code):
        self._stop_fetch()
        self.agent.mark_done(self.offer_id)
        self._state_due = True

    # A chunk from the transport; False when the attempt ended on it (reported by the agent).
    def _chunk(self, offset, mv):
        try:
            new = self.agent.on_chunk(offset, mv)
        except OtaError as e:
            self._done(e.code)
            return False
        self._took = new  # whether the agent took it (a transport asks for more only then)
        if new:
            self._heard()  # progress is a chunk not seen before: a replayed one keeps no attempt alive
        if self.agent.complete():
            self._complete = True  # verify and install in the link's loop, not in a callback
        return True

    def _finish(self):
        self._complete = False
        self._stop_fetch()
        try:
            self.agent.finish()  # resets into the new image when the policy says so
        except OtaError as e:
            self._done(e.code)
            return
        self._install_at = ticks_ms()
        self._state_due = True

    def _heard(self):
        self._misses = 0
        self._last_data = ticks_ms()

    def _asked(self):
        self._last_data = ticks_ms()

    # The attempt ran past its deadline (however steadily chunks trickle in).
    def _past_deadline(self):
        return (self.deadline_ms > 0 and self.agent.state == DOWNLOADING
                and ticks_diff(ticks_ms(), self._attempt_at) >= self.deadline_ms)

    def _silent_for(self, ms):
        return ticks_diff(ticks_ms(), self._last_data) >= ms

    # One more miss (timeout, failed exchange); True when that ends the attempt.
    def _miss(self):
        self._misses += 1
        if self._misses < self.max_misses:
            return False
        self._misses = 0
        return True

    # End the attempt (chunks stay in flash) and try again after the back-off.
    def _give_up(self, code, detail):
        self._stop_fetch()
        if self.agent.state == DOWNLOADING:
            self.agent.cancel_with(code, detail)
            self._resume = True
        self._retry_at = ticks_add(ticks_ms(), self._retry.next_ms())

    # ms until the back-off is over (0: it is, or there is none).
    def _retry_left(self):
        if self._retry_at is None:
            return 0
        left = ticks_diff(self._retry_at, ticks_ms())
        return left if left > 0 else 0

    # The back-off is over: take an interrupted download up again where it stopped.
    def _retry_due(self):
        self._retry_at = None
        if self._resume and self.offer_id is not None:
            self._start_attempt()
        self._resume = False

    def busy(self):
        """Work in hand: a download (not suspended), a verify, reports not yet sent. A duty cycle sleeps without."""
        agent = self.agent
        return bool(self._complete or self._flush_due() or (agent.state == DOWNLOADING and not agent.suspended))

    # An install the power check put off: tried again every _POWER_RETRY_MS (deep-sleeping boards try at each wake).
    def _install_due(self):
        agent = self.agent
        if agent.state != DOWNLOADED or agent.deferred is None or ticks_diff(ticks_ms(), self._install_at) < _POWER_RETRY_MS:
            return
        self._install_at = ticks_ms()
        self._state_due = True
        try:
            agent.install()  # resets into the new image when the power check passes
        except OtaError as e:
            self._done(e.code)

    # The source changed under the offer (a new ETag): what is in flash may be of the old one.
    def _source_changed(self):
        self._stop_fetch()
        self._restarts += 1
        if self._restarts > _MAX_RESTARTS:
            self.agent.cancel_with(errors.CANCELLED, "ETag keeps changing")
            self._done(errors.CANCELLED)
            return
        self.agent.restart("ETag changed: download restarts")
        self.offer_id = None  # take the offer again: it may have changed too
