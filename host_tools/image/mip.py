"""The device code (firmware/fota/) as a MicroPython mip package, for boards on stock firmware.

    pkg = package_json(resources.path("firmware"), version="0.1.0")   # {"urls": [[dest, src], ...], ...}
    text = render(pkg)                                                # firmware/package.json (make mip)
    out = build_mpy_package(resources.path("firmware"), Path("build/mip"), version="0.1.0")

firmware/package.json lists the sources: `mpremote mip install firmware/package.json` (paths are
relative to the file, so the wheel's host_tools/_data/firmware/ works too), a github:OWNER/REPO/firmware/
package.json or an http(s) URL of it. `build_mpy_package` writes the same package precompiled
(bytecode .mpy, no native code, so one file set loads on an ESP32 and on the Unix port): a board then
imports the agent without compiling ~200 KB of source in its own heap, which is what a 128 KB heap
needs. Format: micropython-lib mip, {"urls": [[dest, src], ...], "deps": [...], "version": "..."}.
"""

from __future__ import annotations

import json
from pathlib import Path

from host_tools.image.freeze import compile_source

PACKAGE = "fota"  # the firmware's one top-level package, installed as <target>/fota/


def sources(firmware: Path) -> list[str]:
    """Every module of the device package, as paths relative to firmware/, sorted."""
    root = firmware / PACKAGE
    return sorted(p.relative_to(firmware).as_posix() for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def package_json(firmware: Path, version: str) -> dict:
    """The source package: dest == src, both relative to firmware/."""
    return {"urls": [[f, f] for f in sources(firmware)], "deps": [], "version": version}


def render(package: dict) -> str:
    """A package.json's text: one url pair per line, so a new module is a one-line diff."""
    urls = ",\n".join(f"    {json.dumps(pair)}" for pair in package["urls"])
    return (f'{{\n  "urls": [\n{urls}\n  ],\n  "deps": {json.dumps(package["deps"])},\n'
            f'  "version": {json.dumps(package["version"])}\n}}\n')


def build_mpy_package(firmware: Path, out: Path, version: str) -> Path:
    """Compile every module to out/fota/**.mpy and write out/package.json; returns that file."""
    urls = []
    for name in sources(firmware):
        mpy = name[:-3] + ".mpy"
        target = out / mpy
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(compile_source((firmware / name).read_bytes(), name, march=None))
        urls.append([mpy, mpy])
    package_file = out / "package.json"
    package_file.write_text(render({"urls": urls, "deps": [], "version": version}))
    return package_file
