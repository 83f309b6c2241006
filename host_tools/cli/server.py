"""`fota serve`, `fota deploy`, `fota devices`.

deploy and devices are clients of the server's HTTP API (--server/--token, $FOTA_SERVER/$FOTA_TOKEN,
else the local server's serve.json and operator token); a local server without the API: its registry; no server: exit 5.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from pathlib import Path

from host_tools.cli.args import positive_int
from host_tools.errors import EXIT_UNAVAILABLE, EXIT_USAGE, FotaError, NotFoundError, UnavailableError
from host_tools.fleet.devices_view import device_record, render_devices
from host_tools.protocol import POLICIES
from host_tools.server import ports
from host_tools.server.api.client import ApiClient
from host_tools.server.mqtt_service import MqttService
from host_tools.server.packages import PackageStore
from host_tools.server.ports import DataDirLock
from host_tools.server.service import Server, ServerConfig, default_data_dir, open_registry, running_server

COAP_PORT = 5683  # RFC 7252 12.6
API_PORT = 8470  # the HTTP API and console by default


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the update server (MQTT; an embedded broker unless --broker)")
    p.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT of an MQTT 3.1.1 broker (default: embedded amqtt on loopback)")
    p.add_argument("--ca", help="CA certificate (PEM) that signed an mqtts:// broker's certificate")
    p.add_argument("--port", type=int, default=None,
                   help="embedded broker port (default: 1883, or the port this data directory used last; 0: a free one)")
    p.add_argument("--broker-host", default="127.0.0.1",
                   help="address the embedded broker listens on (default: loopback; elsewhere needs --broker-cert/--broker-key)")
    p.add_argument("--broker-cert", help="embedded broker's TLS certificate (PEM; fota ca issue-server)")
    p.add_argument("--broker-key", help="embedded broker's TLS private key (PEM)")
    p.add_argument("--data", type=Path, help="data directory (default: $FOTA_HOME/server)")
    p.add_argument("--prefix", default="fota", help="topic prefix")
    p.add_argument("--database", help="postgresql://USER@HOST/DB for the registry (default: SQLite in the data directory)")
    p.add_argument("--worker", metavar="NAME",
                   help="one of several servers sharing --database (PostgreSQL) and --broker (its MQTT 5 client id is "
                        "fota-server-NAME; each worker has its own --data): docs/DEPLOY.md")
    p.add_argument("--coap-port", type=int, default=None,
                   help="CoAP (UDP) port, docs/COAP.md (default: 5683, or a free one if 5683 is taken; 0: a free one)")
    p.add_argument("--coap-host", default="127.0.0.1", help="address CoAP listens on (default: loopback)")
    p.add_argument("--no-coap", action="store_true", help="serve MQTT only")
    p.add_argument("--api-port", type=int, default=None,
                   help="HTTP API and web console port (default: 8470, or a free one if 8470 is taken; 0: a free one)")
    p.add_argument("--api-host", default="127.0.0.1", help="address the HTTP API listens on (default: loopback)")
    p.add_argument("--no-api", action="store_true", help="no HTTP API and console")
    p.add_argument("--webhook", action="append", default=[], help="URL that gets campaign events (repeatable)")
    p.add_argument("--trust", action="append", type=Path, default=[],
                   help="public key (.pub) packages must be signed by (repeatable; default: structure and digests only)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("deploy", help="offer a package to devices now")
    p.add_argument("package", type=Path, help="a signed .fota package")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", action="append", help="device id (repeatable; fota devices lists them)")
    target.add_argument("--group", help="every device in this group")
    p.add_argument("--chunk", type=positive_int, default=4096, help="bytes per chunk the devices ask for (default: 4096)")
    p.add_argument("--policy", choices=sorted(POLICIES), default="auto", help="when devices install (default: auto)")
    p.add_argument("--force", action="store_true",
                   help="offer even to devices the image rolled back on (default: skipped; they refuse it themselves)")
    p.add_argument("--follow", action="store_true", help="show each device's progress until its offer ends")
    p.add_argument("--timeout", type=float, default=600, help="with --follow: give up after this many seconds")
    p.add_argument("--json", action="store_true", help="the offers made (and with --follow their outcome) as JSON")
    p.add_argument("--data", type=Path, help="the server's data directory (default: $FOTA_HOME/server)")
    _remote(p)
    p.set_defaults(handler=cmd_deploy)

    p = sub.add_parser("devices", help="list devices with version, state, progress, groups and last error")
    p.add_argument("--data", type=Path, help="the server's data directory (default: $FOTA_HOME/server)")
    p.add_argument("--group", help="only devices in this group")
    p.add_argument("--json", action="store_true", help="the devices as JSON")
    p.add_argument("--assign", nargs="+", metavar=("DEVICE", "GROUP"), help="set DEVICE's groups to GROUP(s)")
    p.add_argument("--create-group", action="store_true", help="with --assign: a group that does not exist yet may be made")
    _remote(p)
    p.set_defaults(handler=cmd_devices)


def _remote(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="the fota API, http://HOST:PORT (default: $FOTA_SERVER, else the local fota serve)")
    p.add_argument("--token", help="API token (default: $FOTA_TOKEN, else the local server's operator token)")


def _api(args) -> ApiClient | None:
    """The API to use; None: a local server without the API, or none at all (then the old local paths)."""
    return ApiClient.locate(_data(args), url=args.server, token=args.token)


def _data(args) -> Path:
    return args.data or default_data_dir(args.home)


def cmd_serve(args) -> int:
    lock = DataDirLock.acquire(_data(args))  # one fota serve per data directory (serve.json is its)
    broker_port = 0
    if args.broker is None:
        _refuse_taken(args.port, "--port")
        broker_port, note = ports.broker_port(_data(args), args.broker_host, args.port)
        if note:
            print(f"fota serve: {note}", file=sys.stderr)
    _refuse_taken(args.api_port, "--api-port", args.api_host)
    coap_port = None if args.no_coap else _coap_port(args.coap_host, args.coap_port)
    api_port = None if args.no_api else _api_port(args.api_host, args.api_port)
    server = Server(ServerConfig(_data(args), broker_url=args.broker, prefix=args.prefix, broker_port=broker_port, broker_ca=args.ca, database=args.database,
                                 coap_port=coap_port, coap_host=args.coap_host, api_port=api_port, api_host=args.api_host,
                                 webhooks=tuple(args.webhook), trusted_keys=tuple(args.trust), broker_host=args.broker_host,
                                 worker=args.worker,
                                 broker_tls=(args.broker_cert, args.broker_key) if args.broker_cert and args.broker_key else None))
    signal.signal(signal.SIGTERM, _interrupt)
    server.start()
    coap = f", CoAP {server.coap.url}" if server.coap else ""
    print(f"fota serve: broker {server.broker_url}{coap}, data {server.config.data_dir}, prefix {args.prefix}", flush=True)
    if server.api:
        print(f"fota serve: console {server.api.url}/console/ (tokens in {server.api.tokens.path}), API {server.api.url}/docs",
              flush=True)
    try:
        server.supervise()  # returns only by raising: a service died (exit 70) or SIGTERM / Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        lock.release()
    return 0


def _refuse_taken(port: int | None, option: str, host: str = "127.0.0.1") -> None:
    """A port given on the command line that another process holds: say so before any service starts."""
    if port and not ports._free(host, port):
        raise UnavailableError(f"TCP port {port} ({option}) is in use", hint=f"stop what listens there, or give another {option}")


def _coap_port(host: str, asked: int | None) -> int:
    """The port asked for, or 5683 when it is free, else a free one (another server has 5683)."""
    if asked is not None:
        return asked
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, COAP_PORT))
        except OSError:
            print(f"fota serve: UDP port {COAP_PORT} is taken; CoAP on a free port (see serve.json)", file=sys.stderr)
            return 0
    return COAP_PORT


def _api_port(host: str, asked: int | None) -> int:
    """The port asked for, or 8470 when it is free, else a free one (serve.json says which)."""
    if asked is not None:
        return asked
    with socket.socket() as s:
        try:
            s.bind((host, API_PORT))
        except OSError:
            print(f"fota serve: TCP port {API_PORT} is taken; the HTTP API on a free port (see serve.json)", file=sys.stderr)
            return 0
    return API_PORT


def cmd_deploy(args) -> int:
    api = _api(args)
    if api is None:
        return _deploy_local(args)
    known = {d["id"]: d for d in api.get("/api/devices")}
    if args.device:
        _known_devices(args.device, known)
    else:
        _known_group(args.group, known.values())
    package = api.post("/api/packages", data=args.package.read_bytes())
    body = {"package": package["id"], "chunk": args.chunk, "policy": args.policy, "force": args.force}
    body |= {"devices": args.device} if args.device else {"group": args.group}
    made = api.post("/api/deploy", body)
    offers = made["offers"]
    _skipped(made.get("skipped") or [], bool(offers), quiet=args.json)
    if not args.json:
        for offer in offers:
            print(f"offer {offer['offer']}: {package['version']} (seq {package['sequence']}) -> {offer['device']}", flush=True)
    if args.follow:
        outcomes = _follow(api, offers, args.timeout, quiet=args.json)
        offers = [o | {"status": outcomes[o["device"]]} for o in offers]
    if args.json:
        print(json.dumps({"package": package["id"], "version": package["version"], "offers": offers}, indent=1))
    if args.follow and any(o["status"] != "SUCCEEDED" for o in offers):
        raise FotaError("not every device took the update: " + ", ".join(f"{o['device']} {o['status']}" for o in offers),
                        hint="fota devices shows each device's last error")
    return 0


def _skipped(skipped: list[dict], offered: bool, *, quiet: bool = False) -> None:
    """Say which devices were not offered the package (it rolled back on them); an error when none was."""
    for s in skipped if not quiet else ():
        print(f"skipped {s['device']}: {s['reason']}", file=sys.stderr)
    if skipped and not offered:
        raise FotaError(f"the package's image rolled back on every device asked for: {', '.join(s['device'] for s in skipped)}",
                        hint="fix the release (a new sequence), or --force to offer it anyway (the devices refuse it)")


def _known_devices(devices: list[str], known: dict) -> None:
    unknown = [d for d in devices if d not in known]
    if unknown:
        raise NotFoundError(f"unknown device(s): {', '.join(unknown)}",
                            hint="fota devices lists the known ones; a device is known once it has reported to fota serve")


def _known_group(group: str, devices) -> None:
    groups = sorted({g for d in devices for g in d["groups"]})
    if group not in groups:
        raise NotFoundError(f"no group {group!r}", hint=f"known groups: {', '.join(groups) or 'none yet (fota devices --assign)'}")


def _follow(api: ApiClient, offers: list[dict], timeout: float, *, quiet: bool = False) -> dict[str, str]:
    """Print each device's progress when it changes, until every offer has ended; {device: final status}."""
    from host_tools.protocol import FINAL

    ids = {o["device"]: o["offer"] for o in offers}
    done: dict[str, str] = {}
    last: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids):
        if time.monotonic() > deadline:
            raise FotaError(f"still waiting after {timeout:.0f} s: {', '.join(d for d in ids if d not in done)}",
                            hint="the offers stay; fota devices shows where they are", exit_code=EXIT_UNAVAILABLE)
        for device, offer_id in ids.items():
            if device in done:
                continue
            row = api.get(f"/api/devices/{device}")
            offer = next((o for o in row["offers"] if o["id"] == offer_id), None)
            status = offer["status"] if offer else "?"
            flight = row.get("in_flight") or {}
            have, total = flight.get("have"), flight.get("total")
            line = f"{device}: {status}" + (f" {100 * have // total}% ({have}/{total} chunks)" if have is not None and total else "")
            if line != last.get(device) and not quiet:
                print(line, flush=True)
            last[device] = line
            if status in FINAL:
                done[device] = status
        time.sleep(0.5)
    return done


def _deploy_local(args) -> int:
    data_dir = _data(args)
    info = running_server(data_dir)
    registry = open_registry(data_dir)
    store = PackageStore(data_dir / "packages")
    known = {d["id"]: d for d in registry.devices()}
    if args.device:
        _known_devices(args.device, known)
    else:
        _known_group(args.group, known.values())
    devices = args.device or [d["id"] for d in registry.devices(args.group)]
    raw = args.package.read_bytes()
    pid, package = store.add(raw)
    registry.add_package(pid, str(store.path(pid)), package.manifest)
    client = MqttService(registry, store, info["broker"], prefix=info["prefix"], client_id=f"fota-deploy-{time.time_ns()}",
                         serve=False, ca_file=info.get("ca"), auth=_server_login(registry))
    skipped = [] if args.force else [{"device": d, "reason": why} for d in devices if (why := registry.rolled_back_reason(d, pid))]
    devices = [d for d in devices if d not in {s["device"] for s in skipped}]
    _skipped(skipped, bool(devices))
    client.start()
    try:
        for device in devices:
            offer_id = client.offer(device, pid, chunk=args.chunk, policy=args.policy)
            print(f"offer {offer_id}: {package.manifest.version} (seq {package.manifest.sequence}) -> {device}")
    finally:
        client.stop()
    return 0


def cmd_devices(args) -> int:
    api = _api(args)
    if api is not None:
        if args.group:
            _known_group(args.group, api.get("/api/devices"))
        if args.assign:
            _check_assign(args, api.get("/api/devices"))
            api.put(f"/api/devices/{args.assign[0]}/groups", {"names": args.assign[1:]})
        rows = [device_record(d) for d in api.get("/api/devices", group=args.group)]
    else:
        running_server(_data(args))  # no server at all: exit 5 and say how to start one (never an empty table)
        registry = open_registry(_data(args))
        if args.group:
            _known_group(args.group, registry.devices())
        if args.assign:
            _check_assign(args, registry.devices())
            registry.set_groups(args.assign[0], args.assign[1:])
        rows = []
        for d in registry.devices(args.group):
            offers = registry.offers(d["id"])
            rows.append(device_record(d, {"id": offers[-1].id, "status": offers[-1].status} if offers else None))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(render_devices(rows))
    return 0


def _check_assign(args, devices: list[dict]) -> None:
    """--assign DEVICE GROUP...: a known device; a new group only with --create-group (a typo makes no group)."""
    if len(args.assign) < 2:
        raise FotaError("--assign takes a device and at least one group", exit_code=EXIT_USAGE)
    _known_devices(args.assign[:1], {d["id"]: d for d in devices})
    groups = {g for d in devices for g in d["groups"]}
    new = [g for g in args.assign[1:] if g not in groups]
    if new and not args.create_group:
        raise NotFoundError(f"no group {', '.join(map(repr, new))}",
                            hint=f"known groups: {', '.join(sorted(groups)) or 'none yet'}; add --create-group to make a new one")


def _server_login(registry) -> tuple[str, str]:
    """The server's broker login (docs/SECURITY.md): commands that publish offers log in as the server."""
    from host_tools.server.identity import Identities

    cred = Identities(registry).server_credentials()
    return cred.user, cred.password


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
