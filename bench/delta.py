"""Delta updates: bytes over the air for raw, zlib and delta, the device's heap and time to patch.

Two pairs of sim images (firmware/ frozen, plus code-like application modules): an app-only
change (app.py edited) and a change of several frozen modules (three of twelve rewritten).
For each: the payload of a raw, a zlib and a delta package, beside the patch the libraries
make for the same pair (bsdiff4's BSDIFF40, detools' sequential patch with lzma and heatshrink
when detools is installed). Then on a virtual board under micropython with -X heapsize=64k:
the delta applied from the running slot (policy download-only, so no reboot) against a raw copy
of the same image (writeblocks only) at host speed, and the live peak heap above the agent's
baseline (gc.collect per chunk). Ratios are from this one run; nothing is asserted.

    .venv/bin/python bench/delta.py [--modules 24] [--changed 3]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import bsdiff4  # noqa: E402
from agent import RAW_MAIN  # noqa: E402  (bench/agent.py)

from host_tools.image.build import BuildSpec, build_image  # noqa: E402
from host_tools.image.delta import make_records  # noqa: E402
from host_tools.sim.runtime import BoardRun  # noqa: E402
from simkit import APP_TEMPLATE, fw_package, new_board, session_signer  # noqa: E402


def module_source(index: int, revision: int, rng: random.Random) -> str:
    """A code-like module: functions with constants, strings and loops (revision changes a few)."""
    lines = [f"# module {index}"]
    for f in range(40):
        k = rng.randrange(1000) + (revision * 7 if f % 9 == 0 else 0)
        lines += [f"def f{index}_{f}(x, y={k}):",
                  f"    s = 'm{index}f{f}-{k}'",
                  f"    for i in range({k % 17 + 2}):",
                  f"        x = (x * {k % 31 + 3} + i) ^ y"]
        if revision and f % 4 == 0:  # a rewritten function: a new statement and a new string
            lines += [f"        if x > {k * 13}:", f"            s += 'rev{revision}-{f}'"]
        lines += ["    return s, x", ""]
    return "\n".join(lines)


def image(version: str, modules: int, changed: int, app_rev: int) -> bytes:
    mods = [("app.py", APP_TEMPLATE.format(version=version, behaviour="ok") + f"\nREV = {app_rev}\n")]
    for i in range(modules):
        mods.append((f"mod{i}.py", module_source(i, 1 if i < changed else 0, random.Random(i))))
    spec = BuildSpec(board="sim", version=version, extra_modules=tuple(mods), trusted_keys=(session_signer().public_key,))
    return build_image(spec)


def library_patches(base: bytes, new: bytes) -> dict[str, int]:
    sizes = {"bsdiff4 (BSDIFF40, bz2)": len(bsdiff4.diff(base, new))}
    records = make_records(base, new)
    sizes["our records, uncompressed"] = len(records)
    sizes["our records, zlib -9 wbits 15"] = len(zlib.compress(records, 9))
    try:
        import detools
    except ImportError:
        return sizes
    for comp in ("lzma", "heatshrink"):
        out = io.BytesIO()
        detools.create_patch(io.BytesIO(base), io.BytesIO(new), out, compression=comp, patch_type="sequential")
        sizes[f"detools sequential {comp}"] = len(out.getvalue())
    return sizes


# The agent on the board: the offer (signature, base digest) and the chunks (inflate, patch,
# flash, digest from flash) timed apart; peak heap sampled after every chunk.
AGENT_MAIN = r"""
import app, gc, time, json
from fota.agent import Agent, Identity
from fota.link.source import FileSource
import trusted_keys
LIVE = False
agent = Agent(Identity("sim", 0, "A", app.VERSION), trusted_keys.KEYS, policy="download-only")
src = FileSource("update.fota")
gc.collect()
base = gc.mem_alloc()
t0 = time.ticks_us()
agent.offer(src.offer(), src.chunk)
t1 = time.ticks_us()
mv = memoryview(src.buf)
total = agent.manifest.encoded_size
peak = 0
while True:
    offsets = agent.wanted(8)
    if not offsets:
        break
    for offset in offsets:
        n = src.readinto(offset, mv[: min(src.chunk, total - offset)])
        agent.on_chunk(offset, mv[:n])
        if LIVE:
            gc.collect()
        peak = max(peak, gc.mem_alloc())
src.close()
agent.finish()
t2 = time.ticks_us()
print("RESULT", json.dumps({"offer_us": time.ticks_diff(t1, t0), "us": time.ticks_diff(t2, t1), "bytes": agent.manifest.image_size,
                            "moved": src.sent, "peak": peak - base}))
"""


def measure(home: Path, name: str, main: str, base: bytes, package: bytes, heapsize: str | None) -> dict:
    board = new_board(home, name, image=base, files={"main.py": main})
    board.write_file("update.fota", package)
    with BoardRun(board, repl_pty=False, heapsize=heapsize) as run:
        run.wait_for("RESULT", timeout=300)
        run.wait_idle(timeout=30)
    found = re.search(r"RESULT (.*)", run.transcript())
    if not found:
        raise SystemExit(f"{name}: no result\n{run.transcript()}")
    return json.loads(found.group(1))


def bench_pair(home: Path, label: str, base: bytes, new: bytes) -> None:
    pkgs = {enc: fw_package(new, version="2.0.0", sequence=2, encoding=enc) for enc in ("raw", "zlib")}
    from host_tools.image.package import Manifest, make_package, parse_package

    m = Manifest(sequence=2, version="2.0.0", board="sim", chip_id=0, hw_revs=("A",), image_size=0, image_sha256=b"")
    pkgs["delta"] = make_package(new, m, session_signer(), encoding="delta", base=base).to_bytes()
    payload = {k: len(parse_package(v).payload) for k, v in pkgs.items()}
    raw = payload["raw"]
    print(f"[{label}] image {len(new)} bytes (base {len(base)})")
    for k in ("raw", "zlib", "delta"):
        print(f"  over the air, {k:<5} {payload[k]:8d} B  {100 * payload[k] / raw:6.2f} % of raw")
    libs = library_patches(base, new)
    best = min(v for k, v in libs.items() if not k.startswith("our"))
    for k, v in libs.items():
        print(f"  library patch: {k:<32} {v:8d} B")
    print(f"  delta payload / best library patch: {payload['delta'] / best:.2f} (target <= 1.2)")
    fast = measure(home, f"{label}-raw", RAW_MAIN, base, pkgs["raw"], None)
    dl = measure(home, f"{label}-delta", AGENT_MAIN, base, pkgs["delta"], "64k")
    live = measure(home, f"{label}-live", AGENT_MAIN.replace("LIVE = False", "LIVE = True"), base, pkgs["delta"], "64k")
    print(f"  raw copy (writeblocks only) {fast['us'] / 1e3:7.1f} ms; delta chunks -> inflate -> patch -> flash -> digest "
          f"from flash {dl['us'] / 1e3:7.1f} ms: {dl['us'] / fast['us']:.1f}x the raw copy (host speed, -X heapsize=64k); "
          f"offer (Ed25519 + base digest) {dl['offer_us'] / 1e3:.1f} ms")
    print(f"  live peak heap above the agent's baseline while patching: {live['peak']} B (whole update in a 64 KiB heap)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=24, help="application modules frozen beside firmware/")
    parser.add_argument("--changed", type=int, default=3, help="modules rewritten in the second pair")
    args = parser.parse_args()
    v1 = image("1.0.0", args.modules, 0, 1)
    app_only = image("2.0.0", args.modules, 0, 2)
    several = image("2.0.0", args.modules, args.changed, 2)
    with tempfile.TemporaryDirectory() as tmp:
        bench_pair(Path(tmp), "app-only change", v1, app_only)
        bench_pair(Path(tmp), f"{args.changed} of {args.modules} modules changed", v1, several)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
