"""What `fota serve` keeps per data directory: one server at a time (a lock), the same broker port every start.

    lock = DataDirLock.acquire(data_dir)          # UnavailableError if another fota serve holds it
    port = broker_port(data_dir, "127.0.0.1")     # 1883 unless taken or asked otherwise; then remembered
    ...
    lock.release()
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from host_tools.errors import UnavailableError

MQTT_PORT = 1883  # IANA: MQTT
PORTS_FILE = "ports.json"  # in the data directory: {"broker": PORT}
LOCK_FILE = "serve.lock"


class DataDirLock:
    """An exclusive lock on a data directory (flock: released by the kernel when the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UnavailableError(f"another fota serve (pid {holder}) is using {data_dir}",
                                   hint="stop it first, or give this one another --data directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return cls(path, fd)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def broker_port(data_dir: Path, host: str, asked: int | None = None) -> tuple[int, str | None]:
    """The embedded broker's port and a note for the operator (None: nothing to say).

    `asked` (--port) wins (0: a free one). Otherwise the port this data directory used last time, else
    1883; if that is taken, a free one. The choice is remembered in ports.json, so devices provisioned
    against this server find it again after a restart."""
    path = data_dir / PORTS_FILE
    remembered = None
    if path.exists():
        try:
            remembered = int(json.loads(path.read_text()).get("broker"))
        except (ValueError, TypeError, AttributeError):
            remembered = None
    note = None
    if asked is not None:
        port = asked or _free_port(host)
    else:
        wanted = remembered or MQTT_PORT
        if _free(host, wanted):
            port = wanted
        else:
            port = _free_port(host)
            note = f"TCP port {wanted} is taken; the embedded broker is on {port} this time (devices configured for {wanted} will not find it)"
    if asked is None or asked:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"broker": port if note is None else wanted}) + "\n")
        tmp.replace(path)
    return port, note
