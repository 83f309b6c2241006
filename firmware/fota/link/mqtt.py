"""The update link over MQTT (docs/PROTOCOL.md): topics and the chunk window; the rest is core.Link.

    link = MqttLink(agent, client, device_id)
    agent.reporter = link.report          # agent events go out as MQTT events
    link.run()                             # forever: connect, serve offers, publish state

Topics fota/<device>/{offer, cmd, data} in, {get, events, state} out; the application's own messages go
out on fota/<device>/app/<name> over the same connection (`publish_app`). A window of chunks is
asked for with `get` and asked again when half of it came; a chunk_timeout_ms without data
is a miss, and after `max_timeouts` of them the attempt ends (CONNECTION_LOST).
"""

import gc

from .. import errors
from ..agent import DOWNLOADING
from ..backoff import Backoff
from ..compat import const, sleep_ms, ticks_diff, ticks_ms
from ..errors import OtaError
from .core import Link
from .wire import DATA_HEAD, GET_HEAD, GET_MAX, pack_get, parse_data

# Chunks asked for and not yet received (config.json "window"). They wait in the broker and the TCP receive
# window, not in the heap: one chunk at a time is read into the client's buffer. bench/mqtt.py measures it.
WINDOW = const(8)


class MqttLink(Link):
    def __init__(self, agent, client, device_id, *, prefix="fota", window=WINDOW, chunk_timeout_ms=3000,
                 max_timeouts=8, retry_base_ms=2000, retry_cap_ms=300000, deadline_ms=1800000):
        super().__init__(agent, device_id, max_misses=max_timeouts + 1, retry_base_ms=retry_base_ms,
                         retry_cap_ms=retry_cap_ms, deadline_ms=deadline_ms)
        self.client = client
        base = prefix + "/" + device_id + "/"
        self._base = base.encode()
        self.t_state, self.t_offer, self.t_get = base + "state", base + "offer", base + "get"
        self.t_data, self.t_events, self.t_cmd = base + "data", base + "events", base + "cmd"
        self.t_app = base + "app/"  # the application's telemetry: P/D/app/<name> (docs/PROTOCOL.md)
        self.t_keys = base + "keys"  # a root-signed key list on its own, retained (docs/PROTOCOL.md "Key lists")
        self._suffix = {b"offer": self._on_offer, b"data": self._on_data, b"cmd": self._on_cmd, b"keys": self._on_keys}
        self._key_list = None  # a key list received, taken in the next step (callbacks only enqueue)
        self._topic = self._handler = None  # the last topic and its handler (None: not this device's)
        self.window = window
        self.chunk_timeout_ms = chunk_timeout_ms
        self.max_timeouts = max_timeouts
        self._in_callback = False
        self._inflight = []
        self._reasked = -1  # the chunk _lost_before asked for again (once)
        self._reconnect = Backoff(500, 30000)
        self._req = bytearray(GET_HEAD + 4 * GET_MAX)
        client.set_callback(self._on_message)

    # -- core.Link hooks: where events, state and requests go ---------------------------
    # QoS 1. While a download streams the PUBACK is not waited for: chunks asked for arrive before it, and
    # each is flash work (~0.1 s at ESP32 speed), so waiting made one report a turn of ~0.5 s that the
    # application waited for. Such a report (progress, the state) is then sent at most once on this
    # connection: a new connection sends the state again. Outside a download (rebooting, committed,
    # failed) the PUBACK is waited for: the device may reset right after.
    def _send_event(self, text):
        self.client.publish(self.t_events, text, qos=1, wait=self.agent.state != DOWNLOADING)

    def _send_state(self, text):
        self.client.publish(self.t_state, text, retain=True, qos=1, wait=self.agent.state != DOWNLOADING)

    def _may_send(self):
        return not self._in_callback  # callbacks only enqueue: the buffer is the client's

    def _send_failed(self, e):
        self._drop(e)

    def _begin_fetch(self, m):
        self._inflight = []
        self._reasked = -1
        self._request()

    def _stop_fetch(self):
        self._inflight = []

    def inflight(self):
        return len(self._inflight)

    # -- connection --------------------------------------------------------------------
    def connect(self):
        """Connect (once), subscribe, send what queued up while offline."""
        self.client.connect(clean_session=True)
        # data first: the retained offer comes the moment its subscription is made and starts the attempt, whose
        # chunk requests are answered at once; chunks published before the data subscription exists are lost
        self.client.subscribe(self.t_data, 0)
        self.client.subscribe(self.t_keys, 1)
        self.client.subscribe(self.t_cmd, 1)
        self.client.subscribe(self.t_offer, 1)
        self.connected = True
        self._reconnect.reset()
        self._state_due = True
        self._flush()
        if self.agent.state == DOWNLOADING and self.offer_id is not None:
            self._request()  # resume an interrupted download where it stopped

    def run(self, until=None):
        """Serve forever (or until `until()` is true): reconnects with back-off."""
        while until is None or not until():
            wait = self.serve_once()
            if wait:
                sleep_ms(wait)

    def serve_once(self, timeout_ms=100, limit=0):
        """One turn: connect if needed (returns the ms to back off when that failed), else one step (0)."""
        if not self.connected:
            try:
                self.connect()
            except Exception as e:  # noqa: BLE001 - any failure to connect (OSError, MQTTError): back off
                print("fota: MQTT connect failed:", repr(e))
                self._drop(e)
                return self._reconnect.next_ms()
        self.step(timeout_ms, limit)
        return 0

    def fault(self, e):
        """Something escaped a step (the service loop caught it): end the attempt, reconnect after the back-off."""
        if self.agent.state == DOWNLOADING:
            self._give_up(errors.FAULT, repr(e)[:60])
        self._state_due = True  # the error log changed
        self._drop(e)

    # Packets for up to timeout_ms (at most `limit` of them when > 0), then the link's own work.
    def step(self, timeout_ms=100, limit=0):
        try:
            self.client.poll(timeout_ms, limit)
            if self._flush_due():
                self._flush()
            if self._complete:
                self._finish()
            if self._key_list is not None:
                raw, self._key_list = self._key_list, None
                self.agent.take_key_list(raw)  # OtaError when refused: reported by the agent
            self._tick()
        except OSError as e:
            self._drop(e)
        except OtaError:
            pass  # already reported by the agent (approve() whose install failed)
        except MemoryError as e:  # a fragmented heap: end the attempt (reported), reconnect, take it up later
            gc.collect()
            if self.agent.state == DOWNLOADING:
                self._give_up(errors.OUT_OF_MEMORY, "MQTT link")
            self._drop(e)

    def idle_ms(self, cap):
        """The ms (at most `cap`) this link may wait for packets before it has work of its own (0: now)."""
        if not self.connected or self._complete or self._flush_due() or self._key_list is not None:
            return 0
        if self._retry_at is not None:
            left = self._retry_left()
        elif self.agent.state == DOWNLOADING and self.offer_id is not None:
            left = self.chunk_timeout_ms - ticks_diff(ticks_ms(), self._last_data)
        else:
            return cap
        return 0 if left < 0 else left if left < cap else cap

    def publish_app(self, name, payload, qos=0):
        """The application's message on P/D/app/<name>, over this connection; False when it could not go out
        (not connected, or the connection failed: the link reconnects)."""
        if not self.connected or self._in_callback:
            return False
        try:
            self.client.publish(self.t_app + name, payload, qos=qos)
        except OSError as e:  # MQTTError included
            self._drop(e)
            return False
        return True

    def _drop(self, e):
        self.connected = False
        try:
            self.client.close()
        except OSError:
            pass

    # -- messages ----------------------------------------------------------------------
    # The client hands an unchanged topic over as the same object: a run of chunks is dispatched without allocating.
    def _on_message(self, topic, payload, retained):
        if topic is not self._topic:
            cut = topic.rfind(b"/")
            # not this device's topic: a broker may misroute; never act on another device's offer
            mine = bytes(topic[: cut + 1]) == self._base
            self._topic, self._handler = topic, self._suffix.get(bytes(topic[cut + 1 :])) if mine else None
        handler = self._handler
        if handler:
            self._in_callback = True
            try:
                handler(payload)
            finally:
                self._in_callback = False

    def _on_offer(self, payload):
        if len(payload) == 0:
            self.withdrawn()
        else:
            self.on_offer(payload, len(payload))

    def _on_keys(self, payload):
        if len(payload):
            self._key_list = bytes(payload)

    def _on_cmd(self, payload):
        self.on_command(bytes(payload))

    def _on_data(self, payload):
        head = parse_data(payload) if self.agent.state == DOWNLOADING else None
        if head is None or head[0] != self.offer_id:
            return
        offset = head[1]
        if offset in self._inflight:
            self._inflight.remove(offset)
        if self._chunk(offset, payload[DATA_HEAD : DATA_HEAD + head[2]]) and not self._complete:
            if self._took:
                if len(self._inflight) <= self.window // 2:
                    self._request()
            else:
                self._lost_before(offset)

    # A chunk not taken (a duplicate, or one from ahead of an in-order download's next): nothing new is asked for,
    # so the silence timer still runs. The server answers gets in order on one connection, so a wanted chunk still
    # in flight below this one was lost: the window is asked for again from the first chunk wanted, once (go-back-N:
    # the ones still on their way after it are not taken either; a second loss of it waits for the timer). Asking
    # anew on every such arrival kept the timer from firing while the chunk a zlib download waited for never came.
    def _lost_before(self, offset):
        want = self.agent.wanted(1)
        if want and want[0] < offset and want[0] in self._inflight and want[0] != self._reasked:
            self._reasked = want[0]
            self._inflight = []
            self._request()

    # -- chunk windows -------------------------------------------------------------------
    def _request(self):
        if self.offer_id is None:
            return  # the offer was withdrawn or ended meanwhile: nothing to ask for
        want = [o for o in self.agent.wanted(self.window + len(self._inflight)) if o not in self._inflight]
        want = want[: max(0, self.window - len(self._inflight))]
        if not want:
            return
        for i in range(0, len(want), GET_MAX):  # a get names at most GET_MAX offsets (docs/PROTOCOL.md)
            n = pack_get(self._req, self.offer_id, want[i : i + GET_MAX])
            self.client.publish(self.t_get, memoryview(self._req)[:n], qos=0)
        self._inflight.extend(want)
        self._asked()

    def _tick(self):
        self._install_due()
        if self._retry_at is not None:
            if not self._retry_left():
                self._retry_due()
            return
        if self._past_deadline():
            self._give_up(errors.DEADLINE, "attempt over %d s" % (self.deadline_ms // 1000))
            return
        if self.agent.state != DOWNLOADING or self.offer_id is None or not self._silent_for(self.chunk_timeout_ms):
            return
        if self._miss():
            self._give_up(errors.CONNECTION_LOST, "no data after %d requests" % self.max_timeouts)
            return
        self._inflight = []  # ask again for everything outstanding
        self._reasked = -1
        self._request()
