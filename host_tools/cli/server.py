"""`fota serve`, `fota deploy`, `fota devices`.

deploy and devices are clients of the server's HTTP API (--server/--token, $FOTA_SERVER/$FOTA_TOKEN,
else the local server's serve.json and operator token); without the API they use the local registry.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from pathlib import Path

from host_tools.errors import FotaError
from host_tools.protocol import POLICIES
from host_tools.server.api.client import ApiClient
from host_tools.server.mqtt_service import MqttService
from host_tools.server.packages import PackageStore
from host_tools.server.service import Server, ServerConfig, default_data_dir, open_registry, running_server

COAP_PORT = 5683  # RFC 7252 12.6
API_PORT = 8470  # the HTTP API and console by default


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the update server (MQTT; an embedded broker unless --broker)")
    p.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT of an MQTT 3.1.1 broker (default: embedded amqtt on loopback)")
    p.add_argument("--ca", help="CA certificate (PEM) that signed an mqtts:// broker's certificate")
    p.add_argument("--port", type=int, default=0, help="embedded broker port (default: a free one)")
    p.add_argument("--data", type=Path, help="data directory (default: $FOTA_HOME/server)")
    p.add_argument("--prefix", default="fota", help="topic prefix")
    p.add_argument("--database", help="postgresql://USER@HOST/DB for the registry (default: SQLite in the data directory)")
    p.add_argument("--coap-port", type=int, default=None,
                   help="CoAP (UDP) port, docs/COAP.md (default: 5683, or a free one if 5683 is taken; 0: a free one)")
    p.add_argument("--coap-host", default="127.0.0.1", help="address CoAP listens on (default: loopback)")
    p.add_argument("--no-coap", action="store_true", help="serve MQTT only")
    p.add_argument("--api-port", type=int, default=None,
                   help="HTTP API and web console port (default: 8470, or a free one if 8470 is taken; 0: a free one)")
    p.add_argument("--api-host", default="127.0.0.1", help="address the HTTP API listens on (default: loopback)")
    p.add_argument("--no-api", action="store_true", help="no HTTP API and console")
    p.add_argument("--webhook", action="append", default=[], help="URL that gets campaign events (repeatable)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("deploy", help="offer a package to devices now")
    p.add_argument("package", type=Path)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", action="append", help="device id (repeatable)")
    target.add_argument("--group", help="every device in this group")
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--policy", choices=sorted(POLICIES), default="auto")
    p.add_argument("--data", type=Path)
    _remote(p)
    p.set_defaults(handler=cmd_deploy)

    p = sub.add_parser("devices", help="list devices with version, state and last error")
    p.add_argument("--data", type=Path)
    p.add_argument("--group")
    p.add_argument("--json", action="store_true")
    p.add_argument("--assign", nargs="+", metavar=("DEVICE", "GROUP"), help="put DEVICE in GROUP(s)")
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
    coap_port = None if args.no_coap else _coap_port(args.coap_host, args.coap_port)
    api_port = None if args.no_api else _api_port(args.api_host, args.api_port)
    server = Server(ServerConfig(_data(args), broker_url=args.broker, prefix=args.prefix, broker_port=args.port, broker_ca=args.ca, database=args.database,
                                 coap_port=coap_port, coap_host=args.coap_host, api_port=api_port, api_host=args.api_host,
                                 webhooks=tuple(args.webhook), trusted_keys=tuple(args.trust), broker_host=args.broker_host,
                                 broker_tls=(args.broker_cert, args.broker_key) if args.broker_cert and args.broker_key else None))
    signal.signal(signal.SIGTERM, _interrupt)
    server.start()
    coap = f", CoAP {server.coap.url}" if server.coap else ""
    print(f"fota serve: broker {server.broker_url}{coap}, data {server.config.data_dir}, prefix {args.prefix}", flush=True)
    if server.api:
        print(f"fota serve: console {server.api.url}/console/ (tokens in {server.api.tokens.path}), API {server.api.url}/docs",
              flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    lock = DataDirLock.acquire(_data(args))  # one fota serve per data directory (serve.json is its)
    broker_port = 0
    if args.broker is None:
        _refuse_taken(args.port, "--port")
        broker_port, note = ports.broker_port(_data(args), args.broker_host, args.port)
        if note:
            print(f"fota serve: {note}", file=sys.stderr)
    _refuse_taken(args.api_port, "--api-port", args.api_host)
    finally:
        server.stop()
    return 0


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
    if api is not None:
        package = api.post("/api/packages", data=args.package.read_bytes())
        body = {"package": package["id"], "chunk": args.chunk, "policy": args.policy}
        body |= {"devices": args.device} if args.device else {"group": args.group}
        for offer in api.post("/api/deploy", body)["offers"]:
            print(f"offer {offer['offer']}: {package['version']} (seq {package['sequence']}) -> {offer['device']}")
        return 0
    data_dir = _data(args)
    info = running_server(data_dir)
    registry = open_registry(data_dir)
    store = PackageStore(data_dir / "packages")
    devices = args.device or [d["id"] for d in registry.devices(args.group)]
    if not devices:
        raise FotaError(f"no devices in group {args.group!r}")
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
        if args.assign:
            api.put(f"/api/devices/{args.assign[0]}/groups", {"names": args.assign[1:]})
        rows = api.get("/api/devices", group=args.group)
        last = {d["id"]: d.get("last_offer") for d in rows}
        for d in rows:
            d.pop("last_offer", None)
            d["errors"] = json.dumps(d["errors"])
    else:
        registry = open_registry(_data(args))
        if args.assign:
            registry.set_groups(args.assign[0], args.assign[1:])
        rows = registry.devices(args.group)
        last = {}
        for d in rows:
            offers = registry.offers(d["id"])
            last[d["id"]] = {"id": offers[-1].id, "status": offers[-1].status} if offers else None
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'device':<14} {'board':<8} {'hw':<3} {'version':<9} {'seq':>4} {'state':<11} {'offer':<24} last error")
    for d in rows:
        offer = f"{last[d['id']]['id']}:{last[d['id']]['status']}" if last.get(d["id"]) else "-"
        errors = json.loads(d["errors"] or "[]")
        err = f"{errors[-1][0]} {errors[-1][1]}" if errors else "-"
        state = {0: "idle", 1: "downloading", 2: "downloaded", 3: "updating"}.get(d["state"], "-")
        print(f"{d['id']:<14} {d['board'] or '-':<8} {d['hw_rev'] or '-':<3} {d['version'] or '-':<9} "
              f"{d['seq'] if d['seq'] is not None else '-':>4} {state:<11} {offer:<24} {err}")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
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


