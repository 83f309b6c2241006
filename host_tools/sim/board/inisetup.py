"""inisetup for the virtual board: the first boot makes the filesystem.

As the ESP32 port's frozen `inisetup` (v1.28) does when `_boot` cannot mount
the vfs partition: block 0 still erased -> "Performing initial setup", mkfs
LittleFS v2 (FAT for an "ffat" partition), mount it as `/`, write the default
`boot.py`. Block 0 holding anything else -> the filesystem is corrupted: say so
every 3 s until Ctrl-C (which works here; `_boot` itself is not interruptible).
"""

import vfs
from flashbdev import bdev

_BOOT_PY = """\
# This file is executed on every boot (including wake-boot from deepsleep)
#import esp
#esp.osdebug(None)
#import webrepl
#webrepl.start()
"""

_CORRUPTED = """\
The filesystem appears to be corrupted. If you had important data there, you
may want to make a flash snapshot to try to recover it. Otherwise, perform
factory reprogramming of MicroPython firmware (completely erase flash, followed
by firmware programming).
"""


def check_bootsec():
    buf = bytearray(bdev.ioctl(5, 0))  # 5: block size
    bdev.readblocks(0, buf)
    for b in buf:
        if b != 0xFF:
            fs_corrupted()
    return True


def fs_corrupted():
    import micropython
    import time

    micropython.kbd_intr(3)
    while True:
        print(_CORRUPTED)
        time.sleep(3)


def setup():
    check_bootsec()
    print("Performing initial setup")
    if bdev.info()[4] == "vfs":
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
    else:
        vfs.VfsFat.mkfs(bdev)
        fs = vfs.VfsFat(bdev)
    vfs.mount(fs, "/")
    with open("boot.py", "w") as f:
        f.write(_BOOT_PY)
    return fs
