"""MQTT delivery speed: one virtual board, then 20 at once, beside plain-TCP baselines.

Everything runs in this process's run: mosquitto (started here, $SYS every second, docs/DEPLOY.md's
set_tcp_nodelay), `fota serve`'s MQTT service, virtual boards running the real agent over the real MQTT
client. Two baselines send the same bytes over a plain TCP socket into the same emulated flash under
micropython: the same agent (offer, chunks, journal, digest re-read from flash: what the MQTT board's
"downloaded" time covers too, so only the transport differs; the ratio's target >= 0.6 is against this
one), and bare writeblocks (no journal, no checks; printed for scale). Prints seconds, bytes through the
broker per image byte, the throughput ratio of each of --repeat one-board runs, the server's CPU time per
chunk served, the modelled time on an ESP32 over Wi-Fi and a slow link (bench/esp32model.py), and for 20
boards the total time and its ratio to one board.

    .venv/bin/python bench/mqtt.py [--size 1500000] [--boards 20] [--window N] [--repeat 3] [--nagle]
"""

from __future__ import annotations

import argparse
import importlib
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import paho.mqtt.client as mqtt  # noqa: E402
from esp32model import LINKS, CpuSampler, Esp32Model, sha256_cpu_s, tcp_bytes  # noqa: E402

from brokers import Mosquitto  # noqa: E402
from host_tools import firmware  # noqa: E402
from host_tools.sim.flash import ESP32_TIMING  # noqa: E402
from host_tools.sim.interpreter import check_micropython  # noqa: E402
from host_tools.sim.runtime import BoardRun  # noqa: E402
from mqttkit import device_id, mqtt_board, start_server, wait_final, wait_until  # noqa: E402
from simkit import fw_image, fw_package, new_board  # noqa: E402

# docs/DEPLOY.md's broker setting: mosquitto sends each packet at once. Without it (mosquitto's default), a PUBACK
# or chunk waits behind the device's delayed ACK (Nagle): 40 ms stalls on loopback, after each QoS 1 report.
BROKER_CONF = "set_tcp_nodelay true\n"

TCP_MAIN = r"""
import esp32, json, socket, time
net = json.loads(open("net.json").read())
target = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
s = socket.socket()
s.connect(socket.getaddrinfo(net["host"], net["port"])[0][-1])
buf = bytearray(4096)
mv = memoryview(buf)
t = time.ticks_us()
block = 0
total = 0
while True:
    got = 0
    while got < 4096:
        n = s.readinto(mv[got:])
        if not n:
            break
        got += n
    if not got:
        break
    for i in range(got, 4096):
        buf[i] = 0xFF
    target.writeblocks(block, buf)
    block += 1
    total += got
    if got < 4096:
        break
print("TCP", total, time.ticks_diff(time.ticks_us(), t))
"""

# The same agent as the MQTT board (offer, chunks, journal, digest re-read from flash; policy download-only, so
# no reboot) fed from a plain TCP stream in order: what MQTT adds is all that differs. Its time is the agent's
# own `downloaded` figure, the one the MQTT board reports (offer accepted -> verified).
TCP_AGENT_MAIN = r"""
import app, json, socket
from fota.agent import Agent, Identity
import trusted_keys
net = json.loads(open("net.json").read())
agent = Agent(Identity("sim", 0, "A", app.VERSION), trusted_keys.KEYS, policy="download-only")
took = []
agent.reporter = lambda event, info: took.append(info["ms"]) if event == "downloaded" else None
s = socket.socket()
s.connect(socket.getaddrinfo(net["host"], net["port"])[0][-1])
buf = bytearray(4096)
mv = memoryview(buf)

def fill(n):
    got = 0
    while got < n:
        r = s.readinto(mv[got:n])
        if not r:
            break
        got += r
    return got

fill(32)
blob = bytearray(buf[:32])
left = int.from_bytes(blob[8:12], "little") + 64
while left:
    n = fill(min(left, 4096))
    blob += buf[:n]
    left -= n
agent.offer(bytes(blob), 4096)
offset = 0
while True:
    n = fill(4096)
    if not n:
        break
    agent.on_chunk(offset, mv[:n])
    offset += n
agent.finish()
print("TCPAGENT", offset, took[0] * 1000)
"""


class SysBytes:
    """mosquitto's $SYS byte counters, read through a subscriber."""

    def __init__(self, host: str, port: int) -> None:
        self.values: dict[str, int] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self.client.on_message = lambda c, u, m: self.values.__setitem__(m.topic.rsplit("/", 1)[-1], int(m.payload))
        self.client.connect(host, port)
        self.client.subscribe([("$SYS/broker/bytes/received", 0), ("$SYS/broker/bytes/sent", 0)])
        self.client.loop_start()

    def total(self) -> int:
        time.sleep(2.2)  # sys_interval 1: let the counters catch up
        return self.values.get("received", 0) + self.values.get("sent", 0)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def tcp_baseline(home: Path, payload: bytes, timing=None, name: str = "tcp", main: str = TCP_MAIN) -> float:
    """Seconds the board took for `payload` over plain TCP: TCP_MAIN writes it straight to flash (payload: the
    package's payload); TCP_AGENT_MAIN hands it to the agent (payload: the whole package)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve():
        conn, _ = srv.accept()
        conn.sendall(payload)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    board = new_board(home, name, image=fw_image("1.0.0"), files={"main.py": main})
    board.write_file("net.json", f'{{"host": "127.0.0.1", "port": {port}}}')
    with BoardRun(board, repl_pty=False, timing=timing) as run:
        tag = main.rsplit('print("', 1)[1].split('"', 1)[0] + " "
        at = run.wait_for(tag, timeout=600)
        run.wait_for("\n", timeout=10, start=at)  # the whole line: the figures follow the tag in later reads
    srv.close()
    total, us = run.transcript().split(tag, 1)[1].split()[:2]
    return int(us) / 1e6


def update_boards(home: Path, server, broker, package: bytes, count: int, tag: str, timing=None,
                  cpu: list | None = None, window: int | None = None) -> tuple[float, float]:
    """(seconds from offer to every commit, the slowest device-measured download in seconds); with `cpu`, the
    first board's process CPU seconds from the offer to its reset are appended to it."""
    # self_test_ms: the firmware's default (30 s), not the tests' 3 s: twenty micropython boards on a shared
    # 2-core host miss a 3 s watchdog after the reboot, and a reset right after the commit loses the committed event
    net = {"self_test_ms": 30000} | ({"window": window} if window else {})
    boards = [mqtt_board(home, f"{tag}{i}", host=broker.host, port=broker.port, ids=server.identities, **net)
              for i in range(count)]
    runs = [BoardRun(b, repl_pty=False, timing=timing) for b in boards]
    for run in runs:
        run.start()
    sampler = CpuSampler(runs[0]) if cpu is not None else None
    try:
        for b in boards:
            wait_until(lambda b=b: server.registry.device(device_id(b)), 60, "device online")
        started = time.monotonic()
        offers = server.deploy(package, [device_id(b) for b in boards])
        for offer_id in offers:
            assert wait_final(server, offer_id, timeout=600).status == "SUCCEEDED"
        total = time.monotonic() - started
        downloads = [e["body"]["ms"] / 1000 for b in boards for e in server.registry.events(device_id(b))
                     if e["event"] == "downloaded"]
        if sampler is not None and cpu is not None:
            cpu.append(sampler.between(started, time.monotonic()))
        return total, max(downloads)
    finally:
        if sampler is not None:
            sampler.stop()
        for run in runs:
            run.stop()


def sized_image(size: int) -> bytes:
    """An image of about `size` bytes: the frozen firmware plus padding (the firmware's own size changes)."""
    return fw_image("2.0.0", pad=max(0, size - len(fw_image("2.0.0"))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_500_000)
    parser.add_argument("--boards", type=int, default=20)
    parser.add_argument("--window", type=int, default=None,
                        help="chunks a device keeps in flight (its config's window; default: the firmware's)")
    parser.add_argument("--repeat", type=int, default=3, help="one-board runs at host speed (each beside its baselines)")
    parser.add_argument("--nagle", action="store_true", help="mosquitto's default: Nagle on (no set_tcp_nodelay)")
    parser.add_argument("--timed-size", type=int, default=256_000, help="image size for the run with ESP32 flash timing")
    args = parser.parse_args()
    window = args.window or importlib.import_module(firmware.package().__name__ + ".link.mqtt").WINDOW
    image = sized_image(args.size)
    package = fw_package(image, version="2.0.0", sequence=2)
    payload = package[32 + int.from_bytes(package[8:12], "little") + 64 :]
    small = sized_image(args.timed_size)
    small_pkg = fw_package(small, version="2.0.0", sequence=2)
    runs: list[tuple[float, float, float]] = []  # (raw TCP s, agent over TCP s, MQTT download s)
    serve_us: list[float] = []  # the server's CPU time per chunk served, each one-board run
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        broker = Mosquitto(home, port=None)
        broker.conf.write_text(broker.conf.read_text() + "sys_interval 1\n" + ("" if args.nagle else BROKER_CONF))
        broker.start()
        server = start_server(home / "server", f"mqtt://{broker.host}:{broker.port}")
        sysbytes = SysBytes(broker.host, broker.port)
        try:
            for i in range(args.repeat):
                raw_s = tcp_baseline(home, payload, name=f"tcp{i}")
                agent_s = tcp_baseline(home, package, name=f"tcp-agent{i}", main=TCP_AGENT_MAIN)
                served0, cpu0 = server.mqtt.chunks_served, server.mqtt.serve_cpu_s
                if i == 0:
                    before = sysbytes.total()
                    device_cpu: list[float] = []
                    one_s, one_dl = update_boards(home, server, broker, package, 1, "one", cpu=device_cpu, window=window)
                    through = sysbytes.total() - before
                else:
                    _, one_dl = update_boards(home, server, broker, package, 1, f"one{i}-", window=window)
                served = server.mqtt.chunks_served - served0
                serve_us.append((server.mqtt.serve_cpu_s - cpu0) / max(served, 1) * 1e6)
                runs.append((raw_s, agent_s, one_dl))
            many_s, many_dl = update_boards(home, server, broker, package, args.boards, "many", window=window)
            tcp_timed = tcp_baseline(home, small_pkg, ESP32_TIMING, "tcp-timed", TCP_AGENT_MAIN)
            _, timed_dl = update_boards(home, server, broker, small_pkg, 1, "timed", ESP32_TIMING, window=window)
        finally:
            sysbytes.stop()
            server.stop()
            broker.stop()
    size = len(image)
    ratios = sorted(agent_s / dl for _, agent_s, dl in runs)
    mid = sorted(runs, key=lambda r: r[1] / r[2])[len(runs) // 2]
    raw_s, agent_s, one_dl = mid
    print(f"image {size} bytes, 4 KiB chunks, window {window}, mosquitto on loopback "
          f"({'Nagle on' if args.nagle else 'set_tcp_nodelay'}), flash at host speed; "
          f"the run with the median ratio of {len(runs)}:")
    print(f"  plain TCP, raw writes into the same flash  {raw_s:7.3f} s  {size / raw_s / 1e6:6.2f} MB/s  (no journal, no checks)")
    print(f"  plain TCP into the same agent              {agent_s:7.3f} s  {size / agent_s / 1e6:6.2f} MB/s  "
          f"(offer accepted -> verified: journal, digest re-read)")
    print(f"  MQTT download (offer accepted -> verified) {one_dl:7.3f} s  {size / one_dl / 1e6:6.2f} MB/s  "
          f"throughput ratio {agent_s / one_dl:.2f} (target >= 0.6; to raw writes {raw_s / one_dl:.2f})")
    print(f"  ratio over the {len(runs)} runs: " + " ".join(f"{r:.2f}" for r in ratios))
    print(f"  server CPU per chunk served                {sorted(serve_us)[len(serve_us) // 2]:7.0f} us  "
          f"(median; runs: {' '.join(f'{u:.0f}' for u in serve_us)}; {served} chunks a run; the chunk thread's own "
          f"CPU time: offer lookup, payload slice, publish)")
    print(f"  MQTT offer -> committed (reboot, self-test) {one_s:6.3f} s")
    print(f"  bytes through the broker per image byte    {through / size:.2f} ($SYS bytes received + sent)")
    print(f"  {args.boards} boards at once: offer -> all committed {many_s:.2f} s, ratio to one board {many_s / one_s:.1f}; "
          f"slowest download {many_dl:.2f} s")
    print(f"image {len(small)} bytes with ESP-IDF's flash test floors (erase 45 KB/s, write 754 KB/s):")
    print(f"  plain TCP into the same agent              {tcp_timed:7.2f} s")
    print(f"  MQTT download (device)                     {timed_dl:7.2f} s  throughput ratio {tcp_timed / timed_dl:.2f}")
    model = Esp32Model.measure(check_micropython().path)
    sha = (sha256_cpu_s(check_micropython().path, size), size)  # the image re-read from flash and hashed
    print(model.describe())
    print(f"  of the board's CPU, {sha[0]:.3f} s is SHA-256 over the image (measured alone): hardware on the chip, 8 MB/s")
    print(f"  modelled ESP32 time of the {size}-byte MQTT update (board CPU {device_cpu[0]:.2f} s from offer to reset; "
          f"the device's half of the broker's bytes as TCP; a round trip per window of {window} chunks):")
    for link in LINKS:
        est = model.update(device_cpu[0], size, tcp_bytes(through / 2), -(-len(payload) // 4096) / window, link, sha=sha)
        print(f"    {est.line()}")
    print("  (shared 2-core host loaded by other jobs: wall times +-30 %; CPU times are the processes' or threads' own)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
