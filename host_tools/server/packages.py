"""The server's package store: packages by digest, chunks read on demand.

    store = PackageStore(Path("data/packages"))
    pid, package = store.add(Path("app.fota").read_bytes())
    data = store.chunk(pid, offset, 4096)    # from the payload mapped once (mmap), no file open per chunk
"""

from __future__ import annotations

import hashlib
import mmap
import threading
from pathlib import Path

from host_tools.image.keys import PublicKey
from host_tools.image.package import (
    ENCODING_DELTA,
    HEADER_SIZE,
    SIGNATURE_SIZE,
    Package,
    PackageError,
    VerifyError,
    decode_payload,
    parse_package,
    verify_package,
)


def check_package(package: Package, trusted: list[PublicKey] | None = None) -> None:
    """Refuse (PackageError) a package that is truncated, padded, or whose digests do not match its manifest;
    with `trusted` keys, also one not signed by any of them (or whose image is not a valid app image)."""
    if trusted:
        report = verify_package(package, trusted)
        if not report.ok:
            raise PackageError("package refused: " + "; ".join(report.problems))
        return
    m = package.manifest
    if len(package.payload) != m.encoded_size:
        raise PackageError(f"package refused: payload is {len(package.payload)} bytes; the manifest says {m.encoded_size}")
    if m.encoded_sha256 is not None and hashlib.sha256(package.payload).digest() != m.encoded_sha256:
        raise PackageError("package refused: encoded payload SHA-256 does not match the manifest")
    if m.encoding == ENCODING_DELTA:
        return  # the image is rebuilt on the device from its running image; the server has no base to try
    try:
        image = decode_payload(package)
    except VerifyError as exc:
        raise PackageError(f"package refused: {exc}") from None
    if len(image) != m.image_size or hashlib.sha256(image).digest() != m.image_sha256:
        raise PackageError("package refused: image size or SHA-256 does not match the manifest")


class PackageStore:
    def __init__(self, root: Path, *, trusted: list[PublicKey] | None = None) -> None:
        self.root = root
        self.trusted = trusted or []  # keys a package must be signed by (empty: structure and digests only)
        root.mkdir(parents=True, exist_ok=True)
        self._meta: dict[str, tuple[Package, int]] = {}
        self._payloads: dict[str, memoryview] = {}  # package id -> its payload, mapped (a file never changes: named by digest)
        self._lock = threading.Lock()

    def add(self, data: bytes) -> tuple[str, Package]:
        """Keep a package (parsed and checked first, so a broken file is refused) and return its id."""
        package = parse_package(data)
        check_package(package, self.trusted)
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

    def payload(self, pid: str) -> memoryview:
        """The package's encoded payload, read-only, mapped at the first call and kept (the hot path of serving)."""
        view = self._payloads.get(pid)
        if view is not None:
            return view
        package, start = self.load(pid)
        with self._lock:
            if pid not in self._payloads:
                with open(self.path(pid), "rb") as f:
                    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                self._payloads[pid] = memoryview(mapped)[start : start + package.manifest.encoded_size]
            return self._payloads[pid]

    def chunk(self, pid: str, offset: int, length: int) -> bytes:
        view = self.payload(pid)
        if offset < 0 or offset >= len(view):
            return b""
        return bytes(view[offset : offset + length])
