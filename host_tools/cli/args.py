"""Argument types shared by the command modules: checked by argparse, so a bad value is a usage error (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path


def output_file(value: str) -> Path:
    """A file to write: its directory has to exist (nothing is built before that is known)."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {path.parent} does not exist (create it first)")
    return path


def non_negative_int(value: str) -> int:
    """An integer >= 0 (a sequence number, a count)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; it must be 0 or more")
    return number


def positive_int(value: str) -> int:
    """An integer >= 1 (a chunk size, a port)."""
    number = non_negative_int(value)
    if number == 0:
        raise argparse.ArgumentTypeError("0 is not allowed; it must be 1 or more")
    return number


def duration(value: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `12h` or `7d` (an age such as --stale-after)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    scale = units.get(text[-1:], None)
    try:
        number = float(text[:-1] if scale else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration (e.g. 90s, 30m, 12h, 7d)") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive duration")
    return number * (scale or 1)
