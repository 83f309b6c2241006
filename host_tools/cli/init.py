"""`fota init APPDIR`: scaffold the application (app.py with VERSION and self_test)."""

from __future__ import annotations

import argparse
from pathlib import Path

from host_tools.scaffold import init_app


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="make an application directory: app.py with VERSION and self_test()")
    p.add_argument("app_dir", type=Path, metavar="APPDIR", help="directory to create (e.g. app)")
    p.add_argument("--version", default="1.0.0", help="the first version (default: 1.0.0)")
    p.add_argument("--stock", action="store_true",
                   help="for stock MicroPython firmware: the version is the running image's (see README)")
    p.set_defaults(handler=cmd_init)


def cmd_init(args) -> int:
    for path in init_app(args.app_dir, version=args.version, stock=args.stock):
        print(f"wrote {path}")
    print(f"next: fota build --board sim --app {args.app_dir} --trust keys/release.pub -o v1.bin")
    return 0
