"""Throughput of the update agent on the virtual board, against a raw copy in the same run.

Both sides run on a virtual board under micropython and write the same bytes into
the same emulated flash (ota_1): the baseline with bare `writeblocks(n, buf)` (erase
+ write, nothing else), the agent through offer -> chunks -> digest re-read from
flash (policy download-only, so no reboot). Prints bytes/s for each, the ratio
(target >= 0.8), the agent's peak heap above its baseline, what zlib saves, and the
modelled time on an ESP32 (bench/esp32model.py: the board process's CPU time scaled
by a pystone ratio, flash at ESP-IDF timings, the moved bytes over Wi-Fi and a slow link).

    .venv/bin/python bench/agent.py [--size 1500000]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from esp32model import LINKS, Esp32Model, proc_cpu_s, tcp_bytes  # noqa: E402

from host_tools.sim.flash import ESP32_TIMING  # noqa: E402
from host_tools.sim.interpreter import check_micropython  # noqa: E402
from host_tools.sim.runtime import BoardRun  # noqa: E402
from simkit import LARGEST_BLOCK, fw_image, fw_package, new_board  # noqa: E402

AGENT_MAIN = r"""
import app, gc, time, json
from fota.agent import Agent, Identity
from fota.link.source import FileSource, pump
import trusted_keys
LIVE = False
agent = Agent(Identity("sim", 0, "A", app.VERSION), trusted_keys.KEYS, policy="download-only")
src = FileSource("update.fota")
peak = [0]
orig = agent.on_chunk
def on_chunk(offset, mv):
    r = orig(offset, mv)
    if LIVE:
        gc.collect()
    a = gc.mem_alloc()
    if a > peak[0]:
        peak[0] = a
    return r
agent.on_chunk = on_chunk

""" + LARGEST_BLOCK + r"""

big0 = largest()
free0 = gc.mem_free()
base = gc.mem_alloc()
print("GO")
t = time.ticks_us()
pump(agent, src)
dt = time.ticks_diff(time.ticks_us(), t)
src_sent = src.sent
src = None
gc.collect()
print("RESULT", json.dumps({"us": dt, "bytes": agent.manifest.image_size, "moved": src_sent, "peak": peak[0] - base,
                            "free_before": free0, "largest_before": big0, "free_after": gc.mem_free(), "largest_after": largest()}))
"""

RAW_MAIN = r"""
import esp32, time, json, hashlib
READBACK = False
target = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
f = open("update.fota", "rb")
hdr = f.read(32)
mlen = int.from_bytes(hdr[8:12], "little")
f.seek(32 + mlen + 64)
buf = bytearray(4096)
print("GO")
t = time.ticks_us()
block = 0
total = 0
while True:
    n = f.readinto(buf)
    if not n:
        break
    for i in range(n, 4096):
        buf[i] = 0xFF
    target.writeblocks(block, buf)
    block += 1
    total += n
if READBACK:  # what the agent adds to a copy for its final check: the image re-read from flash and hashed
    h = hashlib.sha256()
    for b in range(block):
        target.readblocks(b, buf)
        h.update(buf)
dt = time.ticks_diff(time.ticks_us(), t)
print("RESULT", json.dumps({"us": dt, "bytes": total, "moved": total, "peak": 0}))
"""


def measure(home: Path, name: str, main: str, image: bytes, package: bytes, timing=None, heapsize=None) -> dict:
    board = new_board(home, name, image=image, files={"main.py": main})
    board.write_file("update.fota", package)
    with BoardRun(board, repl_pty=False, timing=timing, heapsize=heapsize) as run:
        run.wait_for("GO", timeout=60)
        cpu0 = proc_cpu_s(run.pid)  # the board process's CPU time from here to RESULT: the model's CPU part
        run.wait_for("RESULT", timeout=300)
        cpu1 = proc_cpu_s(run.pid)
        run.wait_idle(timeout=30)
    return dict(json.loads(re.search(r"RESULT (.*)", run.transcript()).group(1)), cpu=cpu1 - cpu0)


def median_run(runs: list[dict]) -> dict:
    """The run with the median time (the host is shared: one run alone says little)."""
    return sorted(runs, key=lambda r: r["us"])[len(runs) // 2]


def report(label: str, results: dict) -> None:
    base = results["base"]
    base_bps = base["bytes"] / (base["us"] / 1e6)
    print(f"  [{label}]")
    print(f"    raw copy (writeblocks only)  {base_bps / 1e6:7.2f} MB/s  {base['us'] / 1e6:7.3f} s  board CPU {base['cpu']:.2f} s")
    if "readback" in results:
        rb = results["readback"]
        rb_bps = rb["bytes"] / (rb["us"] / 1e6)
        print(f"    raw copy + read back, SHA-256 {rb_bps / 1e6:6.2f} MB/s  {rb['us'] / 1e6:7.3f} s  "
              f"ratio {rb_bps / base_bps:.2f}: the most an agent that checks flash can reach here")
    for key in ("raw", "zlib"):
        if key in results:
            r = results[key]
            bps = r["bytes"] / (r["us"] / 1e6)
            print(f"    agent, {key:<4} package          {bps / 1e6:7.2f} MB/s  {r['us'] / 1e6:7.3f} s  "
                  f"ratio {bps / base_bps:.2f} (target >= 0.8)  board CPU {r['cpu']:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_500_000, help="approximate image size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="host-speed runs of each kind; the median is shown")
    parser.add_argument("--heapsize", default=None, help="heap the board leaves the application (default: the board's, 128k)")
    args = parser.parse_args()
    interpreter = check_micropython()  # $FOTA_MICROPYTHON, the fota[sim] wheel, or PATH
    model = Esp32Model.measure(interpreter.path)
    rng = random.Random(1)
    words = [bytes(rng.randrange(256) for _ in range(rng.randrange(2, 9))) for _ in range(400)]
    filler = b"".join(rng.choice(words) for _ in range(args.size // 5))[: args.size]  # compresses like code
    v1 = fw_image("1.0.0")
    part = 300_000  # mpy-cross runs out of memory on one module of 1.5 MB
    extra = tuple((f"blob{i // part}.py", "DATA = " + repr(filler[i : i + part])) for i in range(0, len(filler), part))
    from host_tools.image.build import BuildSpec, build_image
    from simkit import APP_TEMPLATE, session_signer

    spec = BuildSpec(board="sim", version="2.0.0", trusted_keys=(session_signer().public_key,),
                     extra_modules=(("app.py", APP_TEMPLATE.format(version="2.0.0", behaviour="ok")), *extra))
    v2 = build_image(spec)
    small_v2 = fw_image("2.0.0", pad=200_000)
    raw_pkg = fw_package(v2, version="2.0.0", sequence=2)
    zlib_pkg = fw_package(v2, version="2.0.0", sequence=2, encoding="zlib")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        fast = {k: median_run([measure(home, f"{k}-fast{i}", m, v1, p) for i in range(args.repeat)]) for k, m, p in
                (("base", RAW_MAIN, raw_pkg), ("readback", RAW_MAIN.replace("READBACK = False", "READBACK = True"), raw_pkg),
                 ("raw", AGENT_MAIN, raw_pkg), ("zlib", AGENT_MAIN, zlib_pkg))}
        live = {k: measure(home, f"{k}-live", AGENT_MAIN.replace("LIVE = False", "LIVE = True"), v1, p, heapsize=args.heapsize)
                for k, p in (("raw", raw_pkg), ("zlib", zlib_pkg))}
        small = fw_package(small_v2, version="2.0.0", sequence=2)
        timed = {k: measure(home, f"{k}-timed", m, v1, small, ESP32_TIMING) for k, m in
                 (("base", RAW_MAIN), ("raw", AGENT_MAIN))}
    print(interpreter.label)
    print(f"image {len(v2)} bytes, 4 KiB chunks, on the virtual board (micropython, flash over the board bus)")
    report(f"host-speed flash (agent CPU cost shows), median of {args.repeat} runs", fast)
    print(f"image {len(small_v2)} bytes with ESP-IDF's flash test floors (erase 45 KB/s, write 754 KB/s, read 10 MB/s):")
    report("esp32 flash timing", timed)
    print(f"  live peak heap above the agent's baseline (gc.collect per chunk): raw {live['raw']['peak']} B, "
          f"zlib {live['zlib']['peak']} B")
    for key in ("raw", "zlib"):
        r = live[key]
        print(f"  heap around a {key} update ({args.heapsize or 'board default'}): free {r['free_before']} -> {r['free_after']} B, "
              f"largest free block {r['largest_before']} -> {r['largest_after']} B")
    moved_raw, moved_zlib = fast["raw"]["moved"], fast["zlib"]["moved"]
    print(f"  bytes moved for the {len(v2)}-byte image: raw {moved_raw}, zlib {moved_zlib} "
          f"({100 * moved_zlib / moved_raw:.0f} % of raw)")
    print(model.describe())
    print(f"  modelled ESP32 time of the {len(v2)}-byte update (device CPU from the host-speed run; the moved bytes as "
          f"a TCP stream, a round trip per 8 chunks):")
    for link in LINKS:
        for key in ("raw", "zlib"):
            r = fast[key]
            est = model.update(r["cpu"], len(v2), tcp_bytes(r["moved"]), r["moved"] / 4096 / 8, link)
            print(f"    {key:<4} {est.line()}")
    print("  (shared 2-core host under load from other jobs: times and the CPU factor vary by +-30 %; "
          "CPU seconds are the process's own)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
