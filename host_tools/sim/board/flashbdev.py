"""flashbdev for the virtual board: the block device `_boot` mounts as `/`.

What the ESP32 port's frozen `flashbdev` gives (ports/esp32/modules, v1.28):
`bdev` is the data partition labelled "vfs" (4096-byte blocks), else one
labelled "ffat" with 512-byte blocks (TinyUF2's layout), else None. Every
block read, program and erase the filesystem does is a flash operation of the
board, so a power cut can tear a file write.
"""

from esp32 import Partition


def _find():
    found = Partition.find(Partition.TYPE_DATA, label="vfs")
    if not found:
        found = Partition.find(Partition.TYPE_DATA, label="ffat", block_size=512)
    return found[0] if found else None


bdev = _find()
