"""Devices as people and scripts read them: one shape for the API's rows and the local registry's.

    rows = [device_record(r) for r in registry.devices()]   # JSON columns decoded, error names added
    print(render_devices(rows))                                # the `fota devices` table
"""

from __future__ import annotations

import json
import time

from host_tools import firmware

STATE_NAMES = {0: "idle", 1: "downloading", 2: "downloaded", 3: "updating"}


def device_record(row: dict, last_offer: dict | None = None) -> dict:
    """A device row with `progress` and `errors` as JSON values (never JSON inside strings), the error
    names beside their codes, `last_offer` ({"id", "status"} or None), `last_error` (None after a success) and
    `deferred` ({"code", "name", "stage", "detail"} while the device's power check puts an install or download off)."""
    out = dict(row)
    for key in ("progress", "errors", "deferred"):
        value = out.get(key)
        out[key] = json.loads(value) if isinstance(value, str) and value else value
    out["errors"] = [_named(e) for e in out.get("errors") or []]
    if out.get("deferred"):
        out["deferred"] = {**out["deferred"], "name": firmware.errors().name(out["deferred"].get("code"))}
    else:
        out["deferred"] = None
    if "last_offer" not in out or last_offer is not None:
        out["last_offer"] = last_offer
    out["state_name"] = STATE_NAMES.get(out.get("state"), "unknown")
    succeeded = (out["last_offer"] or {}).get("status") == "SUCCEEDED"
    out["last_error"] = None if succeeded or not out["errors"] else out["errors"][-1]
    return out


def _named(entry) -> dict:
    """[code, detail, time] as {"code", "name", "detail", "time"}."""
    if isinstance(entry, dict):
        return entry
    code, detail, stamp = (list(entry) + [None, None, None])[:3]
    return {"code": code, "name": firmware.errors().name(code), "detail": detail, "time": stamp}


def _ago(stamp: float | None, now: float) -> str:
    if not stamp:
        return "never"
    seconds = max(0, int(now - stamp))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _progress(record: dict) -> str:
    have, total = ((record.get("progress") or [0, 0]) + [0, 0])[:2]
    if not total or record.get("state") not in (1, 2):
        return "-"
    return f"{100 * have // total}%"


def _state(record: dict) -> str:
    if record.get("deferred"):
        return "deferred"
    return record["state_name"] if record.get("state") is not None else "-"


def render_devices(records: list[dict], now: float | None = None) -> str:
    """The `fota devices` table: no None, error names, group and progress columns; `heard`: when the server last
    heard from the device, `sent`: when it last sent the device an offer, a command or a key list."""
    now = time.time() if now is None else now
    header = (f"{'device':<14} {'board':<8} {'hw':<3} {'version':<9} {'seq':>4} {'state':<11} {'progress':>8} "
              f"{'groups':<12} {'heard':<10} {'sent':<10} {'last offer':<16} last error")
    lines = [header]
    for d in records:
        offer = d.get("last_offer")
        err = d.get("last_error")
        error = f"{err['name']}" + (f" ({err['detail']})" if err.get("detail") else "") if err else "-"
        deferred = d.get("deferred")
        if deferred:  # a device waiting for power: the reason, ahead of the last error
            error = f"{deferred['stage']} deferred: {deferred['name']} ({deferred.get('detail') or '-'})"
        last = f"{offer['id']}:{offer['status']}" if offer else "-"
        lines.append(
            f"{d['id']:<14} {d.get('board') or '-':<8} {d.get('hw_rev') or '-':<3} {d.get('version') or '-':<9} "
            f"{d['seq'] if d.get('seq') is not None else '-':>4} {_state(d):<11} "
            f"{_progress(d):>8} {','.join(d.get('groups') or []) or '-':<12} {_ago(d.get('last_heard') or d.get('last_seen'), now):<10} "
            f"{_ago(d.get('last_sent'), now):<10} "
            f"{last:<16} {error}")
    if not records:
        lines.append("(no devices yet: a device appears when it first reports to fota serve)")
    return "\n".join(lines)
