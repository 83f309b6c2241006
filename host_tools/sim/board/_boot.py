"""_boot for the virtual board: mount the flash filesystem as `/`, as the ESP32 port's frozen `_boot` does.

Runs first at every boot, before boot.py, with Ctrl-C ignored. A vfs
partition that does not mount goes to `inisetup` (first boot: make the
filesystem and the default boot.py).
"""

import gc
import vfs

from flashbdev import bdev

try:
    if bdev:
        vfs.mount(bdev, "/")
except OSError:
    import inisetup

    inisetup.setup()

gc.collect()
