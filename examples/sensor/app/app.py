"""A sensor that keeps sensing: a TMP36 on GPIO 34, a reading a second, the update service beside it.

Frozen into the firmware with the fota agent (`fota build --app examples/sensor/app`); the board's
main.py (examples/sensor/main.py) starts the service and hands it to run():

    import app
    from fota import device
    app.run(device.start(app))   # device.start runs self_test() first when a new version boots

Each reading goes to <prefix>/<device>/app/reading as {"n": 7, "mv": 712, "c": 21.2}: a counter
(it starts at 0 on every boot, so a gap in it is a lost reading and a restart is a reboot), the
sensor's millivolts and degrees Celsius ("c" is null when the sensor reads out of range).
"""

import asyncio
import json

import machine

from micropython import const

VERSION = "1.0.0"  # what the board reports; fota build stamps it into the image, fota sign checks it

_PIN = const(34)  # ADC1 (ADC2 pins are taken by Wi-Fi)
_PERIOD_MS = const(1000)
_SAMPLES = const(4)  # averaged per reading
_MIN_C = const(-40)  # the TMP36's range: outside it the sensor is unplugged or broken
_MAX_C = const(125)


def _adc():
    return machine.ADC(machine.Pin(_PIN), atten=machine.ADC.ATTN_11DB)


# Millivolts over _SAMPLES samples and degrees Celsius (TMP36: 500 mV at 0 degC, 10 mV per degC), or None out of range.
def read(adc):
    uv = 0
    for _ in range(_SAMPLES):
        uv += adc.read_uv()
    mv = uv // (_SAMPLES * 1000)
    c = (mv - 500) / 10
    return mv, (c if _MIN_C <= c <= _MAX_C else None)


def self_test():
    """On the first boot of a new version: the sensor answers in range (an unplugged one reads full scale)."""
    return read(_adc())[1] is not None


async def _sense(svc, adc):
    n = 0
    while True:
        svc.alive()  # the service feeds the watchdog only while this comes at least every app_timeout_ms
        mv, c = read(adc)
        svc.publish("reading", json.dumps({"n": n, "mv": mv, "c": c}))  # False while offline: the reading is dropped
        n += 1
        await asyncio.sleep_ms(_PERIOD_MS)


def run(svc):
    """The application: the update service as one asyncio task, the sensor as the other. Never returns."""
    asyncio.create_task(svc.task())
    asyncio.run(_sense(svc, _adc()))
