"""Codes of the MQTT client's failures, and the error that carries them.

    from fota.mqtt.errors import MQTTError, KEEPALIVE
    try:
        client.poll(1000)
    except OSError as e:                  # MQTTError is an OSError: one handler for every connection failure
        log(getattr(e, "code", e.args[0]))
        reconnect()

MQTTError.code (also args[0]) is one of the codes below: 1..5 are the broker's CONNACK
refusals; the client's own start at 200, clear of every errno value (Linux, newlib/lwIP), so a
handler that looks for EAGAIN or ETIMEDOUT in args[0] never mistakes one for them.
"""

from ..compat import const


# MQTT 3.1.1 section 3.2.2.3: CONNACK return codes (the broker refused the connection)
REFUSED_PROTOCOL = const(1)  # unacceptable protocol version
REFUSED_IDENTIFIER = const(2)  # client identifier rejected
REFUSED_UNAVAILABLE = const(3)  # server unavailable
REFUSED_CREDENTIALS = const(4)  # bad user name or password
REFUSED_NOT_AUTHORIZED = const(5)  # not authorized
# The client's own
PROTOCOL_ERROR = const(200)  # malformed or unexpected packet from the broker
TIMEOUT = const(201)  # no CONNACK / SUBACK / PUBACK within the client's timeout_ms
KEEPALIVE = const(202)  # nothing received for 1.5 x keepalive: the connection is dead
SUBSCRIBE_REFUSED = const(203)  # SUBACK return code 0x80 (section 3.9.3)
CONNECTION_CLOSED = const(204)  # the broker closed the connection (EOF)
TLS_VERIFY = const(205)  # the server certificate was not accepted (args[1]: mbedtls' reason)


# Refusals that a retry with the same settings cannot fix: connect_with_backoff gives up on them.
def permanent(code):
    return code == REFUSED_PROTOCOL or code == REFUSED_IDENTIFIER or code == REFUSED_CREDENTIALS or code == REFUSED_NOT_AUTHORIZED


class MQTTError(OSError):
    """A refused connection or a protocol failure; `code` (also args[0]) is one of the codes above.

    An OSError because every one of them means the same to the owner as a socket error: close,
    back off, reconnect. Catch MQTTError first where the code matters (connect_with_backoff does).
    """

    def __init__(self, code, *detail):
        super().__init__(code, *detail)
        self.code = code
