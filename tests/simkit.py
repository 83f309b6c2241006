"""Helpers to make virtual boards and images for tests."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from host_tools.freeze import freeze_sources
from host_tools.sim.device import SimDevice
from host_tools.sim.image import build_sim_image


@cache
def app_image(version: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A sim app image whose frozen `app` module knows its version."""
    sources = {"app.py": f"VERSION = {version!r}\n", **dict(extra)}
    return build_sim_image(freeze_sources(sources), version=version)


def new_board(home: Path, name: str, *, image: bytes | None = None, files: dict[str, str] | None = None, **kw) -> SimDevice:
    board = SimDevice.create(name, home, **kw)
    if image is not None:
        board.flash_app(image)
    for fname, text in (files or {}).items():
        board.write_file(fname, text)
    return board
