"""Write firmware/package.json (the device code as a mip package) and its precompiled twin.

    .venv/bin/python scripts/make_mip.py                 # firmware/package.json and build/mip/ (`make mip`)
    .venv/bin/python scripts/make_mip.py --check         # exit 1 when firmware/package.json is missing or stale
    .venv/bin/python scripts/make_mip.py --mpy-out DIR   # the precompiled package in DIR instead of build/mip

Then, on a board running MicroPython's own firmware (README "Stock firmware"):
    mpremote mip install --target /lib build/mip/package.json     # .mpy: what a 128 KB heap needs
    mpremote mip install --target /lib firmware/package.json      # sources
The library is host_tools/image/mip.py; tests/test_mip.py keeps the file up to date.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from host_tools.image.mip import build_mpy_package, package_json, render

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
PACKAGE_JSON = FIRMWARE / "package.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when firmware/package.json is stale")
    parser.add_argument("--mpy-out", type=Path, default=ROOT / "build" / "mip", help="where the precompiled package goes")
    args = parser.parse_args(argv)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    text = render(package_json(FIRMWARE, version))
    if args.check:
        if not PACKAGE_JSON.exists() or PACKAGE_JSON.read_text() != text:
            print("firmware/package.json is stale: run make mip", file=sys.stderr)
            return 1
        return 0
    PACKAGE_JSON.write_text(text)
    print(f"wrote {PACKAGE_JSON.relative_to(ROOT)}")
    print(f"wrote {build_mpy_package(FIRMWARE, args.mpy_out, version)} (precompiled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
