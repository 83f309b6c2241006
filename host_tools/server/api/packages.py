"""Routes: packages (upload with the checks of `fota verify`, list, inspect).

An upload is the package file as the request body (`Content-Type: application/octet-stream`). It is
parsed and verified like `fota verify` does: digests, sizes, the app image inside, and the signature
against the server's trusted keys (`*.pub` in `<data>/trusted/`; with none there, the signer is not
checked here and the devices remain the judges). A package that fails any check is refused with 422
and nothing is stored.
"""

from __future__ import annotations

import asyncio
from pathlib import Path as FsPath

from fastapi import APIRouter, Depends, HTTPException, Path, Request

from host_tools.image.keys import PublicKey
from host_tools.image.package import PackageError, parse_package, verify_package
from host_tools.server.api.auth import Principal, operator, reader
from host_tools.server.api.common import audit_of, not_found, server_of

router = APIRouter(prefix="/api", tags=["packages"])
MAX_PACKAGE = 8 * 1024 * 1024  # bigger than any ESP32 app slot


def trusted_keys(data_dir: FsPath) -> list[PublicKey]:
    """The keys uploads are checked against: `<data>/trusted/*.pub`."""
    return [PublicKey.load(p) for p in sorted((data_dir / "trusted").glob("*.pub"))]


def check_package(data: bytes, trusted: list[PublicKey]) -> list[str]:
    """What is wrong with a package file (empty: it may be stored)."""
    try:
        package = parse_package(data)
    except PackageError as exc:
        return [exc.message]
    problems = verify_package(package, trusted).problems
    if not trusted:
        problems = [p for p in problems if not p.startswith("signed by unknown key id")]
    return problems


def describe(row: dict, store) -> dict:
    """A stored package's registry row and its manifest."""
    out = dict(row)
    out["hw_revs"] = [r for r in (row.get("hw_revs") or "").split(",") if r]
    try:
        package, _ = store.load(row["id"])
    except PackageError:
        return out | {"manifest": None}
    m = package.manifest
    out["key_id"] = package.key_id.hex()
    out["manifest"] = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in m.__dict__.items() if k != "unknown"}
    return out


@router.get("/packages", summary="Stored packages")
def list_packages(request: Request, who: Principal = Depends(reader)) -> list[dict]:
    server = server_of(request)
    return [describe(r, server.store) for r in server.registry.packages()]


@router.get("/packages/{package}", summary="One package: its manifest, signer and sizes")
def get_package(request: Request, package: str = Path(pattern=r"^[0-9a-f]{16}$"), who: Principal = Depends(reader)) -> dict:
    server = server_of(request)
    row = server.registry.package(package)
    if row is None:
        raise not_found(f"package {package}")
    return describe(row, server.store)


@router.post("/packages", status_code=201, summary="Upload a package file (the request body); checked like fota verify")
async def upload_package(request: Request, who: Principal = Depends(operator)) -> dict:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/octet-stream":
        raise HTTPException(415, "send the package file as application/octet-stream")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > MAX_PACKAGE:
            raise HTTPException(413, f"a package is at most {MAX_PACKAGE} bytes")
    server = server_of(request)
    problems = await asyncio.to_thread(check_package, bytes(data), trusted_keys(server.config.data_dir))
    if problems:
        raise HTTPException(422, {"message": "package refused", "problems": problems})
    pid = await asyncio.to_thread(server.add_package, bytes(data))
    row = describe(server.registry.package(pid), server.store)
    audit_of(request).record(who, "package.upload", pid, {"version": row["version"], "sequence": row["sequence"]})
    return row
