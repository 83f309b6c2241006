"""What the API's route modules share: the server and services from the app state, name rules, row shaping."""

from __future__ import annotations

import json
import time

from fastapi import HTTPException, Request

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"  # device ids, group and tag names, campaign names
ONLINE_S = 900.0  # seen within this many seconds: online (devices report state on connect and on every change)


def server_of(request: Request):
    return request.app.state.server


def audit_of(request: Request):
    return request.app.state.audit


def device_row(row: dict, now: float | None = None) -> dict:
    """A registry device row for the API: JSON columns decoded (`deferred`: the device's power deferral
    {"code", "stage", "detail"} or null), `online` and `state_name` added."""
    out = dict(row)
    for key in ("progress", "errors", "deferred"):
        value = out.get(key)
        out[key] = json.loads(value) if isinstance(value, str) and value else value
    out["errors"] = out.get("errors") or []
    seen = out.get("last_seen")
    out["online"] = bool(seen and (now or time.time()) - seen < ONLINE_S)
    out["state_name"] = {0: "idle", 1: "downloading", 2: "downloaded", 3: "updating"}.get(out.get("state"), "unknown")
    return out


def not_found(what: str) -> HTTPException:
    return HTTPException(404, f"no {what}")
