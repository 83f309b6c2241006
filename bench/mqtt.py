"""MQTT delivery speed: one virtual board, then 20 at once, beside a plain-TCP baseline.

Everything runs in this process's run: mosquitto (started here, $SYS every second),
`fota serve`'s MQTT service, virtual boards running the real agent over the real
MQTT client. The baseline sends the same payload over a plain TCP socket into the
same emulated flash under micropython (writeblocks only, no checks). Prints seconds,
bytes through the broker per image byte, the throughput ratio against the baseline
(target >= 0.6), the server's CPU time per chunk served, the modelled time on an ESP32 over
Wi-Fi and a slow link (bench/esp32model.py), and for 20 boards the total time and its ratio to one board.

    .venv/bin/python bench/mqtt.py [--size 1500000] [--boards 20]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import paho.mqtt.client as mqtt  # noqa: E402
from esp32model import LINKS, CpuSampler, Esp32Model, tcp_bytes  # noqa: E402

from brokers import Mosquitto  # noqa: E402
from host_tools.sim.flash import ESP32_TIMING  # noqa: E402
from host_tools.sim.interpreter import check_micropython  # noqa: E402
from host_tools.sim.runtime import BoardRun  # noqa: E402
from mqttkit import device_id, mqtt_board, start_server, wait_final, wait_until  # noqa: E402
from simkit import fw_image, fw_package, new_board  # noqa: E402

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


def tcp_baseline(home: Path, payload: bytes, timing=None, name: str = "tcp") -> float:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve():
        conn, _ = srv.accept()
        conn.sendall(payload)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    board = new_board(home, name, image=fw_image("1.0.0"), files={"main.py": TCP_MAIN})
    board.write_file("net.json", f'{{"host": "127.0.0.1", "port": {port}}}')
    with BoardRun(board, repl_pty=False, timing=timing) as run:
        run.wait_for("TCP ", timeout=600)
    srv.close()
    total, us = run.transcript().split("TCP ", 1)[1].split()[:2]
    return int(us) / 1e6


def update_boards(home: Path, server, broker, package: bytes, count: int, tag: str, timing=None,
                  cpu: list | None = None, window: int = 8) -> tuple[float, float]:
    """(seconds from offer to every commit, the slowest device-measured download in seconds); with `cpu`, the
    first board's process CPU seconds from the offer to its reset are appended to it."""
    boards = [mqtt_board(home, f"{tag}{i}", host=broker.host, port=broker.port, ids=server.identities,
                         window=window)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_500_000)
    parser.add_argument("--boards", type=int, default=20)
    parser.add_argument("--window", type=int, default=8, help="chunks a device keeps in flight (its config's window)")
    parser.add_argument("--timed-size", type=int, default=256_000, help="image size for the run with ESP32 flash timing")
    args = parser.parse_args()
    image = fw_image("2.0.0", pad=args.size)
    package = fw_package(image, version="2.0.0", sequence=2)
    payload = package[32 + int.from_bytes(package[8:12], "little") + 64 :]
    small = fw_image("2.0.0", pad=args.timed_size)
    small_pkg = fw_package(small, version="2.0.0", sequence=2)
    small_payload = small_pkg[32 + int.from_bytes(small_pkg[8:12], "little") + 64 :]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        broker = Mosquitto(home, port=None)
        broker.conf.write_text(broker.conf.read_text() + "sys_interval 1\n")
        broker.start()
        server = start_server(home / "server", f"mqtt://{broker.host}:{broker.port}")
        sysbytes = SysBytes(broker.host, broker.port)
        try:
            tcp_s = tcp_baseline(home, payload)
            before = sysbytes.total()
            served0, cpu0 = server.mqtt.chunks_served, server.mqtt.serve_cpu_s
            device_cpu: list[float] = []
            one_s, one_dl = update_boards(home, server, broker, package, 1, "one", cpu=device_cpu, window=args.window)
            served, serve_cpu = server.mqtt.chunks_served - served0, server.mqtt.serve_cpu_s - cpu0
            through = sysbytes.total() - before
            many_s, many_dl = update_boards(home, server, broker, package, args.boards, "many")
            tcp_timed = tcp_baseline(home, small_payload, ESP32_TIMING, "tcp-timed")
            _, timed_dl = update_boards(home, server, broker, small_pkg, 1, "timed", ESP32_TIMING)
        finally:
            sysbytes.stop()
            server.stop()
            broker.stop()
    size = len(image)
    print(f"image {size} bytes, 4 KiB chunks, window {args.window}, mosquitto on loopback, flash at host speed")
    print(f"  plain TCP into the same emulated flash     {tcp_s:7.3f} s  {size / tcp_s / 1e6:6.2f} MB/s")
    print(f"  MQTT download (offer -> verified, device) {one_dl:7.3f} s  {size / one_dl / 1e6:6.2f} MB/s  "
          f"throughput ratio {tcp_s / one_dl:.2f} (target >= 0.6)")
    print(f"  server CPU per chunk served               {serve_cpu / max(served, 1) * 1e6:7.0f} us  "
          f"({served} chunks; the serving thread's own CPU time: offer lookup, payload slice, publish)")
    print(f"  MQTT offer -> committed (reboot, self-test) {one_s:6.3f} s")
    print(f"  bytes through the broker per image byte   {through / size:.2f} ($SYS bytes received + sent)")
    print(f"  {args.boards} boards at once: offer -> all committed {many_s:.2f} s, ratio to one board {many_s / one_s:.1f}; "
          f"slowest download {many_dl:.2f} s")
    print(f"image {len(small)} bytes with ESP-IDF's flash test floors (erase 45 KB/s, write 754 KB/s):")
    print(f"  plain TCP into the same emulated flash     {tcp_timed:7.2f} s")
    print(f"  MQTT download (device)                    {timed_dl:7.2f} s  throughput ratio {tcp_timed / timed_dl:.2f}")
    model = Esp32Model.measure(check_micropython().path)
    print(model.describe())
    print(f"  modelled ESP32 time of the {size}-byte MQTT update (board CPU {device_cpu[0]:.2f} s from offer to reset; "
          f"the device's half of the broker's bytes as TCP; a round trip per window of {args.window} chunks):")
    for link in LINKS:
        est = model.update(device_cpu[0], size, tcp_bytes(through / 2), -(-len(payload) // 4096) / args.window, link)
        print(f"    {est.line()}")
    print("  (shared 2-core host loaded by other jobs: wall times +-30 %; CPU times are the processes' or threads' own)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
