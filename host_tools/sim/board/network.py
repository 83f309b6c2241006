"""network for the virtual board: a WLAN station whose link the test bench controls.

The radio is the supervisor's: `isconnected()` is true only while the station
was asked to connect and the bench's link is up, so a test can take Wi-Fi down
under running firmware. Sockets themselves use the host's loopback.
"""

import _simbus

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


STA_IF = const(0)
AP_IF = const(1)
# ports/esp32/network_wlan.c status codes
STAT_IDLE = const(1000)
STAT_CONNECTING = const(1001)
STAT_GOT_IP = const(1010)
STAT_BEACON_TIMEOUT = const(200)
STAT_NO_AP_FOUND = const(201)
STAT_WRONG_PASSWORD = const(202)
STAT_ASSOC_FAIL = const(203)
STAT_HANDSHAKE_TIMEOUT = const(204)
PM_NONE = 0
PM_PERFORMANCE = 1
PM_POWERSAVE = 2

_hostname = "mpy-esp32"


def hostname(name=None):
    global _hostname
    if name is None:
        return _hostname
    _hostname = name


def _link_up():
    return _simbus.bus().call(_simbus.OP_LINK) == 1


class WLAN:
    PM_NONE = 0  # as network.PM_NONE (ports/esp32/network_wlan.c exposes both)
    PM_PERFORMANCE = 1
    PM_POWERSAVE = 2
    _state = {}

    def __init__(self, interface_id=STA_IF):
        self._if = interface_id
        st = WLAN._state.setdefault(interface_id, {"active": False, "want": False, "pm": PM_PERFORMANCE})
        self._st = st

    def active(self, is_active=None):
        if is_active is None:
            return self._st["active"]
        self._st["active"] = bool(is_active)
        if not is_active:
            self._st["want"] = False

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self._st["active"]:
            raise OSError("Wifi Not Started")
        self._st["want"] = True

    def disconnect(self):
        self._st["want"] = False

    def isconnected(self):
        return self._st["active"] and self._st["want"] and _link_up()

    def status(self, param=None):
        if param == "rssi":
            if not self.isconnected():
                raise OSError("STA must be connected")
            return -55
        if param is not None:
            raise ValueError("unknown status param")
        if not self._st["want"]:
            return STAT_IDLE
        return STAT_GOT_IP if _link_up() else STAT_NO_AP_FOUND

    def ifconfig(self, *args):
        if self.isconnected():
            return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *args, **kwargs):
        if kwargs:
            if "pm" in kwargs:
                self._st["pm"] = kwargs["pm"]
            return None
        if args and args[0] == "mac":
            return b"\x24\x0a\xc4" + bytes(3)
        if args and args[0] == "pm":
            return self._st["pm"]
        raise ValueError("unknown config param")

    def scan(self):
        return [(b"fota-bench", b"\x24\x0a\xc4\x00\x00\x01", 6, -55, 3, False)] if _link_up() else []
