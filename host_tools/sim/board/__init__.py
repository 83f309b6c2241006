"""Modules the virtual board puts on MicroPython's path: esp32, machine, network.

They run under the micropython binary. The ESP-IDF rules they apply (otadata, esp_image_verify)
are product code in host_tools/esp/espidf.py; the supervisor puts a copy of that file on the
board's MICROPYPATH (host_tools.sim.runtime.board_path). The board process talks to its
supervisor over an inherited socket (`_simbus`).
"""
