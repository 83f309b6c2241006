"""MQTT 3.1.1 client: the protocol only (reconnecting is in fota.mqtt.robust).

    c = MQTTClient("esp32-0a1b2c", "broker.example", keepalive=30, ssl=ctx)
    c.set_callback(on_msg)            # on_msg(topic: bytes, payload: memoryview, retained: bool)
    c.connect()                       # -> session_present; raises OSError (MQTTError is one)
    c.subscribe("fota/esp32-0a1b2c/+", qos=1)
    c.publish("fota/esp32-0a1b2c/state", b"idle", qos=1)
    while True:
        c.poll(1000)                  # packets handled; raises when the connection is dead

`payload` is a memoryview into the client's one receive buffer: valid only during the callback
and only until the callback calls the client again (publish with QoS 1, subscribe or poll read
into the same buffer). Copy what must outlive it; better, only enqueue work in the callback.
`topic` is bytes; an unchanged topic is handed over as the same object, not a new one.

Receive path: one bytearray(buf_size) filled by readinto; a PUBLISH larger than the buffer is
read in buffer-sized pieces, thrown away, acknowledged (QoS 1) and counted in `dropped`.
Liveness comes from packets RECEIVED: PINGREQ goes out when keepalive/2 passed since the last
packet sent (or received, without an answer pending); when nothing at all arrived for
1.5 x keepalive, poll() closes the socket and raises MQTTError(KEEPALIVE).
TLS: ssl=SSLContext (CERT_REQUIRED, cadata=CA in DER); connect() wraps with server_hostname and
does the handshake within timeout_ms; a certificate mbedtls rejects raises MQTTError(TLS_VERIFY).
"""

import select
import socket
import struct
from errno import ENOTCONN

from .errors import CONNECTION_CLOSED, KEEPALIVE, PROTOCOL_ERROR, SUBSCRIBE_REFUSED, TIMEOUT, TLS_VERIFY, MQTTError
from .packets import connect_packet, put_length, put_str, to_bytes

from ..compat import const, ticks_diff, ticks_ms

# Section 2.2.1: control packet types (high nibble of the first byte) with their fixed flags
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)  # section 3.8.1: flags 0b0010
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)
_SUB_FAILURE = const(0x80)  # section 3.9.3
_HDR_SIZE = const(96)  # outgoing fixed header + packet id + topic when the topic fits


_IPPROTO_TCP = const(6)  # RFC 793 protocol number; the same on Linux and lwIP
_TCP_NODELAY = const(1)  # TCP_NODELAY option number on Linux and lwIP


class MQTTClient:
    def __init__(self, client_id, host, port=1883, *, keepalive=30, ssl=None, user=None, password=None,
                 buf_size=4200, will=None):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive = keepalive  # seconds; 0 turns PINGREQ and the liveness check off
        self.ssl = ssl  # an ssl.SSLContext, wrapped with server_hostname
        self.server_hostname = host  # the name the certificate must carry
        self.user = user
        self.password = password
        self.will = will  # (topic, msg, retain, qos)
        self.timeout_ms = 5000  # bound on CONNACK / SUBACK / PUBACK and on the bytes of a started packet
        self.sock = None
        self.dropped = 0  # PUBLISH packets larger than the buffer, thrown away
        self._buf = bytearray(buf_size)
        self._mv = memoryview(self._buf)
        self._hdr = bytearray(_HDR_SIZE)
        self._ack = bytearray(4)
        self._cb = None
        self._subs = []  # [(topic bytes, qos)] resubscribed by reconnect()
        self._clean = True
        self._pid = 0  # last packet identifier we used
        self._rl = 0  # remaining length of the packet being read
        self._rx_pid = 0  # packet identifier of the last PUBACK / SUBACK
        self._rx_code = 0  # SUBACK return code
        self._last_rx = self._last_tx = 0
        self._ping_out = False
        self._topic = b""  # the last topic handed to the callback
        self._ipoll = None

    # cb(topic, payload, retained): see the module docstring for how long payload stays valid.
    def set_callback(self, cb):
        self._cb = cb

    # Open the connection and send CONNECT; returns session_present from CONNACK.
    def connect(self, clean_session=True):
        self.close()
        self._clean = clean_session
        ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
        raw = socket.socket(ai[0], socket.SOCK_STREAM)
        self._attach(raw)
        ok = False
        try:
            raw.settimeout(self.timeout_ms / 1000)  # the SSL socket reads and writes through it
            raw.connect(ai[-1])
            try:  # small requests go out now, not after the peer's delayed ACK (Nagle)
                raw.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
            if self.ssl is not None:
                try:
                    self._attach(self.ssl.wrap_socket(raw, server_hostname=self.server_hostname))
                except ValueError as e:  # MicroPython's mbedtls: certificate rejected (chain, name, dates)
                    raise MQTTError(TLS_VERIFY, str(e))
            self._send_connect(clean_session)
            if not self._ready(self.timeout_ms):
                raise MQTTError(TIMEOUT)
            if self._read_fixed() != _CONNACK or self._rl != 2:  # section 3.2: CONNACK comes first
                raise MQTTError(PROTOCOL_ERROR)
            self._read(2)
            if self._buf[1]:
                raise MQTTError(self._buf[1])
            self._last_rx = ticks_ms()
            self._ping_out = False
            ok = True
        finally:
            if not ok:
                self.close()
        return bool(self._buf[0] & 1)

    # connect() again with the last clean_session, then resubscribe unless the broker kept the session.
    def reconnect(self):
        present = self.connect(self._clean)
        if not present:
            for topic, qos in self._subs:
                self._subscribe(topic, qos)
        return present

    # Subscribe and wait for SUBACK; remembered for reconnect(). Returns the granted QoS.
    def subscribe(self, topic, qos=0):
        if qos != 0 and qos != 1:
            raise ValueError("qos")
        topic = to_bytes(topic)
        subs = self._subs
        for i in range(len(subs)):
            if subs[i][0] == topic:
                subs[i] = (topic, qos)
                break
        else:
            subs.append((topic, qos))
        try:
            return self._subscribe(topic, qos)
        except MQTTError as e:
            if e.code == SUBSCRIBE_REFUSED:
                subs.remove((topic, qos))
            raise

    def _subscribe(self, topic, qos):
        pid = self._next_pid()
        hdr = self._hdr
        hdr[0] = _SUBSCRIBE
        i = put_length(hdr, 1, 2 + 2 + len(topic) + 1)  # section 3.8.2-3: id, topic, requested QoS
        struct.pack_into("!H", hdr, i, pid)
        i = self._put_topic(i + 2, topic)
        hdr[i] = qos
        self._write(hdr, i + 1)
        self._wait_ack(_SUBACK, pid)
        if self._rx_code == _SUB_FAILURE:
            raise MQTTError(SUBSCRIBE_REFUSED)
        return self._rx_code

    # QoS 0 returns once written; QoS 1 waits for the PUBACK (incoming PUBLISH still reach the callback),
    # unless wait is False: then the packet identifier is returned and its PUBACK is handled when it comes.
    def publish(self, topic, payload, retain=False, qos=0, wait=True):
        if qos != 0 and qos != 1:
            raise ValueError("qos")
        topic = to_bytes(topic)
        payload = to_bytes(payload)
        hdr = self._hdr
        hdr[0] = _PUBLISH | qos << 1 | (1 if retain else 0)
        i = put_length(hdr, 1, 2 + len(topic) + (2 if qos else 0) + len(payload))  # section 3.3.2
        i = self._put_topic(i, topic)
        pid = 0
        if qos:
            pid = self._next_pid()
            struct.pack_into("!H", hdr, i, pid)
            i += 2
        if i:
            self._write(hdr, i)
        self._write(payload, len(payload))
        if qos and wait:
            self._wait_ack(_PUBACK, pid)
        return pid

    # Handle every complete packet available (at most `limit` when > 0: a caller sharing the CPU gets it
    # back while a download streams), waiting up to timeout_ms for the first; returns the count.
    def poll(self, timeout_ms=0, limit=0):
        t0 = ticks_ms()
        n = 0
        while True:
            wait = 0 if n else timeout_ms - ticks_diff(ticks_ms(), t0)
            due = self._due_ms()
            if wait > due:
                wait = due
            if wait < 0:
                wait = 0
            if self._ready(wait):
                self._handle()
                n += 1
                self._keepalive()
                if n == limit:
                    return n
                continue
            self._keepalive()
            if n or ticks_diff(ticks_ms(), t0) >= timeout_ms:
                return n

    # True when bytes are waiting (a packet or part of one): a caller with its own event loop asks before it parks.
    def readable(self):
        return self.sock is not None and self._ready(0)

    def ping(self):
        hdr = self._hdr
        hdr[0] = _PINGREQ
        hdr[1] = 0
        self._write(hdr, 2)
        self._ping_out = True

    # Send DISCONNECT (the broker then drops the will) and close.
    def disconnect(self):
        if self.sock is not None:
            try:
                hdr = self._hdr
                hdr[0] = _DISCONNECT
                hdr[1] = 0
                self._write(hdr, 2)
            finally:
                self.close()

    # Close the socket without DISCONNECT (the broker publishes the will). Never raises OSError.
    def close(self):
        s, self.sock, self._ipoll = self.sock, None, None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    def _send_connect(self, clean):
        pkt = connect_packet(self.client_id, self.keepalive, clean, self.will, self.user, self.password)
        self._write(pkt, len(pkt))

    # Append the topic to the header pending in _hdr[:i] (one write, one TLS record, with what follows);
    # a topic too long for _hdr is written out with the header. Returns the bytes still pending.
    def _put_topic(self, i, topic):
        n = len(topic)
        if i + 2 + n + 2 <= _HDR_SIZE:
            return put_str(self._hdr, i, topic)
        struct.pack_into("!H", self._hdr, i, n)
        self._write(self._hdr, i + 2)
        self._write(topic, n)
        return 0

    def _next_pid(self):
        self._pid = self._pid % 0xFFFF + 1  # section 2.3.1: 1..65535
        return self._pid

    def _write(self, buf, n):
        if self.sock is None:
            raise OSError(ENOTCONN)
        self.sock.write(buf, n)
        self._last_tx = ticks_ms()

    def _attach(self, sock):
        if hasattr(sock, "readinto"):  # MicroPython socket or SSLSocket
            p = select.poll()
            p.register(sock, select.POLLIN)
            self._ipoll = p.ipoll  # iterates without allocating, unlike poll()
        else:  # CPython: recv_into / sendall
            from .hoststream import HostStream

            sock = HostStream(sock)
            self._ipoll = sock.ipoll
        self.sock = sock

    # True when the socket is readable (an SSL socket also counts bytes already decrypted).
    def _ready(self, ms):
        if self.sock is None:  # closed meanwhile (by the callback, or after EOF)
            raise OSError(ENOTCONN)
        for _ in self._ipoll(ms):
            return True
        return False

    # Read exactly n bytes into the start of the buffer.
    def _read(self, n):
        if self.sock.readinto(self._mv, n) != n:  # MicroPython streams fill all n or hit EOF
            self.close()
            raise MQTTError(CONNECTION_CLOSED)

    # Fixed header (section 2.2): returns the first byte, leaves the remaining length in _rl.
    def _read_fixed(self):
        buf = self._buf
        self._read(1)
        b0 = buf[0]
        n = shift = 0
        while True:
            self._read(1)
            n |= (buf[0] & 0x7F) << shift
            if not buf[0] & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError(PROTOCOL_ERROR)
        self._rl = n
        return b0

    # Read and act on one packet; returns its type.
    def _handle(self):
        b0 = self._read_fixed()
        rl = self._rl
        self._last_rx = ticks_ms()
        kind = b0 & 0xF0
        if kind == _PUBLISH:
            self._on_publish(b0, rl)
        elif kind == _PINGRESP and rl == 0:
            self._ping_out = False
        elif (kind == _PUBACK and rl == 2) or (kind == _SUBACK and 3 <= rl <= len(self._buf)):
            self._read(rl)
            buf = self._buf
            self._rx_pid = buf[0] << 8 | buf[1]
            self._rx_code = buf[2] if rl > 2 else 0
        else:
            raise MQTTError(PROTOCOL_ERROR)
        return kind

    def _on_publish(self, b0, rl):
        qos = (b0 >> 1) & 3
        size = len(self._buf)
        first = rl if rl <= size else size
        self._read(first)
        buf = self._buf
        start = 2 + (buf[0] << 8 | buf[1])  # section 3.3.2: topic, then the packet id for QoS > 0
        if qos > 1 or first < 2 or start + 2 * qos > first:
            raise MQTTError(PROTOCOL_ERROR)  # we never ask for QoS 2
        pid = 0
        if qos:
            pid = buf[start] << 8 | buf[start + 1]
        if rl > size:
            left = rl - first
            while left:
                n = left if left < size else size
                self._read(n)
                left -= n
            self.dropped += 1
        elif self._cb is not None:
            self._cb(self._topic_of(start - 2), self._mv[start + 2 * qos : rl], (b0 & 1) == 1)
        if qos:
            struct.pack_into("!BBH", self._ack, 0, _PUBACK, 2, pid)
            self._write(self._ack, 4)

    # The topic at buf[2:2+n] as bytes: the previous object when the bytes are the same.
    def _topic_of(self, n):
        t, buf = self._topic, self._buf
        if len(t) == n:
            i = 0
            while i < n and t[i] == buf[2 + i]:
                i += 1
            if i == n:
                return t
        t = self._topic = bytes(self._mv[2 : 2 + n])
        return t

    # Read packets until the ack `kind` for `pid` arrives, within timeout_ms.
    def _wait_ack(self, kind, pid):
        t0 = ticks_ms()
        while True:
            left = self.timeout_ms - ticks_diff(ticks_ms(), t0)
            if left <= 0:
                raise MQTTError(TIMEOUT)
            due = self._due_ms()
            if self._ready(left if left < due else due):
                if self._handle() == kind and self._rx_pid == pid:
                    return
            self._keepalive()

    # Milliseconds until the next keepalive action (ping or liveness deadline).
    def _due_ms(self):
        ka = self.keepalive
        if not ka:
            return self.timeout_ms
        now = ticks_ms()
        rx = ticks_diff(now, self._last_rx)
        due = ka * 1500 - rx
        if not self._ping_out:
            tx = ticks_diff(now, self._last_tx)
            d = ka * 500 - (tx if tx > rx else rx)
            if d < due:
                due = d
        return due if due > 0 else 0

    # PINGREQ when keepalive/2 passed; raise KEEPALIVE when nothing arrived for 1.5 x keepalive.
    def _keepalive(self):
        if self.keepalive and self._due_ms() == 0:
            if ticks_diff(ticks_ms(), self._last_rx) >= self.keepalive * 1500:
                self.close()
                raise MQTTError(KEEPALIVE)
            self.ping()
