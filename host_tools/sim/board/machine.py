"""machine for the virtual board: reset, reset_cause, unique_id, WDT, RTC, deep sleep.

A hard reset, a watchdog expiry or a deep sleep ends this process; the
supervisor then runs the emulated bootloader (deep-sleep wakes skip its
rollback step, as CONFIG_BOOTLOADER_SKIP_VALIDATE_IN_DEEP_SLEEP does).
"""

import time

import _simbus
from _simclock import RTC  # noqa: F401  the chip's clock: epoch 2000, unset at power-on

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


# ports/esp32/modmachine.c reset causes
PWRON_RESET = const(1)
HARD_RESET = const(2)
WDT_RESET = const(3)
DEEPSLEEP_RESET = const(4)
SOFT_RESET = const(5)
# wake reasons
PIN_WAKE = const(2)
EXT0_WAKE = const(2)
EXT1_WAKE = const(3)
TIMER_WAKE = const(4)

_CAUSE_HARD = const(HARD_RESET)
_CAUSE_SOFT = const(SOFT_RESET)
_CAUSE_DEEPSLEEP = const(DEEPSLEEP_RESET)


def _halt():
    # The supervisor ends the process; never return to the caller meanwhile.
    while True:
        time.sleep_ms(1000)


def reset():
    _simbus.bus().call(_simbus.OP_RESET, _CAUSE_HARD)
    _halt()


def soft_reset():
    _simbus.bus().call(_simbus.OP_RESET, _CAUSE_SOFT)
    _halt()


def deepsleep(time_ms=0):
    _simbus.bus().call(_simbus.OP_RESET, _CAUSE_DEEPSLEEP, time_ms)
    _halt()


def lightsleep(time_ms=0):
    time.sleep_ms(time_ms)


def idle():
    time.sleep_ms(1)


def reset_cause():
    return _simbus.env_int("FOTA_SIM_RESET_CAUSE", PWRON_RESET)


def wake_reason():
    return TIMER_WAKE if reset_cause() == DEEPSLEEP_RESET else 0


def unique_id():
    hexid = _simbus.env_text("FOTA_SIM_UID", "000000000000")
    return bytes(int(hexid[i : i + 2], 16) for i in range(0, len(hexid), 2))


def freq(hz=None):
    return 160000000


class WDT:
    """The task watchdog: once started it cannot be stopped; a missed feed resets."""

    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        _simbus.bus().call(_simbus.OP_WDT_ARM, timeout)

    def feed(self):
        _simbus.bus().call(_simbus.OP_WDT_FEED)
