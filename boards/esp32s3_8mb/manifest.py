# Freeze manifest (MicroPython tools/manifestfile.py syntax; not a module of the firmware).
# The port's usual frozen modules, then fota (the one device package) from the repository's firmware/.
# $(BOARD_DIR) is this directory as given to the build (make -C ports/esp32 BOARD_DIR=...), so the
# path holds wherever the MicroPython checkout is; keep the board inside this repository.
# ruff: noqa: F821  (include/package are provided by manifestfile.py)

include("$(PORT_DIR)/boards/manifest.py")

package("fota", base_path="$(BOARD_DIR)/../../firmware")
