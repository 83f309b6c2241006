"""`fota campaign create|start|pause|resume|abort|status|report`.

The running `fota serve` moves campaigns on (every second); these commands read
and change the registry it shares.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from host_tools.fleet.campaign import (
    COMPLETED,
    PAUSED,
    PRESETS,
    CampaignError,
    CampaignRunner,
    CampaignSpec,
    report,
)
from host_tools.fleet.render import render_plan, render_report, render_status
from host_tools.server.packages import PackageStore
from host_tools.server.registry import Registry
from host_tools.server.service import default_data_dir, open_registry


def register(sub: argparse._SubParsersAction) -> None:
    camp = sub.add_parser("campaign", help="staged update campaigns").add_subparsers(dest="campaign_command", metavar="ACTION")
    camp.required = True
    p = camp.add_parser("create", help="plan a campaign: who gets it in which wave, who is excluded and why")
    p.add_argument("name")
    p.add_argument("--package", required=True, help="a .fota file (added to the store) or a stored package id")
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--group", action="append", default=[], help="target these groups (default: every device)")
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--from-version", action="append", default=[], help="only devices on this version")
    p.add_argument("--board", action="append", default=[], help="only devices of this board")
    p.add_argument("--hw-rev", action="append", default=[], help="only devices of this hardware revision")
    p.add_argument("--waves", help="comma list of groups or percentages, e.g. test,5%%,25%%,100%%")
    p.add_argument("--success", type=float, help="share of a wave that must succeed (0..1)")
    p.add_argument("--error", type=float, help="failure share over finished devices that pauses (0..1)")
    p.add_argument("--min-sample", type=int)
    p.add_argument("--timeout", type=float, help="seconds a device may take before TIMED_OUT")
    p.add_argument("--retries", type=int)
    p.add_argument("--max-in-flight", type=int)
    p.add_argument("--window", help="'MIN HOUR DOM MON DOW DURATION_MIN [TZ]', e.g. '0 2 * * * 120 Europe/Berlin'")
    p.add_argument("--policy", choices=("auto", "consent", "download-only"))
    p.add_argument("--rollback-package", help="stored package id offered back to updated devices on abort")
    p.add_argument("--data", type=Path)
    p.set_defaults(handler=cmd_create)
    for action in ("start", "pause", "resume", "abort"):
        p = camp.add_parser(action, help=f"{action} a campaign")
        p.add_argument("name")
        p.add_argument("--data", type=Path)
        p.set_defaults(handler=cmd_action, action=action)
    p = camp.add_parser("status", help="waves and devices, with progress")
    p.add_argument("name")
    p.add_argument("--follow", action="store_true", help="redraw until the campaign completes or pauses")
    p.add_argument("--data", type=Path)
    p.set_defaults(handler=cmd_status)
    p = camp.add_parser("report", help="outcomes; failures by reason and hardware revision")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.add_argument("--data", type=Path)
    p.set_defaults(handler=cmd_report)


def _registry(args) -> Registry:
    return open_registry(args.data or default_data_dir(args.home))


def _runner(registry: Registry) -> CampaignRunner:
    def unavailable(*a, **k):
        raise CampaignError("offers are made by the running fota serve")

    return CampaignRunner(registry, offer=unavailable, withdraw=lambda device: None)


def cmd_create(args) -> int:
    registry = _registry(args)
    package = args.package
    if Path(package).exists():
        store = PackageStore((args.data or default_data_dir(args.home)) / "packages")
        package, parsed = store.add(Path(package).read_bytes())
        registry.add_package(package, str(store.path(package)), parsed.manifest)
    overrides = {k: v for k, v in {
        "success_threshold": args.success, "error_threshold": args.error, "min_sample": args.min_sample,
        "device_timeout_s": args.timeout, "retries": args.retries, "max_in_flight": args.max_in_flight,
        "window": args.window, "policy": args.policy, "rollback_package": args.rollback_package,
        "waves": args.waves.split(",") if args.waves else None,
    }.items() if v is not None}
    base = dict(name=args.name, package=package, groups=args.group, tags=args.tag, versions=args.from_version,
                boards=args.board, hw_revs=args.hw_rev)
    spec = CampaignSpec.with_preset(args.preset, **base, **overrides) if args.preset else CampaignSpec(**base, **overrides)
    plan = _runner(registry).create(spec)
    print(render_plan(spec, plan))
    return 0


def cmd_action(args) -> int:
    runner = _runner(_registry(args))
    getattr(runner, args.action)(args.name)
    print(f"campaign {args.name}: {args.action}")
    return 0


def cmd_status(args) -> int:
    registry = _registry(args)
    while True:
        text = render_status(registry, args.name)
        if args.follow and sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")
        print(text, flush=True)
        status = registry.campaign(args.name)["status"]
        if not args.follow or status in (COMPLETED, PAUSED, "ABORTED"):
            return 0
        time.sleep(1)


def cmd_report(args) -> int:
    registry = _registry(args)
    if args.json:
        print(json.dumps(report(registry, args.name), indent=1, default=str))
    else:
        print(render_report(registry, args.name))
    return 0
