"""The device firmware's own modules, loaded into the host: one table of facts, never a copy.

The host needs what the firmware decides: the error codes, their names and LwM2M results
(firmware/fota/errors.py), and the manifest checks a device runs before it asks for a chunk
(firmware/fota/check/manifest.py). Both import under CPython by design. This module loads the
firmware package `fota` under the private name `_fota_firmware` (so it never shadows or is shadowed
by another `fota` on the path, and nothing is put on sys.path), with its own submodule search
location so the firmware's relative imports work:

    from host_tools import firmware
    errors = firmware.errors()
    errors.name(errors.ROLLBACK)        # "ROLLBACK"
    manifest = firmware.manifest()      # parse_header, parse_manifest, check_device, Device
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from host_tools import resources
from host_tools.errors import FotaError

FIRMWARE_DIR = resources.path("firmware")  # a checkout's firmware/, or the wheel's copy
PACKAGE = "_fota_firmware"  # the private name of the firmware package `fota` inside the host
ERRORS = "errors"  # firmware/fota/errors.py
MANIFEST = "check.manifest"  # firmware/fota/check/manifest.py


class FirmwareError(FotaError):
    """The firmware sources are not where the host tools expect them."""


@cache
def package(firmware_dir: Path = FIRMWARE_DIR) -> ModuleType:
    """The firmware package `fota` from `firmware_dir`, imported as `_fota_firmware`."""
    root = firmware_dir / "fota"
    if not (root / "__init__.py").exists():
        raise FirmwareError(f"no firmware package at {root}", hint="reinstall fota (the wheel carries firmware/ as host_tools/_data/firmware)")
    spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module  # relative imports inside the package find their parent here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    return module


def load(name: str) -> ModuleType:
    """A firmware module by its name inside `fota` ("errors", "check.manifest")."""
    package()
    return importlib.import_module(f"{PACKAGE}.{name}")


def errors() -> ModuleType:
    """firmware/fota/errors.py: code constants, name(code), lwm2m_result(code), OtaError."""
    return load(ERRORS)


def manifest() -> ModuleType:
    """firmware/fota/check/manifest.py: the device's header, manifest and device checks."""
    return load(MANIFEST)
