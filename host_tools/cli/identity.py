"""`fota device`, `fota broker-files`, `fota ca`: identities, broker logins and TLS certificates (docs/SECURITY.md).

    fota device enroll a1b2c3 -o a1b2c3.json      # a device's credentials (fota provision does this itself)
    fota device revoke a1b2c3                     # no broker login, no report accepted from now on
    fota device list
    fota device enroll-gateway lab1 --device a1b2c3 --device d4e5f6 -o lab1.json   # then fota gateway --credentials
    fota broker-files --out /etc/mosquitto/fota   # password and ACL files of mosquitto's two listeners (then SIGHUP it)
    fota ca init ca/                              # a P-256 CA for the broker's TLS
    fota ca issue-server ca/ --host broker.lan --host 192.168.1.10 -o broker   # broker.pem + broker.key
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from host_tools.server.identity import Credentials, Identities
from host_tools.server.service import default_data_dir, open_registry


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("device", help="device and gateway identities: enroll, revoke, list")
    dsub = p.add_subparsers(dest="device_cmd", required=True)
    e = dsub.add_parser("enroll", help="new credentials for a device (its old ones stop working)")
    e.add_argument("device", help="the device id (default on the board: its unique id in hex)")
    _common(e)
    e.set_defaults(handler=cmd_enroll)
    g = dsub.add_parser("enroll-gateway", help="a broker login for a gateway that relays for these devices")
    g.add_argument("name", help="the gateway's name (its login is gw-NAME)")
    g.add_argument("--device", action="append", required=True, help="a device it relays for (repeatable)")
    _common(g)
    g.set_defaults(handler=cmd_enroll_gateway)
    r = dsub.add_parser("revoke", help="the device (or gw-NAME) can no longer log in or report")
    r.add_argument("device", help="the device id, or gw-NAME for a gateway")
    r.add_argument("--data", type=Path, help="the server's data directory whose registry holds the identities (default: $FOTA_HOME/server)")
    r.set_defaults(handler=cmd_revoke)
    ls = dsub.add_parser("list", help="identities: kind, revoked, last report counter")
    ls.add_argument("--data", type=Path, help="the server's data directory whose registry holds the identities (default: $FOTA_HOME/server)")
    ls.set_defaults(handler=cmd_list)

    b = sub.add_parser("broker-files", help="mosquitto's password and ACL files (devices' and server's listeners) from the registry's identities")
    b.add_argument("--out", type=Path, required=True, help="directory for fota.passwd, fota.acl, fota-server.passwd, fota-server.acl")
    b.add_argument("--data", type=Path, help="the server's data directory whose registry holds the identities (default: $FOTA_HOME/server)")
    b.add_argument("--prefix", default="fota", help="the topic prefix the ACLs cover (default: fota)")
    b.set_defaults(handler=cmd_broker_files)

    c = sub.add_parser("ca", help="a CA and server certificates for the broker's TLS (cryptography)")
    csub = c.add_subparsers(dest="ca_cmd", required=True)
    i = csub.add_parser("init", help="a new P-256 CA in DIR (ca.pem, ca.key mode 0600, ca.der for devices)")
    i.add_argument("dir", type=Path, help="directory for the CA (created)")
    i.add_argument("--cn", default="fota CA", help="the CA certificate's common name (default: fota CA)")
    i.set_defaults(handler=cmd_ca_init)
    s = csub.add_parser("issue-server", help="a server certificate signed by the CA in DIR")
    s.add_argument("dir", type=Path, help="the CA's directory (fota ca init)")
    s.add_argument("--host", action="append", required=True, help="DNS name or IP address of the broker (repeatable)")
    s.add_argument("-o", "--out", type=Path, required=True, help="writes OUT.pem and OUT.key")
    s.add_argument("--days", type=int, default=825, help="validity in days (default: 825)")
    s.set_defaults(handler=cmd_ca_issue)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="the server's data directory (default: $FOTA_HOME/server)")
    p.add_argument("-o", "--out", type=Path, help="write the credentials here (JSON, mode 0600) instead of stdout")


def _identities(args) -> Identities:
    data = args.data or default_data_dir(args.home)
    return Identities(open_registry(data), getattr(args, "prefix", "fota"))


def _emit(cred: Credentials, out: Path | None, extra: dict) -> None:
    text = json.dumps(cred.device_config() | extra, indent=1) + "\n"
    if out is None:
        print(text, end="")
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    print(f"{cred.user}: credentials in {out} (keep them secret)")


def cmd_enroll(args) -> int:
    _emit(_identities(args).enroll(args.device), args.out, {})
    return 0


def cmd_enroll_gateway(args) -> int:
    cred = _identities(args).enroll_gateway(args.name, args.device)
    _emit(cred, args.out, {"devices": args.device})
    return 0


def cmd_revoke(args) -> int:
    _identities(args).revoke(args.device)
    print(f"{args.device}: revoked (the embedded broker refuses it and closes its connection now; for mosquitto run "
          "fota broker-files and SIGHUP it, which does both)")
    return 0


def cmd_list(args) -> int:
    for row in _identities(args).principals():
        state = "REVOKED" if row["revoked"] else "active"
        extra = f" devices {row['devices']}" if row["devices"] else ""
        print(f"{row['id']:<20} {row['kind']:<8} {state:<8} counter {row['counter']}{extra}")
    return 0


def cmd_broker_files(args) -> int:
    ids = _identities(args)
    ids.server_credentials()  # the server's own login is in the files too
    args.out.mkdir(parents=True, exist_ok=True)
    passwd, acl, server_passwd, server_acl = ids.write_mosquitto(args.out)
    print(f"wrote {passwd}, {acl} (the devices' listener) and {server_passwd}, {server_acl} (the server's); "
          "mosquitto.conf: docs/DEPLOY.md; then reload mosquitto (SIGHUP)")
    return 0


def cmd_ca_init(args) -> int:
    from host_tools.server.ca import init_ca

    paths = init_ca(args.dir, args.cn)
    print(f"CA in {args.dir}: {paths.cert.name}, {paths.key.name} (0600), {paths.der.name} (for device config 'ca')")
    return 0


def cmd_ca_issue(args) -> int:
    from host_tools.server.ca import issue_server

    cert, key = issue_server(args.dir, args.host, args.out, days=args.days)
    print(f"server certificate {cert} and key {key} for {', '.join(args.host)}")
    return 0
