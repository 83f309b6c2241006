"""machine for the virtual board: reset, reset_cause, unique_id, WDT, RTC, deep sleep, Pin, ADC.

A hard reset, a watchdog expiry or a deep sleep ends this process; the
supervisor then runs the emulated bootloader (deep-sleep wakes skip its
rollback step, as CONFIG_BOOTLOADER_SKIP_VALIDATE_IN_DEEP_SLEEP does).

The analog world: every ADC1 pin (GPIO 32-39) has a TMP36-shaped temperature sensor on it
(500 mV + 10 mV/degC) in a room near 21 degC that drifts +-1.5 degC over ten minutes of wall time,
offset by up to 1 degC per board (its unique id), with a few mV of noise. A board whose
config.json says "sensor": "unplugged" has lost its sensor: the inputs sit at VDD (full scale).
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
_ADC1_PINS = (32, 33, 34, 35, 36, 37, 38, 39)
_ADC_FULL_UV = (950000, 1250000, 1750000, 2450000)  # ESP32 ADC input range by attenuation (ESP-IDF adc docs)
_ROOM_UV = const(710000)  # 21 degC at 10 mV/degC over 500 mV


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


class Pin:
    """A GPIO by number (ports/esp32/machine_pin.c constants); level only, no IRQs."""

    IN = const(1)
    OUT = const(3)
    OPEN_DRAIN = const(7)
    PULL_UP = const(2)
    PULL_DOWN = const(1)

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        if not 0 <= id <= 39:
            raise ValueError("invalid pin")
        self._id = id
        self._level = value or 0

    def value(self, v=None):
        if v is None:
            return self._level
        self._level = 1 if v else 0

    def __repr__(self):
        return "Pin(%d)" % self._id


class ADC:
    """ADC1 on an ESP32 (ports/esp32/machine_adc.c): ADC(Pin(n), atten=...), read_u16(), read_uv(), read()."""

    ATTN_0DB = const(0)
    ATTN_2_5DB = const(1)
    ATTN_6DB = const(2)
    ATTN_11DB = const(3)

    def __init__(self, pin, *, atten=0):
        if not isinstance(pin, Pin) or pin._id not in _ADC1_PINS:
            raise ValueError("invalid pin")
        self._pin = pin
        self._atten = atten

    def atten(self, atten):
        self._atten = atten

    def read_uv(self):
        full = _ADC_FULL_UV[self._atten]
        if _simbus.env_text("FOTA_SIM_SENSOR") == "unplugged":
            return full
        t = time.time() % 600  # a triangle over ten minutes: +-15 mV (+-1.5 degC)
        uv = _ROOM_UV + (abs(t - 300) - 150) * 100 + unique_id()[-1] * 40 + (time.ticks_us() % 21 - 10) * 100
        return uv if uv < full else full

    def read_u16(self):
        return self.read_uv() * 65535 // _ADC_FULL_UV[self._atten]

    def read(self):
        return self.read_u16() >> 4
