"""The `fota` command: a thin layer over the host_tools library.

Each command module adds its subcommands with `register(subparsers)`; every
handler receives the parsed arguments and returns an exit code. Library errors
(`FotaError`) become a message, a hint and an exit code here, in one place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from host_tools.errors import EXIT_USAGE, FotaError

COMMAND_MODULES = ("host_tools.cli.sim",)
OPTIONAL_COMMAND_MODULES = ("host_tools.cli.keys", "host_tools.cli.package", "host_tools.cli.server", "host_tools.cli.board", "host_tools.cli.campaign",
                            "host_tools.cli.gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fota", description="Signed OTA updates for ESP32 fleets running MicroPython.")
    parser.add_argument("--home", help="data directory (default: $FOTA_HOME or ~/.fota)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for name in OPTIONAL_COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except FotaError as exc:
        print(f"fota: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fota: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
