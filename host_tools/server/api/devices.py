"""Routes: devices (list with filters, one with its events, errors and offer in flight), groups, tags, deploy."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from host_tools.protocol import FINAL
from host_tools.server.api.auth import Principal, operator, reader
from host_tools.server.api.common import NAME, audit_of, device_row, not_found, server_of

router = APIRouter(prefix="/api", tags=["devices"])
STATE_NAMES = {"idle": 0, "downloading": 1, "downloaded": 2, "updating": 3}


class Names(BaseModel):
    """A list of group or tag names."""

    names: list[str] = Field(max_length=32)


class DeployIn(BaseModel):
    """Offer a stored package now to some devices or a whole group."""

    package: str = Field(pattern=r"^[0-9a-f]{16}$")
    devices: list[str] = Field(default_factory=list, max_length=10000)
    group: str | None = Field(default=None, pattern=NAME)
    chunk: int = Field(default=4096, ge=256, le=32768)
    policy: Literal["auto", "consent", "download-only"] = "auto"
    force: bool = False  # offer even to devices the package's image rolled back on (they refuse it themselves)


class KeyListIn(BaseModel):
    """Send a root-signed key list (docs/FORMAT.md "Key lists", hex) to some devices or a whole group."""

    keylist: str = Field(pattern=r"^(?:[0-9a-f]{2}){82,512}$")  # whole bytes only
    devices: list[str] = Field(default_factory=list, max_length=10000)
    group: str | None = Field(default=None, pattern=NAME)


def _check_names(names: list[str]) -> list[str]:
    import re

    bad = [n for n in names if not re.match(NAME, n)]
    if bad:
        raise HTTPException(422, f"not a valid name: {', '.join(map(repr, bad[:5]))}")
    return names


@router.get("/devices", summary="List devices, optionally filtered")
def list_devices(request: Request, who: Principal = Depends(reader), group: str | None = Query(None, pattern=NAME),
                 tag: str | None = Query(None, pattern=NAME), version: str | None = Query(None, max_length=64),
                 state: Literal["idle", "downloading", "downloaded", "updating"] | None = None,
                 board: str | None = Query(None, max_length=64), hw_rev: str | None = Query(None, max_length=16),
                 online: bool | None = None) -> list[dict]:
    now = time.time()
    reg = server_of(request).registry
    last = {o.device: {"id": o.id, "status": o.status} for o in reg.offers()}  # ordered by id: the last one wins
    rows = [device_row(d, now) | {"last_offer": last.get(d["id"])} for d in reg.devices(group)]
    return [d for d in rows if (tag is None or tag in d["tags"]) and (version is None or d["version"] == version)
            and (state is None or d["state"] == STATE_NAMES[state]) and (board is None or d["board"] == board)
            and (hw_rev is None or d["hw_rev"] == hw_rev) and (online is None or d["online"] == online)]


@router.get("/devices/{device}", summary="One device: state, events, error log, offers and the offer in flight")
def get_device(request: Request, device: str = Path(pattern=NAME), who: Principal = Depends(reader),
               events: int = Query(200, ge=1, le=5000)) -> dict:
    reg = server_of(request).registry
    row = reg.device(device)
    if row is None:
        raise not_found(f"device {device!r}")
    out = device_row(row)
    history = reg.events(device)
    out["events"] = history[-events:]
    offers = reg.offers(device)
    out["offers"] = [o.__dict__ for o in offers[-20:]]
    current = offers[-1] if offers and offers[-1].status not in FINAL else None
    in_flight = None
    if current is not None:
        progress = [e["body"] for e in history if e["offer"] == current.id and e["event"] == "progress"]
        package = reg.package(current.package) or {}
        have, total = (progress[-1].get("have"), progress[-1].get("total")) if progress else (out["progress"] or [0, 0])[:2]
        in_flight = current.__dict__ | {"version": package.get("version"), "have": have, "total": total}
    out["in_flight"] = in_flight
    return out


def _set(request: Request, device: str, kind: str, body: Names, who: Principal) -> dict:
    reg = server_of(request).registry
    before = reg.device(device)
    if before is None:
        raise not_found(f"device {device!r}")
    names = _check_names(body.names)
    (reg.set_groups if kind == "groups" else reg.set_tags)(device, names)
    audit_of(request).record(who, f"device.{kind}", device, {"before": before[kind], "after": names})
    return device_row(reg.device(device))


@router.put("/devices/{device}/groups", summary="Set a device's groups (operator)")
def set_groups(request: Request, body: Names, device: str = Path(pattern=NAME), who: Principal = Depends(operator)) -> dict:
    return _set(request, device, "groups", body, who)


@router.put("/devices/{device}/tags", summary="Set a device's tags (operator)")
def set_tags(request: Request, body: Names, device: str = Path(pattern=NAME), who: Principal = Depends(operator)) -> dict:
    return _set(request, device, "tags", body, who)


@router.get("/groups", summary="Groups with their device counts and versions")
def list_groups(request: Request, who: Principal = Depends(reader)) -> list[dict]:
    groups: dict[str, dict] = {}
    for d in server_of(request).registry.devices():
        for g in d["groups"]:
            entry = groups.setdefault(g, {"name": g, "devices": 0, "versions": {}})
            entry["devices"] += 1
            entry["versions"][d["version"] or "unknown"] = entry["versions"].get(d["version"] or "unknown", 0) + 1
    return [groups[g] for g in sorted(groups)]



def _targets(reg, devices: list[str], group: str | None) -> list[str]:
    """The known devices a deploy or key-list push names (by id or by group); 422 for unknown ids or an empty group."""
    known = {d["id"] for d in reg.devices()}
    chosen = _check_names(devices) or [d["id"] for d in reg.devices(group)]
    unknown = [d for d in chosen if d not in known]
    if unknown:
        raise HTTPException(422, f"unknown device(s): {', '.join(unknown[:10])}")
    if not chosen:
        raise HTTPException(422, f"no devices in group {group!r}")
    return chosen

@router.post("/deploy", status_code=201, summary="Offer a stored package to devices now (operator)")
def deploy(request: Request, body: DeployIn, who: Principal = Depends(operator)) -> dict:
    server = server_of(request)
    reg = server.registry
    package = reg.package(body.package)
    if package is None:
        raise HTTPException(422, f"no package {body.package} in the store; upload it first (POST /api/packages)")
    if bool(body.devices) == bool(body.group):
        raise HTTPException(422, "give either devices or group")
    devices = _targets(reg, body.devices, body.group)
    skipped = [] if body.force else [{"device": d, "reason": why} for d in devices
                                     if (why := reg.rolled_back_reason(d, body.package))]
    devices = [d for d in devices if d not in {s["device"] for s in skipped}]
    offers = [{"device": d, "offer": server.mqtt.offer(d, body.package, chunk=body.chunk, policy=body.policy)} for d in devices]
    audit_of(request).record(who, "deploy", body.package, {"version": package["version"], "devices": devices,
                                                           "group": body.group, "policy": body.policy, "force": body.force,
                                                           "skipped": [s["device"] for s in skipped]})
    return {"package": body.package, "version": package["version"], "offers": offers, "skipped": skipped}


@router.post("/keylist", status_code=201, summary="Send a root-signed key list to devices, no firmware needed (operator)")
def push_key_list(request: Request, body: KeyListIn, who: Principal = Depends(operator)) -> dict:
    from host_tools.errors import FotaError
    from host_tools.image.keylist import parse_key_list

    server = server_of(request)
    reg = server.registry
    if bool(body.devices) == bool(body.group):
        raise HTTPException(422, "give either devices or group")
    raw = bytes.fromhex(body.keylist)
    try:
        version = parse_key_list(raw).version
    except FotaError as exc:
        raise HTTPException(422, str(exc)) from None
    devices = _targets(reg, body.devices, body.group)
    server.push_key_list(raw, devices)
    audit_of(request).record(who, "keylist", str(version), {"devices": devices, "group": body.group})
    return {"version": version, "devices": devices}
