"""`fota flash`, `fota provision`, `fota console`: a board on USB (or sim:NAME)."""

from __future__ import annotations

import argparse
from pathlib import Path

from host_tools.flashing import flash_image


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flash", help="first USB flash of an app image (esptool), or sim:NAME")
    p.add_argument("image", type=Path)
    p.add_argument("--port", required=True, help="serial port (/dev/ttyUSB0) or sim:NAME")
    p.add_argument("--board", default=None, help="board definition (default: esp32_generic; a sim board knows its own)")
    p.add_argument("--baud", type=int, default=460800)
    p.set_defaults(handler=cmd_flash)


def cmd_flash(args) -> int:
    board = args.board or ("sim" if args.port.startswith("sim:") else "esp32_generic")
    print(flash_image(args.port, args.image, board=board, home=args.home, baud=args.baud))
    return 0
