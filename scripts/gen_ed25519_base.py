"""Write firmware/fota/check/ed25519_base.py: Ed25519's fixed-base tables as bytes constants.

The tables of B and 2^128 B (odd multiples 1B .. 31B, affine, packed as y + x, y - x, 2dxy in
96-byte entries) are the same on every device, so they are computed here, once, by the firmware's
own `_fixed_table` under CPython, and frozen: a bytes literal in a frozen module is read in place
from flash on a chip (ROMFS or frozen .mpy), so it takes no heap; built on the device they took
3 KiB of heap and a transient that a fragmented 64 KiB heap could not give at the first offer.
tests/test_ed25519.py checks that the file is what this script writes.

    .venv/bin/python scripts/gen_ed25519_base.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "firmware" / "fota" / "check" / "ed25519_base.py"

HEADER = '''"""Ed25519's fixed-base tables (written by scripts/gen_ed25519_base.py; do not edit).

B and 2^128 B (RFC 8032 section 5.1's base point): their odd multiples 1, 3, ..., 31 as affine points
packed in 96-byte entries (y + x, y - x, 2dxy; 32 bytes each, little-endian), as ed25519._fixed_table
makes them. Constants in a frozen module stay in flash on a chip: no heap.
"""

'''


def render() -> str:
    sys.path.insert(0, str(ROOT / "firmware"))
    from fota.check import ed25519

    n = 1 << (ed25519._W_B - 2)
    b = ed25519._decode(ed25519._BY.to_bytes(32, "little"))
    tb = bytes(ed25519._fixed_table(b, n))
    for _ in range(ed25519._HALF):
        b = ed25519._add(b, ed25519._cached(b))
    tb128 = bytes(ed25519._fixed_table(b, n))
    lines = [HEADER]
    for name, table in (("TABLE_B", tb), ("TABLE_B128", tb128)):
        lines.append(f"{name} = (\n")
        for i in range(0, len(table), 24):
            escaped = "".join("\\x%02x" % c for c in table[i : i + 24])
            lines.append(f'    b"{escaped}"\n')
        lines.append(")\n")
    return "".join(lines)


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
