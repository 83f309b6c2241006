"""Where the data the host tools ship with lives: firmware/, boards/, examples/, in a checkout or an installed wheel.

    resources.path("firmware")   # <checkout>/firmware, or <site-packages>/host_tools/_data/firmware

A wheel carries them under host_tools/_data/ (setup.py's build_py copies them there); a checkout
(or an editable install) has them beside host_tools/. This is the one lookup; nothing else guesses.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
INSTALLED = PACKAGE_DIR / "_data"  # in a wheel
CHECKOUT = PACKAGE_DIR.parent  # the repository root


def path(name: str) -> Path:
    """The directory `name` ("firmware", "boards"): the wheel's copy if installed, else the checkout's."""
    installed = INSTALLED / name
    return installed if installed.is_dir() else CHECKOUT / name
