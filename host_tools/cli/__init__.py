"""The `fota` command: a thin layer over the host_tools library.

Each command module adds its subcommands with `register(subparsers)`; every
handler receives the parsed arguments and returns an exit code. Library errors
(`FotaError`), files that cannot be read or written (`OSError`) and bad arguments
become one line, a hint and an exit code here, in one place (the codes:
host_tools/errors.py, README "Exit codes"). FOTA_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from host_tools.errors import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE, FotaError

COMMAND_MODULES = ("host_tools.cli.sim", "host_tools.cli.init")
OPTIONAL_COMMAND_MODULES = ("host_tools.cli.keys", "host_tools.cli.package", "host_tools.cli.server", "host_tools.cli.board", "host_tools.cli.campaign",
                            "host_tools.cli.gateway", "host_tools.cli.identity")


class Parser(argparse.ArgumentParser):
    """argparse with fota's error shape: one line, a hint, exit code 2 (subparsers inherit the class)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message}\nhint: {self.prog} --help", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fota", description="Signed OTA updates for ESP32 fleets running MicroPython.")
    parser.add_argument("--home", help="data directory (default: $FOTA_HOME or ~/.fota)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print fota's version and exit")
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fota")
    except PackageNotFoundError:
        return "(not installed)"


def as_fota_error(exc: OSError) -> FotaError:
    """A file or socket error as the one-line error the CLI prints (the filename, the reason, a hint)."""
    what = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError):
        parent = os.path.dirname(os.fspath(exc.filename or "")) or "."
        hint = f"directory {parent} does not exist" if not os.path.isdir(parent) else "check the path"
        return FotaError(f"{what}{reason}", hint=hint, exit_code=EXIT_NOT_FOUND)
    if exc.errno == errno.EADDRINUSE:
        return FotaError(f"{what}{reason}", hint="another process listens on that port: stop it or choose another port",
                         exit_code=EXIT_UNAVAILABLE)
    if isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError):
        return FotaError(f"{what}{reason}", hint="check the path and its permissions")
    return FotaError(f"{what}{reason}", exit_code=EXIT_ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (FotaError, OSError) as exc:
        if os.environ.get("FOTA_DEBUG"):
            raise
        error = exc if isinstance(exc, FotaError) else as_fota_error(exc)
        print(f"fota: error: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"hint: {error.hint}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("fota: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
