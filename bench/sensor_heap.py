"""The heap of the sensor example and the update service together, through a whole zlib update, in a 64 KiB chip heap.

A virtual board with `heapsize="64k"` (a chip's heap: docs/BOARD.md "A chip's heap on a 64-bit
interpreter") runs examples/sensor/ (a reading a second, the service as its asyncio guest) against
`fota serve`'s embedded broker; the server offers it v2 as a zlib package; the board downloads,
verifies, reboots into v2, passes the example's self-test and commits. main.py is the example's own
plus a third task that samples the heap every 250 ms: free bytes after a collection (gc.mem_free) and
the largest block the heap can still give (a bisection of bytearray sizes); the agent's on_chunk also
samples free bytes after each chunk and its finish() both figures after the verify. Prints the lowest of
each, per boot, how many readings reached the broker and whether the update committed.

    .venv/bin/python bench/sensor_heap.py [--heapsize 64k] [--pad 200000]
    FOTA_MICROPYTHON=build/micropython32/micropython .venv/bin/python bench/sensor_heap.py   # the 32-bit build
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from host_tools.demos.fleet import EXAMPLE, app_source  # noqa: E402
from host_tools.demos.readings import Readings  # noqa: E402
from host_tools.image.build import BuildSpec, build_image  # noqa: E402
from host_tools.sim.flash import ESP32_TIMING  # noqa: E402
from host_tools.sim.interpreter import check_micropython  # noqa: E402
from host_tools.sim.runtime import BoardRun  # noqa: E402
from mqttkit import device_id, mqtt_board, start_server, wait_final, wait_until  # noqa: E402
from simkit import LARGEST_BLOCK, fw_package, session_signer  # noqa: E402

SAMPLER = r"""
import asyncio
import gc


""" + LARGEST_BLOCK + r"""


low = [1 << 30, 1 << 30]


def sample(where, probe=True):
    gc.collect()
    free = gc.mem_free()
    big = largest() if probe else low[1]
    if free < low[0] or big < low[1]:
        low[0] = min(low[0], free)
        low[1] = min(low[1], big)
        print("HEAP", app.VERSION, where, low[0], low[1])


async def sampler():
    while True:
        sample("task")
        await asyncio.sleep_ms(250)


_on_chunk = svc.agent.on_chunk
_finish = svc.agent.finish


def on_chunk(offset, mv):
    r = _on_chunk(offset, mv)
    sample("chunk", False)
    return r


def finish():
    r = _finish()
    sample("verified")
    return r


svc.agent.on_chunk = on_chunk
svc.agent.finish = finish
sample("start")
asyncio.create_task(sampler())
"""


def bench_main() -> str:
    """The example's main.py with the sampler between starting the service and running the application."""
    main = (EXAMPLE / "main.py").read_text()
    start = "app.run(device.start(app))"
    if start not in main:
        raise SystemExit(f"examples/sensor/main.py no longer says {start!r}")
    return main.replace(start, "svc = device.start(app)\n" + SAMPLER + "app.run(svc)")


def padded(version: str, pad: int) -> bytes:
    """The example at `version`, with `pad` bytes of frozen data so the download takes a while."""
    modules = [("app.py", app_source(version))]
    rng = random.Random(pad)
    step = 24 * 1024  # mpy-cross's own heap is small
    for i in range(0, pad, step):
        data = rng.randbytes(min(step, pad - i))  # incompressible: the zlib package is as long as the image
        modules.append((f"pad{i // step}.py", f"DATA = {data!r}\n"))
    return build_image(BuildSpec(board="sim", version=version, extra_modules=tuple(modules),
                                 trusted_keys=(session_signer().public_key,)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heapsize", default="64k", help="the chip's heap (default 64k: the update path's budget)")
    parser.add_argument("--pad", type=int, default=200_000, help="frozen data added to v2, bytes")
    args = parser.parse_args()
    interpreter = check_micropython()
    v1 = padded("1.0.0", 0)
    package = fw_package(padded("2.0.0", args.pad), version="2.0.0", sequence=2, encoding="zlib")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = start_server(home / "server", None)
        port = int(server.broker_url.rsplit(":", 1)[1])
        cred = server.identities.server_credentials()
        readings = Readings("127.0.0.1", port, cred.user, cred.password)
        board = mqtt_board(home, "sensor", host="127.0.0.1", port=port, image=v1, ids=server.identities)
        board.write_file("main.py", bench_main())
        uid = device_id(board)
        try:
            with BoardRun(board, heapsize=args.heapsize, repl_pty=False, timing=ESP32_TIMING) as run:  # the download takes seconds
                wait_until(lambda: server.registry.device(uid) and len(readings.of(uid)) >= 3, 60, "state and readings")
                offer_id = server.deploy(package, [uid])[0]
                started = time.monotonic()
                offer = wait_final(server, offer_id, timeout=300)
                took = time.monotonic() - started
                wait_until(lambda: len(readings.of(uid)) >= 3 and readings.of(uid)[-1].n >= 2 and readings.of(uid)[-1].at > started,
                           30, "readings from v2")
                transcript = run.transcript()
        finally:
            readings.close()
            server.stop()
    lows: dict[str, tuple[int, int, str]] = {}
    for version, where, free, big in re.findall(r"HEAP (\S+) (\S+) (\d+) (\d+)", transcript):
        lows[version] = (int(free), int(big), where)  # the last line of a boot holds its lowest figures
    faults = transcript.count("fota: fault")
    memory = transcript.count("MemoryError") + transcript.count("OUT_OF_MEMORY")
    got = readings.of(uid)
    print(interpreter.label)
    print(f"examples/sensor + the update service, chip heap {args.heapsize}, a zlib update of "
          f"{len(package)} B ({args.pad} B of frozen data in v2), at ESP-IDF's flash timings:")
    for version, (free, big, where) in lows.items():
        print(f"  v{version}: lowest free heap {free} B, smallest largest free block {big} B (last new low at {where})")
    print(f"  update {offer.status}{' (' + offer.reason + ')' if offer.reason else ''} in {took:.1f} s: "
          f"{'committed' if offer.status == 'SUCCEEDED' else 'not committed'}; faults {faults}, MemoryError/OUT_OF_MEMORY {memory}")
    reboot = [b.at - a.at for a, b in zip(got, got[1:]) if b.n <= a.n]
    other = [b.at - a.at for a, b in zip(got, got[1:]) if b.n > a.n]
    print(f"  readings at the broker: {len(got)}; the reboot's gap {', '.join(f'{g:.1f} s' for g in reboot) or '-'}, "
          f"longest other gap {max(other, default=0):.1f} s; across {1 + sum(1 for a, b in zip(got, got[1:]) if b.n <= a.n)} boot(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
