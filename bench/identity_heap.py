"""Heap of a whole update with device identity on: TLS to the broker, a broker login, MACed reports.

A virtual board with a 64 KiB heap (`-X heapsize=64k`, what the agent budget allows) runs the
provisioned entry point (fota.device: config.json with mqtts://, the CA, user, password, key)
against mosquitto with TLS, a password file and ACLs; the server offers v2 (zlib). Prints the
lowest free heap seen (sampled at every chunk and every report) and whether the update committed.

    .venv/bin/python bench/identity_heap.py [--heap 64k] [--no-tls]
    FOTA_MICROPYTHON=build/micropython32/micropython .venv/bin/python bench/identity_heap.py   # a 32-bit build
                                                     # with ssl: make micropython32 on a checkout with lib/mbedtls
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from brokers import issue_server_cert, make_test_ca, start_mosquitto  # noqa: E402
from host_tools.server.service import Server, ServerConfig  # noqa: E402
from host_tools.sim.frozen import interpreter_heap  # noqa: E402
from host_tools.sim.interpreter import check_micropython, find_micropython  # noqa: E402
from host_tools.sim.runtime import BoardRun  # noqa: E402
from mqttkit import device_id, mqtt_board, wait_final, wait_until  # noqa: E402
from simkit import fw_image, fw_package  # noqa: E402

# fota.device.run with the lowest gc.mem_free() sampled at each chunk and each report
MAIN = r"""
import app, gc
from fota import device
low = [1 << 30]
def sample():
    f = gc.mem_free()
    if f < low[0]:
        low[0] = f
cfg = device.load_config()
agent, link = device.build(app, cfg)
chunk, flush = agent.on_chunk, link._flush
def on_chunk(o, mv):
    r = chunk(o, mv)
    sample()
    return r
def flushed():
    sample()
    flush()
    sample()
    print("HEAPLOW", low[0])
agent.on_chunk = on_chunk
link._flush = flushed
print("APP", app.VERSION)
device.connect_wifi(cfg)
agent.boot()
device.use_tls(link, cfg)
device.sign_reports(link, cfg)
link.run()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heap", default="64k")
    parser.add_argument("--no-tls", action="store_true", help="plain MQTT (login and MACed reports only)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="fota-idheap-"))
    ca = make_test_ca(home / "ca")
    broker = start_mosquitto(home, tls=None if args.no_tls else issue_server_cert(ca, home / "ca"), auth=True)
    server = Server(ServerConfig(home / "server", broker_url=broker.server_url))  # its own listener (loopback)
    server.identities.server_credentials()
    broker.sync(server.identities)
    server.start()
    try:
        board = mqtt_board(home, "idheap", host="127.0.0.1", port=broker.port, ids=server.identities,
                           **({} if args.no_tls else {"ca": ca.der.hex()}),
                           broker=broker)
        board.write_file("main.py", MAIN)
        with BoardRun(board, heapsize=args.heap) as run:
            try:
                wait_until(lambda: server.registry.device(device_id(board)), 60, "the first authenticated state")
            except AssertionError:
                print(run.transcript()[-3000:])
                raise
            pkg = fw_package(fw_image("2.0.0", pad=20_000), version="2.0.0", sequence=2, encoding="zlib")
            offer = wait_final(server, server.deploy(pkg, [device_id(board)])[0], 120)
            try:
                wait_until(lambda: server.registry.device(device_id(board))["version"] == "2.0.0", 60, "v2 reported")
            except AssertionError:
                print(f"offer {offer.status} {offer.code} {offer.reason}\n{run.transcript()[-3000:]}")
                raise
            lows = [int(x) for x in re.findall(r"HEAPLOW (\d+)", run.transcript())]
        heap = int(args.heap.rstrip("k")) * 1024
        low = min(lows)
        what = "login + MACed reports" if args.no_tls else "TLS + login + MACed reports"
        print(f"identity on ({what}), heap {args.heap}: offer {offer.status}, "
              f"lowest free {low} B (gc.mem_free at every chunk and report); reports rejected {server.identities.rejected}")
        interp = check_micropython(find_micropython())
        print(f"interpreter: {interp.label}; the board's {args.heap} is a chip's heap: "
              f"{interpreter_heap(heap, interp.small_int_bits)} B for this interpreter (host_tools/sim/frozen.py)")
        if not args.no_tls:
            print("note: on the virtual board (Unix port) mbedTLS allocates its session (record buffers, the parsed CA,\n"
                  "the handshake) from the MicroPython heap (m_tracked_calloc), so this figure includes it; on an\n"
                  "ESP32 mbedTLS allocates from the ESP-IDF heap, outside MicroPython's, so a chip needs less.")
        return 0 if offer.status == "SUCCEEDED" and "MemoryError" not in run.transcript() else 1
    finally:
        server.stop()
        broker.stop()


if __name__ == "__main__":
    raise SystemExit(main())
