"""CoAP delivery speed: a 1.5 MB image into a virtual board's flash, beside aiocoap's own client.

Everything runs in this process's run: `fota serve` with its CoAP service on loopback, a virtual
board running the real agent over the real CoAP client (1 KiB blocks, NSTART 1 unless --window;
Q-Block2 bursts with --qblock),
and, for each loss rate, the same payload resource fetched by aiocoap's client (its own
block-wise, 1 KiB blocks) through the same impairment proxy with the same transmission
parameters. Prints seconds per image for both and their ratio (device / aiocoap); asserts nothing
about timing. Loss applies to each direction. Also prints the modelled time on an ESP32 over Wi-Fi
and a slow link (bench/esp32model.py), with RFC 7252's default timers for the lost exchanges.

    .venv/bin/python bench/coap.py [--size 1480000] [--loss 0 0.1] [--ack-ms 200] [--window 1] [--qblock]
    .venv/bin/python bench/coap.py --qblock --window 16 --loss 0 0.1 0.2 0.3     # issue 18's figures
    .venv/bin/python bench/coap.py --qblock --window 16 --loss 0 0.1 --ref-upto 0 --seeds 1 2 3 4 5 6

With several seeds every loss rate runs once per seed (the proxy's losses differ per seed), and the
slowdown under loss is taken against the same seed's no-loss run; a summary gives the median and the
range of each column over the seeds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import aiocoap  # noqa: E402
from aiocoap.numbers.constants import TransportTuning  # noqa: E402
from esp32model import LINKS, CpuSampler, Esp32Model, sha256_cpu_s  # noqa: E402

from coapkit import coap_board, start_server  # noqa: E402
from host_tools.sim.interpreter import check_micropython  # noqa: E402
from host_tools.sim.runtime import BoardRun  # noqa: E402
from mqttkit import device_id, wait_final, wait_until  # noqa: E402
from simkit import fw_image, fw_package  # noqa: E402
from udp_proxy import Impairment, UdpProxy  # noqa: E402


def tuning(ack_ms: int) -> TransportTuning:
    class Tuned(TransportTuning):
        ACK_TIMEOUT = ack_ms / 1000  # the same as the device's; ACK_RANDOM_FACTOR 1.5, MAX_RETRANSMIT 4

    return Tuned()


def aiocoap_fetch(url: str, ack_ms: int) -> tuple[float, bytes | None]:
    """(seconds, payload); payload None when aiocoap gave up (a block that went MAX_RETRANSMIT times unanswered)."""
    async def fetch():
        ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
        started = time.monotonic()
        try:
            response = await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=url, transport_tuning=tuning(ack_ms))).response
            return time.monotonic() - started, response.payload
        except aiocoap.error.Error:
            return time.monotonic() - started, None
        finally:
            await ctx.shutdown()

    return asyncio.run(fetch())


def device_fetch(port: int, offer: int, size: int, window: int, ack_ms: int, qblock: bool) -> tuple[float, str]:
    """The device's client alone (bench/coap_fetch.py under micropython): (seconds, SHA-256 hex of what it got)."""
    cmd = [str(check_micropython().path), "-X", "heapsize=4M", str(ROOT / "bench" / "coap_fetch.py"),
           *(str(v) for v in (port, offer, size, window, ack_ms, int(qblock)))]
    out = subprocess.run(cmd, env=dict(os.environ, MICROPYPATH=str(ROOT / "firmware")), capture_output=True, text=True,
                         timeout=1200)
    line = next((x for x in out.stdout.splitlines() if x.startswith("FETCH ")), None)
    if line is None:
        raise SystemExit(f"the device's fetch failed: {out.stdout[-500:]} {out.stderr[-1000:]}")
    _, ms, digest, *_ = line.split()
    return int(ms) / 1000, digest


def dropped(proxy: UdpProxy) -> int:
    return proxy.stats["up"].dropped + proxy.stats["down"].dropped


ACK_TIMEOUT_S, ACK_RANDOM_FACTOR, MAX_RETRANSMIT = 2.0, 1.5, 4  # RFC 7252 section 4.8 defaults
BLOCK_WIRE = 1024 + 20 + 28  # a 2.05 block: payload, CoAP header, token and options (about), UDP + IPv4
REQUEST_WIRE = 30 + 28  # a GET with Uri-Path and Block2 (about), UDP + IPv4
QBLOCK_OPTION = 3  # one more Q-Block2 option in a request, per block asked for
MAX_PAYLOADS = 10  # RFC 9177 7.2; the device's window floor (firmware/fota/coap/qblock.py)


def expected_stall_s(loss: float) -> float:
    """Mean retransmission wait of one CON exchange at `loss` each way, with RFC 7252's default timers."""
    q = 1 - (1 - loss) ** 2  # the request or its response is lost
    mean_timeout = ACK_TIMEOUT_S * (1 + ACK_RANDOM_FACTOR) / 2
    return sum(q**k * mean_timeout * 2 ** (k - 1) for k in range(1, MAX_RETRANSMIT + 1))


def device_update(home: Path, server, port: int, package: bytes, tag: str, ack_ms: int, window: int,
                  qblock: bool) -> tuple[float, float, float]:
    """(device-measured download seconds, offer -> committed seconds, board CPU seconds from offer to reset)."""
    extra = {"qblock": True} if qblock else {}
    board = coap_board(home, tag, ids=server.identities, port=port, ack_timeout_ms=ack_ms, window=window, max_failures=8,
                       **extra)
    with BoardRun(board, repl_pty=False) as run:
        wait_until(lambda: server.registry.device(device_id(board)), 60, "device online")
        sampler = CpuSampler(run)
        started = time.monotonic()
        offer_id = server.deploy(package, [device_id(board)])[0]
        offer = wait_final(server, offer_id, timeout=3600)
        total = time.monotonic() - started
        sampler.stop()
        cpu = sampler.between(started, time.monotonic())
        if offer.status != "SUCCEEDED":
            raise SystemExit(f"{tag}: the update ended {offer.status} ({offer.reason}); console:\n{run.transcript()[-2000:]}")
        if run.flash.faults:  # strict flash: a block programmed over different data
            raise SystemExit(f"{tag}: flash faults {run.flash.faults[:3]}")
    ms = [e["body"]["ms"] for e in server.registry.events(device_id(board)) if e["event"] == "downloaded"]
    return ms[-1] / 1000, total, cpu


def summary(rows: list[tuple], bases: dict[int, float]) -> None:
    """Per loss rate, over the seeds: the median and the range of the device's time, the fetch's, and the ratios."""
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]" if values else "-"

    print(f"over {len({r[0] for r in rows})} seeds, median [min-max]:")
    for loss in dict.fromkeys(r[1] for r in rows):
        mine = [r for r in rows if r[1] == loss]
        own = [r[2] / bases[r[0]] for r in mine if r[0] in bases]
        ref = [r[5] / r[2] for r in mine if r[5]]
        print(f"  {loss * 100:3.0f}%: device s {spread([r[2] for r in mine])}, fetch s {spread([r[8] for r in mine])}, "
              f"device/device 0% {spread(own)} (per seed: {' '.join(f'{x:.2f}' for x in own)}), "
              f"aiocoap/device {spread(ref)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_480_000,
                        help="padding frozen into the image (bytes; with the firmware, about 1.57 MB, under the 1.5 MiB slot)")
    parser.add_argument("--loss", type=float, nargs="+", default=[0.0, 0.1], help="loss rates, each direction")
    parser.add_argument("--ack-ms", type=int, default=200, help="ACK_TIMEOUT for both clients (RFC 7252: 2000)")
    parser.add_argument("--window", type=int, default=1, help="device blocks in flight (1 = NSTART 1)")
    parser.add_argument("--qblock", action="store_true",
                        help="the device asks in Q-Block2 bursts (RFC 9177), --window blocks outstanding at most")
    parser.add_argument("--ref-upto", type=float, default=0.1,
                        help="run aiocoap's client at loss rates up to this (above 10 %% it mostly gives up, after minutes)")
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[1],
                        help="proxy seeds: the whole set of loss rates runs once per seed")
    args = parser.parse_args()
    image = fw_image("2.0.0", pad=args.size)
    package = fw_package(image, version="2.0.0", sequence=2)
    payload = package[32 + int.from_bytes(package[8:12], "little") + 64 :]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = start_server(home / "server")
        try:
            # an offer to nobody: the resource aiocoap fetches (the same package, the same store)
            probe_offer = server.deploy(package, ["bench-aiocoap"])[0]
            for seed, i, loss in [(seed, i, loss) for seed in args.seeds for i, loss in enumerate(args.loss)]:
                imp = Impairment(loss=loss)
                with UdpProxy(("127.0.0.1", server.coap.port), up=imp, down=imp, seed=seed + i) as proxy:
                    url = f"coap://127.0.0.1:{proxy.port}/fota/o/{probe_offer}"
                    ref_s: float | None = None
                    if loss <= args.ref_upto:
                        ref_s, got = aiocoap_fetch(url, args.ack_ms)
                        if got is not None and got != payload:
                            raise SystemExit("aiocoap fetched other bytes than the package's payload")
                        if got is None:
                            print(f"aiocoap at {loss:.0%} loss: the transfer failed after {ref_s:.1f} s")
                            ref_s = None
                    ref_drops = dropped(proxy)
                    fetch_s, digest = device_fetch(proxy.port, probe_offer, len(payload), args.window, args.ack_ms,
                                                   args.qblock)
                    if digest != hashlib.sha256(payload).hexdigest():
                        raise SystemExit("the device's client fetched other bytes than the package's payload")
                    before = dropped(proxy)
                    dev_s, total, cpu = device_update(home, server, proxy.port, package, f"b{seed}-{i}", args.ack_ms,
                                                      args.window, args.qblock)
                    dev_drops = dropped(proxy) - before
                rows.append((seed, loss, dev_s, total, dev_drops, ref_s, ref_drops, cpu, fetch_s))
        finally:
            server.stop()
    blocks = -(-len(payload) // 1024)
    scheme = (f"Q-Block2 bursts, at most {args.window} blocks outstanding" if args.qblock else
              f"Block2, window {args.window}")
    print(f"image {len(image)} bytes ({blocks} blocks of 1 KiB), CoAP on loopback, ACK_TIMEOUT {args.ack_ms} ms, "
          f"device: {scheme}; flash at host speed")
    print(f"{'seed':>4} {'loss':>6} {'device s':>9} {'MB/s':>6} {'dropped':>8} {'fetch s':>8} {'aiocoap s':>10} {'MB/s':>6} "
          f"{'dropped':>8} {'aiocoap/fetch':>14} {'aiocoap/device':>15} {'device/device 0%':>17} {'offer->committed s':>19}")
    bases = {r[0]: r[2] for r in rows if r[1] == 0}
    for seed, loss, dev_s, total, dev_drops, ref_s, ref_drops, _, fetch_s in rows:
        base = bases.get(seed)
        ref = (f"{ref_s:10.2f} {len(payload) / ref_s / 1e6:6.2f} {ref_drops:8d} {ref_s / fetch_s:14.2f} {ref_s / dev_s:15.2f}"
               if ref_s else f"{'-':>10} {'-':>6} {'-':>8} {'-':>14} {'-':>15}")
        own = f"{dev_s / base:17.2f}" if base else f"{'-':>17}"
        print(f"{seed:4d} {loss * 100:5.0f}% {dev_s:9.2f} {len(payload) / dev_s / 1e6:6.2f} {dev_drops:8d} {fetch_s:8.2f} {ref} {own} "
              f"{total:19.2f}")
    print("device s: the update's download measured on the device (offer checked -> digest verified from flash: agent, "
          "emulated flash over the board's bus, the digest read back), dropped: its datagrams lost on the way;")
    print("every update: SUCCEEDED, and the strict flash saw no block programmed over different data;")
    print("fetch s: the device's CoAP client alone (bench/coap_fetch.py under micropython, the same receiver and checks, "
          "into RAM) fetching the same resource through the same proxy;")
    print(f"aiocoap s: aiocoap's client (Block2, NSTART 1) fetching it the same way (loss up to {args.ref_upto:.0%}); "
          f"aiocoap/fetch and aiocoap/device: how many times faster the device's client and the device's download are; "
          f"device/device 0%: the download's slowdown under loss")
    if len(args.seeds) > 1:
        summary(rows, bases)
    model = Esp32Model.measure(check_micropython().path)
    sha = (sha256_cpu_s(check_micropython().path, len(image)), len(image))  # the image re-read from flash and hashed
    print(model.describe())
    print(f"  of the board's CPU, {sha[0]:.3f} s is SHA-256 over the image (measured alone): hardware on the chip, 8 MB/s")
    if args.qblock:
        print(f"  modelled ESP32 time of the {len(image)}-byte CoAP update (board CPU from offer to reset; {blocks} blocks, "
              f"Q-Block2: {args.window} outstanding without loss, {MAX_PAYLOADS} under loss (the window's floor), a round "
              f"trip per window; a lost block is asked again in a later request (no timer wait) and costs its bytes again):")
    else:
        print(f"  modelled ESP32 time of the {len(image)}-byte CoAP update (board CPU from offer to reset; {blocks} blocks, "
              f"{args.window} in flight, a round trip per window; lost exchanges wait RFC 7252's default timers, one after "
              f"another: an upper bound when more than one block is in flight):")
    for loss in args.loss:
        cpu = statistics.median(r[7] for r in rows if r[1] == loss)
        for link in LINKS:
            if args.qblock:
                q = 1 - (1 - loss) ** 2  # the request for a block or the block itself is lost
                per = max(1, (args.window if loss == 0 else MAX_PAYLOADS) // 3)  # blocks per request
                wire = blocks / (1 - q) * (BLOCK_WIRE + REQUEST_WIRE / per + QBLOCK_OPTION)
                trips = blocks / (1 - q) / (args.window if loss == 0 else MAX_PAYLOADS)
            else:
                wire = blocks * (BLOCK_WIRE + REQUEST_WIRE)
                trips = blocks / args.window + blocks * expected_stall_s(loss) / link.rtt_s
            est = model.update(cpu, len(image), wire, trips, link, sha=sha)
            print(f"    {loss * 100:3.0f}% loss, CPU {cpu:.2f} s on the host: {est.line()}")
    print("  (shared 2-core host loaded by other jobs: wall times +-30 %; CPU times are the process's own)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
