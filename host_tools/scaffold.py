"""`fota init APPDIR`: the application directory a board runs beside the agent.

    written = init_app(Path("app"), version="1.0.0")   # app/app.py; refuses to overwrite

app.py is what `main.py` (written by `fota provision`) runs: `import app; from fota import device;
device.run(app)`. The agent reports `VERSION` and calls `self_test()` on the first boot of a new
version: True commits it, False or an exception rolls it back.
"""

from __future__ import annotations

from pathlib import Path

from host_tools.errors import FotaError

APP_PY = '''"""The application: frozen into the firmware beside the fota agent (fota build --app DIR).

On the board, main.py (written by fota provision) runs:  import app; from fota import device; device.run(app)
"""

VERSION = {version!r}  # what the board reports; fota build stamps it into the image, fota sign checks it


def self_test():
    """Runs on the first boot of a new version, before it is committed.

    Return True when this board works (sensors answer, the network is up): the update is committed.
    False, an exception or a reset before it returns rolls the board back to the previous version.
    """
    return True
'''

STOCK_APP_PY = '''"""The application of a board on stock MicroPython firmware (the fota agent installed with mpremote mip).

On the board, main.py (written by fota provision) runs:  import app; from fota import device; device.run(app)
The firmware is MicroPython's own app image, so the version is the running image's (esp_app_desc_t).
"""


def _image_version():
    import esp32

    buf = bytearray(4096)
    esp32.Partition(esp32.Partition.RUNNING).readblocks(0, buf)
    return bytes(buf[0x30:0x50]).split(b"\\0")[0].decode() or "0"  # esp_app_desc_t.version at 0x20 + 16


VERSION = _image_version()


def self_test():
    """True when this board works on the new firmware: commit; False rolls back."""
    return True
'''


def init_app(app_dir: Path, *, version: str = "1.0.0", stock: bool = False) -> list[Path]:
    """Write app_dir/app.py (never over an existing one); the files written."""
    target = app_dir / "app.py"
    if target.exists():
        raise FotaError(f"{target} exists already", hint="fota init never overwrites; edit it, or choose another directory")
    app_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(STOCK_APP_PY if stock else APP_PY.format(version=version))
    return [target]
