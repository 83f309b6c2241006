"""The device side of docs/PROTOCOL.md: offers, chunk windows, state and events over MQTT.

One object owns the MQTT client and feeds the agent. It reconnects with capped,
jittered back-off; it asks for a window of chunks and asks again for what did
not come; after `max_timeouts` silent intervals it ends the attempt
(CONNECTION_LOST) and tries again later, keeping what is already in flash.

    link = MqttLink(agent, client, device_id, identity)
    agent.reporter = link.report          # agent events go out as MQTT events
    link.run()                             # forever: connect, serve offers, publish state
"""

import json
import struct
import time

from mqtt.backoff import Backoff

from . import errors
from .errors import OtaError

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_OFFER_HEAD = const(12)  # b"OFR1", u32 offer id, u16 chunk, u8 policy, u8 reserved
_DATA_HEAD = const(10)  # u32 offer id, u32 offset, u16 length
_MAX_EVENTS = const(16)
_POLICIES = ("auto", "consent", "download-only")


class MqttLink:
    def __init__(self, agent, client, device_id, *, prefix="fota", window=8, chunk_timeout_ms=3000,
                 max_timeouts=8, retry_base_ms=2000, retry_cap_ms=300000):
        self.agent = agent
        self.client = client
        self.device_id = device_id
        base = prefix + "/" + device_id + "/"
        self._base = base.encode()
        self.t_state = base + "state"
        self.t_offer = base + "offer"
        self.t_get = base + "get"
        self.t_data = base + "data"
        self.t_events = base + "events"
        self.t_cmd = base + "cmd"
        self._suffix = {b"offer": self._on_offer, b"data": self._on_data, b"cmd": self._on_cmd}
        self.window = window
        self.chunk_timeout_ms = chunk_timeout_ms
        self.max_timeouts = max_timeouts
        self.connected = False
        self._in_callback = False
        self._complete = False
        self.offer_id = None
        self._offer_blob = None
        self._events = []
        self._inflight = []
        self._last_data = 0
        self._timeouts = 0
        self._retry_at = None
        self._retry = Backoff(retry_base_ms, retry_cap_ms)
        self._reconnect = Backoff(500, 30000)
        self._req = bytearray(6 + 4 * 16)
        client.set_callback(self._on_message)

    # -- reporting -----------------------------------------------------------
    # The agent's reporter: events queue (bounded) until the link is up.
    def report(self, event, info):
        info["event"] = event
        if "tag" in info:
            info["offer"] = info.pop("tag")
            if event in ("committed", "rolled_back"):
                self._mark_done(info["offer"])
        self._events.append(info)
        while len(self._events) > _MAX_EVENTS:
            self._events.pop(0)
        if self.connected and not self._in_callback:  # callbacks only enqueue: the buffer is the client's
            self._flush()

    def _flush(self):
        while self._events:
            self.client.publish(self.t_events, json.dumps(self._events[0]), qos=1)
            self._events.pop(0)
        self.publish_state()

    def publish_state(self):
        self.client.publish(self.t_state, self.agent.state_json(self.device_id, self.offer_id), retain=True, qos=1)

    # -- connection ------------------------------------------------------------
    def connect(self):
        """Connect (once), subscribe, send what queued up while offline."""
        self.client.connect(clean_session=True)
        self.client.subscribe(self.t_offer, 1)
        self.client.subscribe(self.t_cmd, 1)
        self.client.subscribe(self.t_data, 0)
        self.connected = True
        self._reconnect.reset()
        self._flush()
        if self.agent.state == 1 and self.offer_id is not None:
            self._request()  # resume an interrupted download where it stopped

    def run(self, until=None):
        """Serve forever (or until `until()` is true): reconnects with back-off."""
        while until is None or not until():
            if not self.connected:
                try:
                    self.connect()
                except Exception as e:  # noqa: BLE001 - any failure to connect (OSError, MQTTError): back off
                    print("fota: MQTT connect failed:", repr(e))
                    self._drop(e)
                    time.sleep_ms(self._reconnect.next_ms())
                    continue
            self.step(100)

    def step(self, timeout_ms=100):
        try:
            self.client.poll(timeout_ms)
            if self._events:
                self._flush()
            if self._complete:
                self._complete = False
                self._finish()
            self._tick()
        except OSError as e:
            self._drop(e)
        except OtaError:
            pass  # already reported by the agent

    def _drop(self, e):
        self.connected = False
        try:
            self.client.close()
        except OSError:
            pass

    # -- messages --------------------------------------------------------------
    def _on_message(self, topic, payload, retained):
        cut = topic.rfind(b"/")
        if bytes(topic[: cut + 1]) != self._base:
            return  # not this device's topic (a broker may misroute; never act on another device's offer)
        handler = self._suffix.get(bytes(topic[cut + 1 :]))
        if handler:
            self._in_callback = True
            try:
                handler(payload)
            finally:
                self._in_callback = False

    def _on_offer(self, payload):
        if len(payload) == 0:  # withdrawn
            if self.offer_id is not None:
                self.agent.cancel()
                self.offer_id = None
            return
        if len(payload) < _OFFER_HEAD or bytes(payload[:4]) != b"OFR1":
            return
        offer_id, chunk, policy = struct.unpack_from("<IHB", payload, 4)
        if offer_id == self.offer_id or offer_id in self.agent.store.data.get("offers_done", ()):
            return
        self.offer_id = offer_id
        self._offer_blob = bytes(payload[_OFFER_HEAD:])
        self._chunk = chunk
        self.agent.policy = _POLICIES[policy] if policy < len(_POLICIES) else "auto"
        self._start_attempt()

    def _start_attempt(self):
        self._retry_at = None
        self._timeouts = 0
        try:
            self.agent.offer(self._offer_blob, self._chunk, tag=self.offer_id)
        except OtaError as e:
            self._done(e.code)
            return
        self._inflight = []
        self._request()

    # An offer with an outcome is never tried again, even if it stays retained.
    def _mark_done(self, offer_id):
        done = self.agent.store.data.setdefault("offers_done", [])
        if offer_id not in done:
            done.append(offer_id)
            del done[:-8]
            self.agent.store.save()

    def _done(self, code):
        self._mark_done(self.offer_id)
        if self.connected and not self._in_callback:
            self.publish_state()

    def _on_data(self, payload):
        if len(payload) < _DATA_HEAD or self.agent.state != 1:
            return
        offer_id, offset, length = struct.unpack_from("<IIH", payload, 0)
        if offer_id != self.offer_id or _DATA_HEAD + length > len(payload):
            return
        self._last_data = time.ticks_ms()
        self._timeouts = 0
        if offset in self._inflight:
            self._inflight.remove(offset)
        try:
            self.agent.on_chunk(offset, payload[_DATA_HEAD : _DATA_HEAD + length])
        except OtaError as e:
            self._done(e.code)
            return
        if self.agent.complete():
            self._complete = True  # verify and install outside the callback, in step()
        elif len(self._inflight) <= self.window // 2:
            self._request()

    def _finish(self):
        try:
            self.agent.finish()  # resets into the new image when the policy says so
        except OtaError as e:
            self._done(e.code)
            return
        self.publish_state()

    def _on_cmd(self, payload):
        try:
            cmd = json.loads(bytes(payload))
        except ValueError:
            return
        if cmd.get("offer") not in (None, self.offer_id):
            return
        if cmd.get("cmd") == "approve":
            self.agent.approve()
        elif cmd.get("cmd") == "cancel":
            self.agent.cancel()
            self._done(errors.CANCELLED)

    # -- chunk windows ---------------------------------------------------------
    def _request(self):
        want = [o for o in self.agent.wanted(self.window + len(self._inflight)) if o not in self._inflight]
        want = want[: max(0, self.window - len(self._inflight))]
        if not want:
            return
        struct.pack_into("<IH", self._req, 0, self.offer_id, len(want))
        for i, offset in enumerate(want):
            struct.pack_into("<I", self._req, 6 + 4 * i, offset)
        self.client.publish(self.t_get, memoryview(self._req)[: 6 + 4 * len(want)], qos=0)
        self._inflight.extend(want)
        self._last_data = time.ticks_ms()

    def _tick(self):
        now = time.ticks_ms()
        if self._retry_at is not None and time.ticks_diff(now, self._retry_at) >= 0:
            self._start_attempt()
            return
        if self.agent.state != 1 or time.ticks_diff(now, self._last_data) < self.chunk_timeout_ms:
            return
        self._timeouts += 1
        if self._timeouts > self.max_timeouts:
            self.agent.cancel_with(errors.CONNECTION_LOST, "no data after %d requests" % self.max_timeouts)
            self._retry_at = time.ticks_add(now, self._retry.next_ms())
            return
        self._inflight = []  # ask again for everything outstanding
        self._request()
