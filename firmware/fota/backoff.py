"""Capped exponential back-off with full jitter: the retry policy of every link and client.

    backoff = Backoff(base_ms=500, cap_ms=30000)
    sleep_ms(backoff.next_ms())           # after each failure
    backoff.reset()                       # after a success

Each wait is random in [0, min(cap, base * 2**n)] (n = failures so far), so a fleet that lost its
server at the same moment does not come back in lock-step (umqtt.robust retries every 2 s).
Randomness comes from os.urandom, the hardware RNG on the ESP32, never from an unseeded PRNG.
Neutral on purpose: MQTT, CoAP and the update links use it and never import one another.
"""

try:
    from os import urandom
except ImportError:  # a port without os.urandom
    urandom = None


# A uniform random integer in [0, hi] (32 random bits scaled: bias below hi / 2**32).
def _uniform(hi):
    if urandom is not None:
        r = int.from_bytes(urandom(4), "big")
    else:
        from .compat import getrandbits

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
