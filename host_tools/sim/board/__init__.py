"""Modules the virtual board puts on MicroPython's path: esp32, machine, network.

They run under the micropython binary. The ESP-IDF rules they apply (otadata, esp_image_verify)
are product code in host_tools/esp/espidf.py; the supervisor compiles that file with the board's own modules
into the directory the board boots with (host_tools.sim.frozen.frozen_dir). The board process talks to its
supervisor over an inherited socket (`_simbus`).
"""
