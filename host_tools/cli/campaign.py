"""`fota campaign create|start|pause|resume|abort|status|report`.

The running `fota serve` moves campaigns on (every second). These commands are
clients of its HTTP API (--server URL --token T, or $FOTA_SERVER / $FOTA_TOKEN,
so they work from another machine; on the server's machine serve.json and
api_tokens.json are found in the data directory). With no server running, they
read and change the registry directly (the local shortcut).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from host_tools.cli.args import duration
from host_tools.errors import NotFoundError
from host_tools.fleet.campaign import (
    COMPLETED,
    PAUSED,
    PRESETS,
    STALE_AFTER_S,
    CampaignError,
    CampaignRunner,
    CampaignSpec,
    Plan,
    report,
    spec_of,
)
from host_tools.fleet.render import render_plan, render_report_data, render_status_data
from host_tools.server.api.client import ApiClient
from host_tools.server.packages import PackageStore
from host_tools.server.registry import Registry
from host_tools.server.service import default_data_dir, open_registry


def register(sub: argparse._SubParsersAction) -> None:
    camp = sub.add_parser("campaign", help="staged update campaigns").add_subparsers(dest="campaign_command", metavar="ACTION")
    camp.required = True
    p = camp.add_parser("create", help="plan a campaign: who gets it in which wave, who is excluded and why")
    p.add_argument("name", help="campaign name")
    p.add_argument("--package", required=True, help="a .fota file (added to the store) or a stored package id")
    p.add_argument("--delta", action="append", default=[], metavar="PACKAGE",
                   help="a delta package (.fota or stored id) making the same image from a base in the fleet (repeatable):"
                        " each device gets the one from the image it runs, else the full package")
    p.add_argument("--preset", choices=sorted(PRESETS), help="thresholds and waves to start from")
    p.add_argument("--group", action="append", default=[], help="target these groups (default: every device)")
    p.add_argument("--tag", action="append", default=[], help="target devices with this tag (repeatable)")
    p.add_argument("--from-version", action="append", default=[], help="only devices on this version")
    p.add_argument("--board", action="append", default=[], help="only devices of this board")
    p.add_argument("--hw-rev", action="append", default=[], help="only devices of this hardware revision")
    p.add_argument("--waves", help="comma list of groups or percentages, e.g. test,5%%,25%%,100%%")
    p.add_argument("--success", type=float, help="share of a wave that must succeed (0..1)")
    p.add_argument("--error", type=float, help="failure share over finished devices that pauses (0..1)")
    p.add_argument("--min-sample", type=int, help="finished devices before the error gate may pause")
    p.add_argument("--timeout", type=float, help="seconds a device may take before TIMED_OUT")
    p.add_argument("--retries", type=int, help="offers again to a device that failed")
    p.add_argument("--max-in-flight", type=int, help="devices updating at the same time")
    p.add_argument("--window", help="'MIN HOUR DOM MON DOW DURATION_MIN [TZ]', e.g. '0 2 * * * 120 Europe/Berlin'")
    p.add_argument("--policy", choices=("auto", "consent", "download-only"), help="when devices install (default: auto)")
    p.add_argument("--rollback-package", help="stored package id offered back to updated devices on abort")
    p.add_argument("--allow-rolled-back", action="store_true", default=None,
                   help="also offer to devices the image rolled back on (default: excluded; they refuse it themselves)")
    p.add_argument("--data", type=Path, help="the server's data directory (default: $FOTA_HOME/server)")
    _remote(p)
    p.set_defaults(handler=cmd_create)
    for action in ("start", "pause", "resume", "abort"):
        p = camp.add_parser(action, help=f"{action} a campaign")
        p.add_argument("name", help="campaign name")
        p.add_argument("--data", type=Path, help="the server's data directory (default: $FOTA_HOME/server)")
        _remote(p)
        p.set_defaults(handler=cmd_action, action=action)
    p = camp.add_parser("list", help="campaigns with their status and device counts")
    p.add_argument("--json", action="store_true", help="the campaigns as JSON")
    p.add_argument("--data", type=Path, help="the server's data directory (default: $FOTA_HOME/server)")
    _remote(p)
    p.set_defaults(handler=cmd_list)
    p = camp.add_parser("status", help="waves and devices, with progress")
    p.add_argument("name", help="campaign name")
    p.add_argument("--follow", action="store_true", help="redraw until the campaign completes or pauses")
    p.add_argument("--json", action="store_true", help="the status as JSON (with --follow: one object per line)")
    p.add_argument("--data", type=Path, help="the server's data directory (default: $FOTA_HOME/server)")
    _remote(p)
    p.set_defaults(handler=cmd_status)
    p = camp.add_parser("report", help="outcomes; failures by reason and hardware revision; devices not heard from")
    p.add_argument("name", help="campaign name")
    p.add_argument("--stale-after", type=duration, default=STALE_AFTER_S, metavar="AGE",
                   help="list devices the server has not heard from for longer than AGE, e.g. 12h, 7d (default: 7d)")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--data", type=Path, help="the server's data directory (default: $FOTA_HOME/server)")
    _remote(p)
    p.set_defaults(handler=cmd_report)


def _remote(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="the fota API, http://HOST:PORT (default: $FOTA_SERVER, else the local fota serve)")
    p.add_argument("--token", help="API token (default: $FOTA_TOKEN, else the local server's operator token)")


def _api(args) -> ApiClient | None:
    """The API of the server to talk to; None: no server runs here and none was named (the registry is used directly)."""
    return ApiClient.locate(args.data or default_data_dir(args.home), url=args.server, token=args.token)


def _registry(args) -> Registry:
    return open_registry(args.data or default_data_dir(args.home))


def _runner(registry: Registry) -> CampaignRunner:
    def unavailable(*a, **k):
        raise CampaignError("offers are made by the running fota serve")

    return CampaignRunner(registry, offer=unavailable, withdraw=lambda device: None)


def cmd_create(args) -> int:
    api = _api(args)
    package = args.package
    if api is not None:
        if Path(package).exists():
            package = api.post("/api/packages", data=Path(package).read_bytes())["id"]
        deltas = [api.post("/api/packages", data=Path(d).read_bytes())["id"] if Path(d).exists() else d for d in args.delta]
        body = {k: v for k, v in _spec_fields(args, package, deltas).items() if v not in (None, [])}
        plan = api.post("/api/campaigns", body | ({"preset": args.preset} if args.preset else {}))
        print(render_plan(spec_of(plan), Plan([(t["device"], t["wave"]) for t in plan["targets"]],
                                              [(e["device"], e["reason"]) for e in plan["excluded"]])))
        return 0
    registry = _registry(args)

    def stored(name: str) -> str:
        if not Path(name).exists():
            return name
        store = PackageStore((args.data or default_data_dir(args.home)) / "packages")
        pid, parsed = store.add(Path(name).read_bytes())
        registry.add_package(pid, str(store.path(pid)), parsed.manifest)
        return pid

    package = stored(package)
    fields = _spec_fields(args, package, [stored(d) for d in args.delta])
    base = {k: fields.pop(k) for k in ("name", "package", "groups", "tags", "versions", "boards", "hw_revs")}
    overrides = {k: v for k, v in fields.items() if v is not None}
    spec = CampaignSpec.with_preset(args.preset, **base, **overrides) if args.preset else CampaignSpec(**base, **overrides)
    plan = _runner(registry).create(spec)
    print(render_plan(spec, plan))
    return 0


def _spec_fields(args, package: str, deltas: list[str]) -> dict:
    """CampaignSpec's fields from the command line (None: not given, the preset's or the default value)."""
    return {"name": args.name, "package": package, "deltas": deltas, "groups": args.group, "tags": args.tag, "versions": args.from_version,
            "boards": args.board, "hw_revs": args.hw_rev, "success_threshold": args.success, "error_threshold": args.error,
            "min_sample": args.min_sample, "device_timeout_s": args.timeout, "retries": args.retries,
            "max_in_flight": args.max_in_flight, "window": args.window, "policy": args.policy,
            "rollback_package": args.rollback_package, "allow_rolled_back": args.allow_rolled_back, "waves": args.waves.split(",") if args.waves else None}


def cmd_action(args) -> int:
    api = _api(args)
    if api is not None:
        api.post(f"/api/campaigns/{args.name}/{args.action}")
    else:
        getattr(_runner(_registry(args)), args.action)(args.name)
    print(f"campaign {args.name}: {args.action}")
    return 0


def _report_data(args) -> dict:
    stale_after = getattr(args, "stale_after", STALE_AFTER_S)
    api = _api(args)
    if api is not None:
        return api.get(f"/api/campaigns/{args.name}/report", stale_after=stale_after)
    registry = _registry(args)
    if registry.campaign(args.name) is None:
        raise NotFoundError(f"no campaign named {args.name!r}", hint="fota campaign list shows them")
    return report(registry, args.name, stale_after_s=stale_after)


def cmd_list(args) -> int:
    api = _api(args)
    if api is not None:
        rows = api.get("/api/campaigns")
    else:
        registry = _registry(args)
        rows = []
        for camp in registry.campaigns():
            counts: dict[str, int] = {}
            for r in registry.campaign_devices(camp["name"]):
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            rows.append(camp | {"by_status": counts})
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    print(f"{'campaign':<16} {'status':<10} {'package':<17} devices")
    for c in rows:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(c.get("by_status", {}).items())) or "-"
        print(f"{c['name']:<16} {c.get('status') or '-':<10} {(c.get('spec') or {}).get('package', '-') if isinstance(c.get('spec'), dict) else '-':<17} {counts}")
    if not rows:
        print("(no campaigns: fota campaign create NAME --package FILE)")
    return 0


def cmd_status(args) -> int:
    last = None
    while True:
        data = _report_data(args)
        text = json.dumps(data, default=str) if args.json else render_status_data(data, args.name)
        if text != last:  # a frame only when something changed
            if args.follow and sys.stdout.isatty() and not args.json:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(text, flush=True)
        last = text
        status = data["campaign"]["status"]
        if not args.follow or status in (COMPLETED, PAUSED, "ABORTED"):
            return 0
        time.sleep(1)


def cmd_report(args) -> int:
    data = _report_data(args)
    if args.json:
        print(json.dumps(data, indent=1, default=str))
    else:
        print(render_report_data(data, args.name))
    return 0
