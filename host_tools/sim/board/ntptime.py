"""ntptime as the ESP32 port freezes it (micropython-lib micropython/net/ntptime).

The same API: `host` and `timeout` are module attributes firmware may change
(`ntptime.host = "..."`), `time()` asks `host` on UDP port 123 (a 48-byte SNTP client
request, RFC 4330; the transmit timestamp's seconds at bytes 40..43; values before 2024
are taken as NTP era 1) and returns seconds in the port's epoch, found by `gmtime(0)[0]`;
`settime()` sets `machine.RTC()` to that time in UTC.

One bench rule: an unprivileged test bench cannot bind UDP port 123, so on the virtual
board port 123 is the bench's NTP port, FOTA_SIM_NTP_PORT (the supervisor sets it from the
board's config.json "ntp_port" or BoardRun.clock.ntp_port); without it, port 123.
"""

import socket
import struct
from time import gmtime

import _simbus

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_NTP_PORT = const(123)
_QUERY_HEAD = const(0x23)  # LI 0, version 4, mode 3 (client)
_MIN_NTP = const(3913056000)  # 2024-01-01 in NTP seconds: smaller values wrapped (2036)
_NTP_AT_2000 = const(3155673600)  # seconds from 1900-01-01 to 2000-01-01
_NTP_AT_1970 = const(2208988800)  # seconds from 1900-01-01 to 1970-01-01

host = "pool.ntp.org"
timeout = 1


def time():
    query = bytearray(48)
    query[0] = _QUERY_HEAD
    addr = socket.getaddrinfo(host, _simbus.env_int("FOTA_SIM_NTP_PORT", _NTP_PORT))[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(query, addr)
        msg = s.recv(48)
    finally:
        s.close()
    val = struct.unpack("!I", msg[40:44])[0]
    if val < _MIN_NTP:
        val += 0x100000000
    year = gmtime(0)[0]
    if year == 2000:
        return val - _NTP_AT_2000
    if year == 1970:
        return val - _NTP_AT_1970
    raise Exception("Unsupported epoch: {}".format(year))  # noqa: TRY002  the frozen module's own error


# There are no time zones: the RTC is set in UTC.
def settime():
    t = time()
    import machine

    tm = gmtime(t)
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))
