"""Modules the virtual board puts on MicroPython's path: esp32, machine, network.

They run under the micropython binary (and espidf.py also under CPython). The
board process talks to its supervisor over an inherited socket (`_simbus`).
"""
