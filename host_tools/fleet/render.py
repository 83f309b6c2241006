"""Campaigns as text: the plan, the live status and the report that `fota campaign` and the demo print.

    print(render_status(registry, "r42"))
"""

from __future__ import annotations

import time

from host_tools.fleet.campaign import CampaignError, CampaignSpec, Plan, report
from host_tools.protocol import FINAL
from host_tools.server.registry import Registry

_LONGEST = 10  # devices listed by downtime in the text report (all of them in --json and in the status)


def render_plan(spec: CampaignSpec, plan: Plan) -> str:
    """A new campaign's waves and exclusions (`fota campaign create`)."""
    lines = [f"campaign {spec.name}: package {spec.package}, waves {' -> '.join(spec.waves)}"]
    lines += [f"  delta {pid} for devices running image {base[:16]}..." for base, pid in spec.delta_bases.items()]
    for index, wave in enumerate(spec.waves):
        members = [d for d, w in plan.targets if w == index]
        lines.append(f"  wave {index + 1} ({wave}): {len(members)} device(s) {', '.join(members)}")
    lines.append(f"  excluded: {len(plan.excluded)}")
    lines += [f"    {device}: {reason}" for device, reason in plan.excluded]
    return "\n".join(lines)


def seconds(ms: int | None) -> str:
    """A downtime for people: '2.4 s', '-' when not measured."""
    return "-" if ms is None else f"{ms / 1000:.1f} s"


def render_downtime(stats: dict | None) -> str:
    """'median 2.4 s, worst 3.1 s (3 devices)' of campaign.downtime_stats, or 'not measured yet'."""
    if not stats or not stats.get("devices"):
        return "not measured yet"
    return f"median {seconds(stats['median_ms'])}, worst {seconds(stats['worst_ms'])} ({stats['devices']} device(s))"


def render_expected(data: dict) -> str:
    """The downtime the waves to come can expect, from the waves already done (a campaign report's)."""
    exp = data.get("expected_downtime")
    if not exp:
        return "  expected downtime: not known until a wave is done"
    waves = ", ".join(str(i + 1) for i in exp["waves"])
    return f"  expected downtime per device: {render_downtime(exp)}, from wave(s) {waves}"


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def render_status(registry: Registry, name: str) -> str:
    """One campaign's progress per wave and each device's status (`fota campaign status`)."""
    return render_status_data(report(registry, name), name)


def render_status_data(data: dict, name: str) -> str:
    """render_status from a campaign report (campaign.report's, or the HTTP API's /report)."""
    camp = data["campaign"]
    if camp is None:
        raise CampaignError(f"no campaign named {name!r}")
    waves = camp["spec"]["waves"]
    lines = [f"campaign {name}: {camp['status']} (wave {camp['wave'] + 1}/{len(waves)}) {camp['note'] or ''}".rstrip()]
    down = data.get("downtime") or []
    for index, wave in enumerate(waves):
        rows = [r for r in data["devices"] if r["wave"] == index]
        done = sum(1 for r in rows if r["status"] in FINAL)
        ok = sum(1 for r in rows if r["status"] == "SUCCEEDED")
        stats = down[index] if index < len(down) else None
        measured = f"  downtime {render_downtime(stats)}" if stats and stats["devices"] else ""
        lines.append(f"  wave {index + 1} {wave:<8} {_bar(done, len(rows))}  succeeded {ok}{measured}")
    lines.append(render_expected(data))
    lines.append(f"  {'device':<14} {'wave':>4}  {'status':<12} {'downtime':>8}  reason")
    for r in data["devices"]:
        wave = "-" if r["wave"] < 0 else str(r["wave"] + 1)
        lines.append(f"  {r['device']:<14} {wave:>4}  {r['status']:<12} {seconds(r.get('downtime_ms')):>8}  {r['reason'] or ''}".rstrip())
    return "\n".join(lines)


def render_report(registry: Registry, name: str) -> str:
    """A campaign's outcome by status, reason and hardware revision (`fota campaign report`)."""
    return render_report_data(report(registry, name), name)


def render_report_data(data: dict, name: str) -> str:
    """render_report from a campaign report (campaign.report's, or the HTTP API's /report)."""
    lines = [f"campaign {name}: {data['campaign']['status']}"]
    lines += [f"  {status:<12} {count}" for status, count in sorted(data["by_status"].items())]
    down = data.get("downtime") or []
    if any(w["devices"] for w in down):
        lines.append("  downtime (the application not running, last action before the reboot to the commit):")
        lines += [f"    wave {w['index'] + 1} ({w['name']}): {render_downtime(w)}" for w in down]
        measured = sorted((r for r in data["devices"] if r.get("downtime_ms") is not None), key=lambda r: -r["downtime_ms"])
        lines.append("    longest per device:" if len(measured) > _LONGEST else "    per device:")
        lines += [f"      {r['device']:<14} wave {r['wave'] + 1}: {seconds(r['downtime_ms'])}" for r in measured[:_LONGEST]]
        if len(measured) > _LONGEST:
            lines.append(f"      ({len(measured) - _LONGEST} more: --json, or fota campaign status)")
    lines.append(render_expected(data))
    if data["by_reason"]:
        lines.append("  by reason:")
        lines += [f"    {count} x {reason}" for reason, count in sorted(data["by_reason"].items())]
    if data["by_hw_rev"]:
        lines.append("  failures and exclusions by hardware revision:")
        for hw, counts in sorted(data["by_hw_rev"].items()):
            lines.append(f"    {hw}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if data.get("offered"):
        fallbacks = data.get("fallbacks") or {}
        lines.append(f"  offered: {data['offered']['delta']} delta, {data['offered']['full']} full package;"
                     f" {len(fallbacks)} fell back from a delta to the full package")
        lines += [f"    {device}: delta {f['delta']} refused ({f.get('reason') or f.get('code')})" for device, f in sorted(fallbacks.items())]
    waiting = data.get("deferred") or []
    if waiting:
        lines.append("  waiting for their power check (deferred on the device; installed once it passes):")
        lines += [f"    {w['device']:<14} {w['stage']} deferred: {w['name']} ({w.get('detail') or '-'})" for w in waiting]
    stale = data.get("unreachable") or []
    if stale:
        days = (data.get("stale_after_s") or 0) / 86400
        lines.append(f"  not heard from for more than {days:g} day(s) (dead, or cut off from releases: a freeze?):")
        lines += [f"    {u['device']:<14} last heard {_when(u['last_heard'])}, last sent {_when(u['last_sent'])}"
                  f"{' (' + u['last_sent_what'] + ')' if u.get('last_sent_what') else ''}" for u in stale]
    return "\n".join(lines)


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp)) if stamp else "never"
