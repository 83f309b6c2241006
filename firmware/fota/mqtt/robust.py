"""Reconnecting with back-off (the umqtt.robust idea, kept apart from the protocol in client.py).

    from fota.backoff import Backoff
    from fota.mqtt.robust import connect_with_backoff
    while True:
        try:
            client.poll(1000)
        except OSError:                   # MQTTError included
            connect_with_backoff(client, attempts=8, backoff=backoff)   # raises after 8 failures

The first attempt waits too (up to base_ms), so a fleet does not reconnect in lock-step.
"""

from ..backoff import Backoff
from ..compat import sleep_ms as _sleep_ms
from .errors import MQTTError, permanent


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
