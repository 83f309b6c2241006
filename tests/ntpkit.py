"""A small SNTP server on loopback for the virtual board's ntptime (RFC 4330, server mode 4).

It answers every 48-byte client request with the time it was told to serve (default: the
host's), so a test can put a board's clock at any Unix time. The board's ntptime sends NTP's
port 123 to this server's port (`run.clock.ntp_port = server.port`).

    with SntpServer(unix_time=lambda: time.time() + 3600) as ntp:
        run.clock.ntp_port = ntp.port
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

NTP_AT_1970 = 2208988800  # seconds from 1900-01-01 to 1970-01-01
PACKET = struct.Struct("!BBbb3I4Q")  # LI/VN/mode, stratum, poll, precision, delay, dispersion, refid, 4 timestamps


def ntp_timestamp(unix: float) -> int:
    seconds = int(unix) + NTP_AT_1970
    fraction = int((unix - int(unix)) * (1 << 32)) & 0xFFFFFFFF
    return ((seconds & 0xFFFFFFFF) << 32) | fraction  # era 0 wraps in 2036, as on the wire


class SntpServer:
    def __init__(self, unix_time: Callable[[], float] = time.time) -> None:
        self.unix_time = unix_time
        self.requests = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sntp", daemon=True)

    def __enter__(self) -> SntpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 48 or data[0] & 7 != 3:  # only client requests
                continue
            self.requests += 1
            now = ntp_timestamp(self.unix_time())
            origin = struct.unpack_from("!Q", data, 40)[0]
            version = (data[0] >> 3) & 7
            reply = PACKET.pack((version << 3) | 4, 1, 6, -20, 0, 0, 0x4C4F434C, now, origin, now, now)  # refid "LOCL"
            self._sock.sendto(reply, addr)
