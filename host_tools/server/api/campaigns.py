"""Routes: campaigns (create from the CLI's spec, start, pause, resume, abort, status, report).

The body of POST /api/campaigns is CampaignSpec's fields (host_tools/fleet/campaign.py), with an
optional `preset` whose values the other fields override, exactly like `fota campaign create`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field, StringConstraints, field_validator

from host_tools.errors import FotaError
from host_tools.fleet.campaign import FAILURES, PRESETS, STALE_AFTER_S, CampaignSpec, report
from host_tools.protocol import FINAL
from host_tools.server.api.auth import Principal, operator, reader
from host_tools.server.api.common import NAME, audit_of, device_row, not_found, server_of

router = APIRouter(prefix="/api/campaigns", tags=["campaigns"])
Names = list[str]
PackageId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]


class CampaignIn(BaseModel):
    """A campaign spec, as `fota campaign create` builds it."""

    name: str = Field(pattern=NAME)
    package: str = Field(pattern=r"^[0-9a-f]{16}$")
    preset: Literal[tuple(PRESETS)] | None = None  # type: ignore[valid-type]
    groups: Names = Field(default_factory=list, max_length=64)
    tags: Names = Field(default_factory=list, max_length=64)
    versions: Names = Field(default_factory=list, max_length=64)
    boards: Names = Field(default_factory=list, max_length=64)
    hw_revs: Names = Field(default_factory=list, max_length=64)
    waves: Names | None = Field(default=None, min_length=1, max_length=32)
    success_threshold: float | None = Field(default=None, ge=0, le=1)
    error_threshold: float | None = Field(default=None, ge=0, le=1)
    min_sample: int | None = Field(default=None, ge=1)
    device_timeout_s: float | None = Field(default=None, gt=0, le=7 * 86400)
    retries: int | None = Field(default=None, ge=0, le=100)
    max_in_flight: int | None = Field(default=None, ge=1, le=100000)
    window: str | None = Field(default=None, max_length=200)
    use_window: bool | None = None
    policy: Literal["auto", "consent", "download-only"] | None = None
    chunk: int | None = Field(default=None, ge=256, le=32768)
    rollback_package: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
    allow_rolled_back: bool | None = None
    deltas: list[PackageId] = Field(default_factory=list, max_length=64)  # each device: the delta from its running image

    @field_validator("waves")
    @classmethod
    def _waves(cls, waves: Names | None) -> Names | None:
        import re

        for wave in waves or []:
            if wave.endswith("%"):
                try:
                    share = float(wave[:-1])
                except ValueError:
                    raise ValueError(f"wave {wave!r} is not a percentage") from None
                if not 0 < share <= 100:
                    raise ValueError(f"wave {wave!r} is not within 0..100 %")
            elif not re.match(NAME, wave):
                raise ValueError(f"wave {wave!r} is neither a group name nor a percentage")
        return waves

    def spec(self) -> CampaignSpec:
        fields = {k: v for k, v in self.model_dump(exclude={"preset"}).items() if v is not None}
        return CampaignSpec.with_preset(self.preset, **fields) if self.preset else CampaignSpec(**fields)


def _campaign(request: Request, name: str) -> dict:
    camp = server_of(request).registry.campaign(name)
    if camp is None:
        raise not_found(f"campaign {name!r}")
    return camp


def status_of(server, name: str) -> dict:
    """The campaign, its waves with progress (finished, succeeded, failed, in flight with download progress) and
    downtime (median, worst), the downtime to expect from the waves done, and the devices (with `downtime_ms`)."""
    data = report(server.registry, name)
    camp = data["campaign"]
    devices = {d["id"]: device_row(d) for d in server.registry.devices()}
    waves = []
    for index, wave in enumerate(camp["spec"]["waves"]):
        rows = [r for r in data["devices"] if r["wave"] == index]
        busy = [r for r in rows if r["status"] not in FINAL + ("PENDING",)]
        waves.append({"index": index, "name": wave, "total": len(rows),
                      "finished": sum(1 for r in rows if r["status"] in FINAL),
                      "succeeded": sum(1 for r in rows if r["status"] == "SUCCEEDED"),
                      "failed": sum(1 for r in rows if r["status"] in FAILURES),
                      "in_flight": [{"device": r["device"], "status": r["status"],
                                     "progress": (devices.get(r["device"]) or {}).get("progress")} for r in busy],
                      "downtime": {k: data["downtime"][index][k] for k in ("devices", "median_ms", "worst_ms")}})
    rows = [r | {"hw_rev": (devices.get(r["device"]) or {}).get("hw_rev")} for r in data["devices"]]
    gate = camp["note"] if camp["status"] == "PAUSED" else None
    return {"campaign": camp, "waves": waves, "paused_because": gate, "by_status": data["by_status"], "devices": rows,
            "expected_downtime": data["expected_downtime"]}


@router.get("", summary="Campaigns with their status")
def list_campaigns(request: Request, who: Principal = Depends(reader)) -> list[dict]:
    server = server_of(request)
    out = []
    for camp in server.registry.campaigns():
        counts: dict[str, int] = {}
        for r in server.registry.campaign_devices(camp["name"]):
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        out.append(camp | {"by_status": counts})
    return out


@router.post("", status_code=201, summary="Create a campaign: the plan of waves and exclusions (operator)")
def create_campaign(request: Request, body: CampaignIn, who: Principal = Depends(operator)) -> dict:
    server = server_of(request)
    if server.registry.campaign(body.name):
        raise HTTPException(409, f"campaign {body.name!r} exists already")
    try:
        spec = body.spec()
        with server.campaign_lock:
            plan = server.campaigns.create(spec)
    except FotaError as exc:
        raise HTTPException(422, exc.message) from exc
    audit_of(request).record(who, "campaign.create", spec.name, {"spec": asdict(spec)})
    return {"name": spec.name, "spec": asdict(spec), "targets": [{"device": d, "wave": w} for d, w in plan.targets],
            "excluded": [{"device": d, "reason": r} for d, r in plan.excluded]}


@router.get("/{name}", summary="A campaign's status: waves with progress, gate, devices")
def get_campaign(request: Request, name: str = Path(pattern=NAME), who: Principal = Depends(reader)) -> dict:
    _campaign(request, name)
    return status_of(server_of(request), name)


@router.get("/{name}/report", summary="Outcomes; failures by reason and hardware revision; devices not heard from")
def get_report(request: Request, name: str = Path(pattern=NAME), who: Principal = Depends(reader),
               stale_after: float = Query(STALE_AFTER_S, gt=0, description="seconds without contact that make a device"
                                          " unreachable in the report")) -> dict:
    _campaign(request, name)
    return report(server_of(request).registry, name, stale_after_s=stale_after)


@router.post("/{name}/{action}", summary="start | pause | resume | abort (operator)")
def act(request: Request, action: Literal["start", "pause", "resume", "abort"], name: str = Path(pattern=NAME),
        who: Principal = Depends(operator)) -> dict:
    server = server_of(request)
    before = _campaign(request, name)["status"]
    try:
        with server.campaign_lock:
            if action == "pause":
                server.campaigns.pause(name, note=f"paused by operator ({who.name})")
            else:
                getattr(server.campaigns, action)(name)
    except FotaError as exc:
        raise HTTPException(409, exc.message) from exc
    camp = server.registry.campaign(name)
    audit_of(request).record(who, f"campaign.{action}", name, {"before": before, "after": camp["status"]})
    return camp
