"""Retry policy for the MQTT connection: capped exponential back-off with full jitter.

    backoff = Backoff(base_ms=500, cap_ms=30000)
    while True:
        try:
            client.poll(1000)
        except OSError:                   # MQTTError included
            connect_with_backoff(client, attempts=8, backoff=backoff)   # raises after 8 failures

Each wait is random in [0, min(cap, base * 2**n)] (n = failures so far), so a fleet that lost its
broker at the same moment does not come back in lock-step (umqtt.robust retries every 2 s). The
first attempt waits too (up to base_ms) for the same reason. Randomness comes from os.urandom,
the hardware RNG on the ESP32, never from an unseeded PRNG.
"""

try:
    from os import urandom
except ImportError:  # a port without os.urandom
    urandom = None

try:
    from time import sleep_ms as _sleep_ms
except ImportError:  # CPython
    from time import sleep as _sleep

    def _sleep_ms(ms):
        _sleep(ms / 1000)


from .errors import MQTTError, permanent


# A uniform random integer in [0, hi] (32 random bits scaled: bias below hi / 2**32).
def _uniform(hi):
    if urandom is not None:
        r = int.from_bytes(urandom(4), "big")
    else:
        from random import getrandbits

        r = getrandbits(32)
    return (r * (hi + 1)) >> 32


class Backoff:
    def __init__(self, base_ms=500, cap_ms=30000):
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self._n = 0  # failures since the last reset()

    # The next wait in ms: random in [0, min(cap_ms, base_ms * 2**n)], then n += 1.
    def next_ms(self):
        hi = self.base_ms << self._n
        if hi >= self.cap_ms:
            hi = self.cap_ms  # n stops growing here: no huge integers after many failures
        else:
            self._n += 1
        return _uniform(hi)

    def reset(self):
        self._n = 0


# client.reconnect() (connect + resubscribe) up to `attempts` times, sleeping backoff.next_ms()
# before each; returns session_present. Raises the last error, or at once a refusal that
# retrying cannot fix (bad credentials, identifier rejected, protocol version, not authorized).
def connect_with_backoff(client, attempts, backoff=None, sleep_ms=None):
    backoff = backoff or Backoff()
    sleep_ms = sleep_ms or _sleep_ms
    err = None
    for _ in range(attempts):
        sleep_ms(backoff.next_ms())
        try:
            present = client.reconnect()
        except MQTTError as e:
            if permanent(e.code):
                raise
            err = e
            continue
        except OSError as e:
            err = e
            continue
        backoff.reset()
        return present
    raise err if err is not None else ValueError("attempts")
