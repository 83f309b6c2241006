"""The server's package store: packages by digest, chunks read on demand.

    store = PackageStore(Path("data/packages"))
    pid, package = store.add(Path("app.fota").read_bytes())
    data = store.chunk(pid, offset, 4096)
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from host_tools.image.package import HEADER_SIZE, SIGNATURE_SIZE, Package, PackageError, parse_package


class PackageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._meta: dict[str, tuple[Package, int]] = {}
        self._lock = threading.Lock()

    def add(self, data: bytes) -> tuple[str, Package]:
        """Keep a package (parsed first, so a broken file is refused) and return its id."""
        package = parse_package(data)
        pid = hashlib.sha256(data).hexdigest()[:16]
        path = self.root / f"{pid}.fota"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return pid, package

    def path(self, pid: str) -> Path:
        return self.root / f"{pid}.fota"

    def load(self, pid: str) -> tuple[Package, int]:
        """The parsed package (payload not kept) and the file offset of its payload."""
        with self._lock:
            if pid not in self._meta:
                path = self.path(pid)
                if not path.exists():
                    raise PackageError(f"no package {pid} in the store")
                with open(path, "rb") as f:
                    head = f.read(HEADER_SIZE + 1024 + SIGNATURE_SIZE)
                mlen = int.from_bytes(head[8:12], "little")
                package = parse_package(head[: HEADER_SIZE + mlen + SIGNATURE_SIZE])
                self._meta[pid] = (package, HEADER_SIZE + mlen + SIGNATURE_SIZE)
            return self._meta[pid]

    def offer_blob(self, pid: str) -> bytes:
        package, _ = self.load(pid)
        return package.header + package.manifest_bytes + package.signature

    def chunk(self, pid: str, offset: int, length: int) -> bytes:
        package, start = self.load(pid)
        size = package.manifest.encoded_size
        if offset < 0 or offset >= size:
            return b""
        with open(self.path(pid), "rb") as f:
            f.seek(start + offset)
            return f.read(min(length, size - offset))
