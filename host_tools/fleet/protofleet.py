"""Many ProtoDevices in one process: one asyncio event loop (one thread), one MQTT connection per device.

Why asyncio and our own MQTT 3.1.1 framing rather than paho clients under `select`: paho reads each
packet's fixed header one byte per `recv()` call and takes several locks per packet, and `select()`
stops at file descriptor 1024. Here the loop's epoll selector wakes only for sockets with data, one
`recv` takes whatever arrived (many packets at once), and a device costs a Protocol object and a
few hundred bytes of state. The client side needs little of MQTT: CONNECT (clean session), one
SUBSCRIBE, PUBLISH QoS 0/1 both ways, PUBACK, PINGREQ, DISCONNECT.

    fleet = ProtoFleet("mqtt://127.0.0.1:1883", [DeviceSpec(f"dev{i:04d}", keys=(pub,)) for i in range(1000)],
                       connect_rate=300)
    fleet.start()
    fleet.wait_connected(30)            # every device subscribed (or False after 30 s)
    fleet.device("dev0007").status()    # its state JSON; .version, .seq, .gets, .chunks ...
    fleet.stats()                       # FleetStats: connections, bytes, chunks, events, loop CPU
    fleet.stop()

Connections open at `connect_rate` per second at most (reconnects too) so a broker is not flooded,
and at most `max_connecting` are between TCP connect and SUBACK at any time. The default of 1 is
for amqtt 0.12 (the embedded broker of `fota serve`): its connect handler walks the broker's
subscription table across `await`s, so another client subscribing meanwhile kills the new session
after its CONNACK ("dictionary changed size during iteration"). mosquitto takes more at once.
A device that loses its broker comes back after a capped, fully jittered back-off (0.5 s .. 30 s).
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import ssl
import struct
import threading
import time
from dataclasses import dataclass

from host_tools.fleet.protodevice import DeviceSpec, ProtoDevice
from host_tools.server.mqtt_client import parse_broker_url

_CONNACK, _PUBLISH, _PUBACK, _SUBACK, _PINGRESP = 0x20, 0x30, 0x40, 0x90, 0xD0  # MQTT 3.1.1 section 2.2.1
PINGREQ, DISCONNECT = b"\xc0\x00", b"\xe0\x00"
RECONNECT_BASE, RECONNECT_CAP = 0.5, 30.0  # the firmware's Backoff(500, 30000)
HANDSHAKE_TIMEOUT = 10.0  # TCP connect to SUBACK


def _length(n: int) -> bytes:
    # Remaining length, section 2.2.3.
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def connect_packet(client_id: str, keepalive: int, password: str = "") -> bytes:
    """MQTT 3.1.1 CONNECT, clean session; with a password the username is the client id (docs/SECURITY.md)."""
    flags = 0x02 | (0xC0 if password else 0)  # section 3.1.2.8/3.1.2.9: user name and password flags
    body = _string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _string(client_id.encode())
    if password:
        body += _string(client_id.encode()) + _string(password.encode())
    return b"\x10" + _length(len(body)) + body


def subscribe_packet(pid: int, topics: list[tuple[bytes, int]]) -> bytes:
    body = struct.pack("!H", pid) + b"".join(_string(t) + bytes([q]) for t, q in topics)
    return b"\x82" + _length(len(body)) + body


class Connection(asyncio.Protocol):
    """One device's MQTT connection; the device sees it as `device.link`."""

    def __init__(self, fleet: ProtoFleet, device: ProtoDevice, release=None) -> None:
        self.fleet = fleet
        self.device = device
        self._release = release  # the connector's handshake slot, given back at SUBACK or at the end
        self.transport: asyncio.Transport | None = None
        self.ready = False  # CONNACK accepted
        self.closing = False  # we end it (reboot, crash, stop): no reconnect from connection_lost
        self.last_sent = self.last_recv = time.monotonic()
        self.unacked: dict[int, tuple[bytes, bytes]] = {}  # QoS 1 publishes waiting for PUBACK
        self._pid = 1
        self._buf = bytearray()
        self._close_when_acked = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._write(connect_packet(self.device.id, self.fleet.keepalive, self.device.spec.password))
        self.fleet.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def _handshake_timeout(self) -> None:
        if self._release is not None and self.transport is not None:
            self.transport.abort()  # no CONNACK + SUBACK in time: connection_lost retries later

    def _write(self, data: bytes) -> None:
        self.transport.write(data)
        self.last_sent = time.monotonic()
        self.fleet.bytes_out += len(data)

    def release(self) -> None:
        if self._release is not None:
            self._release, release = None, self._release
            release()

    def _next_pid(self) -> int:
        self._pid = self._pid % 0xFFFF + 1
        return self._pid

    def publish(self, topic: bytes, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = bytes([_PUBLISH | qos << 1 | int(retain)])
        var = _string(topic)
        if qos:
            pid = self._next_pid()
            var += struct.pack("!H", pid)
            self.unacked[pid] = (topic, payload)
        self._write(head + _length(len(var) + len(payload)) + var + payload)
        self.fleet.messages_out += 1

    def close_when_acked(self, timeout: float = 5.0) -> None:
        """End the connection once the broker acknowledged every QoS 1 publish (what a reset after a
        blocking QoS 1 publish looks like on the wire: no DISCONNECT)."""
        self.closing = True
        if not self.unacked:
            self.transport.close()
            return
        self._close_when_acked = True
        self.fleet.loop.call_later(timeout, self.transport.close)

    def data_received(self, data: bytes) -> None:
        self.last_recv = time.monotonic()
        self.fleet.bytes_in += len(data)
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            i, length, shift = pos + 1, 0, 0
            while True:  # remaining length, up to four bytes
                if i >= end:
                    break
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                i += 1
                shift += 7
                if byte < 0x80:
                    break
            if byte >= 0x80 or i + length > end:
                break  # the rest of this packet has not arrived yet
            self._packet(buf[pos], bytes(buf[i : i + length]))
            pos = i + length
            if self.transport is None or self.transport.is_closing():
                break
        del buf[:pos]

    def _packet(self, head: int, body: bytes) -> None:
        kind = head & 0xF0
        if kind == _PUBLISH:
            n = body[0] << 8 | body[1]
            topic, pos = body[2 : 2 + n], 2 + n
            if head & 0x06:  # QoS 1 (we subscribe at 1 at most)
                self._write(b"\x40\x02" + body[pos : pos + 2])
                pos += 2
            self.fleet.messages_in += 1
            self.device.on_message(topic, body[pos:])
        elif kind == _PUBACK:
            self.unacked.pop(body[0] << 8 | body[1], None)
            if self._close_when_acked and not self.unacked:
                self.transport.close()
        elif kind == _CONNACK:
            if len(body) < 2 or body[1] != 0:
                self.transport.close()  # refused: connection_lost schedules a retry
                return
            self.ready = True
            d = self.device
            self._write(subscribe_packet(self._next_pid(), [(d.t_offer, 1), (d.t_cmd, 1), (d.t_data, 0)]))
            self.fleet._connected(self)
        elif kind == _SUBACK:
            self.release()
            if b"\x80" in body[2:]:
                self.fleet.sub_failures += 1

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.release()
        self.fleet._lost(self)


@dataclass
class FleetStats:
    devices: int
    connected: int
    connects: int  # CONNACKs, reconnects included
    connect_failures: int
    bytes_in: int  # all MQTT bytes, both ways
    bytes_out: int
    messages_in: int
    messages_out: int
    chunk_bytes: int  # payload bytes in accepted chunk messages
    chunks: int
    gets: int  # chunk request messages
    rerequests: int  # chunk timeouts that asked again
    events_sent: int
    cpu_s: float  # CPU time of the fleet's thread


class ProtoFleet:
    """Devices on one event loop in one thread; `start()` returns once the loop runs."""

    def __init__(self, broker_url: str, devices: list[DeviceSpec], *, prefix: str = "fota", connect_rate: float = 200.0,
                 max_connecting: int = 1, keepalive: int = 60, ca_file: str | None = None, tick: float = 0.2) -> None:
        self.host, self.port, tls = parse_broker_url(broker_url)
        self.ssl = ssl.create_default_context(cafile=ca_file) if tls else None
        self.prefix = prefix
        self.connect_rate = connect_rate
        self.max_connecting = max_connecting
        self.keepalive = keepalive
        self.tick_s = min([tick] + [s.chunk_timeout / 4 for s in devices])
        self.devices: dict[str, ProtoDevice] = {}
        for spec in devices:
            if spec.id in self.devices:
                raise ValueError(f"device id {spec.id} appears twice")
            dev = self.devices[spec.id] = ProtoDevice(spec, prefix)
            dev.host = self
        self.loop: asyncio.AbstractEventLoop | None = None
        self.conns: dict[str, Connection] = {}  # device id -> live connection (CONNACK received)
        self.connects = self.connect_failures = self.sub_failures = 0
        self.bytes_in = self.bytes_out = self.messages_in = self.messages_out = 0
        self._cpu = 0.0
        self._failures: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._queue: asyncio.Queue | None = None
        self._tasks: set[asyncio.Task] = set()
        self._open: set[Connection] = set()
        self._stopping = False
        self._rng = random.Random()

    def __enter__(self) -> ProtoFleet:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- from the caller's thread ------------------------------------------------
    def start(self) -> None:
        _raise_fd_limit(len(self.devices) + 256)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="proto-fleet", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self, timeout: float = 10) -> None:
        if self.loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        self.loop.close()
        self.loop = None

    def wait_connected(self, timeout: float = 60, count: int | None = None) -> bool:
        """True once `count` devices (default all) are connected and subscribed."""
        want = len(self.devices) if count is None else count
        deadline = time.monotonic() + timeout
        while len(self.conns) < want:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def device(self, device_id: str) -> ProtoDevice:
        return self.devices[device_id]

    def stats(self) -> FleetStats:
        devs = list(self.devices.values())
        return FleetStats(len(devs), len(self.conns), self.connects, self.connect_failures, self.bytes_in, self.bytes_out,
                          self.messages_in, self.messages_out, sum(d.bytes_in for d in devs), sum(d.chunks for d in devs),
                          sum(d.gets for d in devs), sum(d.rerequests for d in devs), sum(d.events_sent for d in devs),
                          self._cpu)

    # -- on the loop ---------------------------------------------------------------
    def _run(self, ready: threading.Event) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._queue = asyncio.Queue()
        for dev in self.devices.values():
            self._queue.put_nowait(dev)
        self._spawn(self._connector())
        self.loop.call_soon(self._tick)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connector(self) -> None:
        # Opens connections in queue order, at connect_rate per second, max_connecting handshakes at a time.
        interval = 1.0 / self.connect_rate
        slots = asyncio.Semaphore(self.max_connecting)
        next_at = self.loop.time()
        while True:
            dev = await self._queue.get()
            await slots.acquire()
            wait = next_at - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            next_at = max(next_at, self.loop.time() - 1.0) + interval  # a burst of one second at most after a lull
            self._spawn(self._open_one(dev, slots))

    async def _open_one(self, dev: ProtoDevice, slots: asyncio.Semaphore) -> None:
        # The slot is the connection's until SUBACK (or its end): see max_connecting.
        conn = Connection(self, dev, slots.release)
        if self._stopping:
            return conn.release()
        try:
            await asyncio.wait_for(self.loop.create_connection(lambda: conn, self.host, self.port, ssl=self.ssl), 10)
        except (TimeoutError, OSError):
            self.connect_failures += 1
            conn.release()
            self._retry(dev)
            return
        self._open.add(conn)

    def _retry(self, dev: ProtoDevice) -> None:
        n = self._failures.get(dev.id, 0)
        self._failures[dev.id] = n + 1
        self._later(self._rng.uniform(0, min(RECONNECT_CAP, RECONNECT_BASE * 2**n)), dev)

    def _later(self, delay: float, dev: ProtoDevice, boot: bool = False) -> None:
        def due() -> None:
            if self._stopping:
                return
            if boot:
                dev.power_on()
            self._queue.put_nowait(dev)

        self.loop.call_later(delay, due)

    def _connected(self, conn: Connection) -> None:
        self.connects += 1
        self._failures.pop(conn.device.id, None)
        self.conns[conn.device.id] = conn
        conn.device.link = conn
        conn.device.on_connect()

    def _lost(self, conn: Connection) -> None:
        self._open.discard(conn)
        dev = conn.device
        if self.conns.get(dev.id) is conn:
            del self.conns[dev.id]
        if dev.link is conn:
            dev.on_disconnect()
        # QoS 1 events the broker never acknowledged go out again after the reconnect, first.
        lost = [payload for topic, payload in conn.unacked.values() if topic == dev.t_events]
        if lost:
            dev.queue[:0] = [json.loads(p) for p in lost]
        if not conn.closing and not self._stopping:
            self.connect_failures += 0 if conn.ready else 1
            self._retry(dev)

    def drop(self, dev: ProtoDevice, delay: float, graceful: bool) -> None:
        """A reset (graceful: after the broker acknowledged what was published) or a crash; back after `delay`."""
        conn = dev.link
        dev.on_disconnect()
        if conn is not None:
            if self.conns.get(dev.id) is conn:
                del self.conns[dev.id]
            if graceful:
                conn.close_when_acked()
            else:
                conn.closing = True
                conn.transport.abort()
        self._later(delay, dev, boot=graceful)

    def _tick(self) -> None:
        if self._stopping:
            return
        now = time.monotonic()
        for dev in self.devices.values():
            if dev.busy:
                dev.tick(now)
        half = self.keepalive / 2
        for conn in list(self.conns.values()):
            if now - conn.last_sent >= half:
                conn._write(PINGREQ)
            elif now - conn.last_recv > self.keepalive * 1.5 + 5:
                conn.transport.abort()  # a dead broker: connection_lost reconnects
        self._cpu = time.thread_time()
        self.loop.call_later(self.tick_s, self._tick)

    async def _shutdown(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._open):
            conn.closing = True
            if conn.transport is not None and not conn.transport.is_closing():
                if conn.ready:
                    conn.transport.write(DISCONNECT)
                conn.transport.close()
        await asyncio.sleep(0.05)
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
        self._cpu = time.thread_time()


def _raise_fd_limit(need: int) -> None:
    # One socket per device: lift the soft file limit towards the hard one if it is too low.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard == resource.RLIM_INFINITY else min(hard, max(need, soft)), hard))
