"""`fota keygen`, `fota keys export` and the key hierarchy: `root-init`, `add`, `revoke`, `list-sign`.

    fota keys root-init keys/root.pem                  # offline root + keys/keylist.json
    fota keys add keys/release.pub --list keys/keylist.json [--board sim]
    fota keys revoke keys/old.pub --list keys/keylist.json     # or a key id in hex
    fota keys list-sign --root keys/root.pem --list keys/keylist.json -o keys/keylist.bin
    fota keys export --root keys/root.pub keys/release.pub     # trusted_keys.py: ROOTS + KEYS
    fota sign ... --key keys/release.pem --key-list keys/keylist.bin   # the list rides in the package
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from host_tools.cli.args import output_file
from host_tools.errors import FotaError
from host_tools.image.keylist import KeyListState, root_init
from host_tools.image.keys import FileSigner, PublicKey, generate_key, trusted_keys_module


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="make an Ed25519 signing key (PEM, mode 0600) and its .pub")
    p.add_argument("key", type=Path, help="private key file to write, e.g. keys/release.pem")
    p.add_argument("--passphrase-env", metavar="VAR", help="encrypt the key with the passphrase in $VAR")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    p.set_defaults(handler=cmd_keygen)

    keys = sub.add_parser("keys", help="trusted keys for devices").add_subparsers(dest="keys_command", metavar="KEYSCOMMAND")
    keys.required = True
    p = keys.add_parser("export", help="write the device's trusted-keys module from public keys")
    p.add_argument("pubkeys", type=Path, nargs="*", help="public (or private) release key files to trust")
    p.add_argument("--root", type=Path, action="append", default=[], help="root public key whose key lists to trust")
    p.add_argument("-o", "--output", type=output_file, default=Path("trusted_keys.py"), help="module to write (default: trusted_keys.py)")
    p.set_defaults(handler=cmd_export)

    p = keys.add_parser("root-init", help="make the offline root key and an empty key list beside it (keylist.json)")
    p.add_argument("root", type=Path, help="root private key to write, e.g. keys/root.pem (keep it offline)")
    p.add_argument("--passphrase-env", metavar="VAR", help="encrypt the root key with the passphrase in $VAR")
    p.set_defaults(handler=cmd_root_init)

    p = keys.add_parser("add", help="allow a release key in the key list (signed by list-sign)")
    p.add_argument("pubkey", type=Path, help="the release key's public (or private) key file")
    p.add_argument("--list", type=Path, required=True, dest="state", help="keylist.json (from root-init)")
    p.add_argument("--board", default="", help="the board it may sign for (default: any)")
    p.set_defaults(handler=cmd_add)

    p = keys.add_parser("revoke", help="revoke a release key (its packages are refused once a device sees the list)")
    p.add_argument("key", help="public key file, or a key id in hex")
    p.add_argument("--list", type=Path, required=True, dest="state", help="keylist.json (from root-init)")
    p.set_defaults(handler=cmd_revoke)

    p = keys.add_parser("list-sign", help="sign the next key-list version with the root key")
    p.add_argument("--root", type=Path, required=True, help="root private key")
    p.add_argument("--passphrase-env", metavar="VAR", help="the root key's passphrase is in this environment variable")
    p.add_argument("--list", type=Path, required=True, dest="state", help="keylist.json (from root-init)")
    p.add_argument("-o", "--output", type=output_file, required=True, help="signed key list to write, e.g. keys/keylist.bin")
    p.set_defaults(handler=cmd_list_sign)

    p = keys.add_parser("push", help="send a signed key list to devices now, without new firmware (retained)")
    p.add_argument("keylist", type=Path, help="a signed key list (from list-sign)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", action="append", help="device id (repeatable)")
    target.add_argument("--group", help="every device in this group")
    p.add_argument("--data", type=Path, help="the server's data directory (default: $FOTA_HOME/server)")
    p.add_argument("--server", help="the fota API, http://HOST:PORT (default: $FOTA_SERVER, else the local fota serve)")
    p.add_argument("--token", help="API token (default: $FOTA_TOKEN, else the local server's operator token)")
    p.set_defaults(handler=cmd_push)


def passphrase_from_env(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise FotaError(f"environment variable {var} is empty or not set")
    return value.encode()


def cmd_keygen(args) -> int:
    signer = generate_key(args.key, passphrase_from_env(args.passphrase_env), overwrite=args.force)
    print(f"wrote {args.key} (private, mode 0600) and {args.key.with_suffix('.pub')}; key id {signer.public_key.key_id.hex()}")
    return 0


def cmd_export(args) -> int:
    keys = [PublicKey.load(p) for p in args.pubkeys]
    roots = [PublicKey.load(p) for p in args.root]
    args.output.write_text(trusted_keys_module(keys, roots))
    ids = ", ".join(k.key_id.hex() for k in keys) or "-"
    print(f"wrote {args.output}: {len(keys)} trusted key(s): {ids}; {len(roots)} root(s)")
    return 0


def cmd_root_init(args) -> int:
    state = root_init(args.root, passphrase_from_env(args.passphrase_env))
    print(f"wrote {args.root} (root key {state.root_id.hex()}: keep it offline) and {state.path}")
    return 0


def cmd_add(args) -> int:
    state = KeyListState.load(args.state)
    key = PublicKey.load(args.pubkey)
    state.add(key, args.board)
    state.save()
    print(f"{args.state}: key {key.key_id.hex()} may sign for {args.board or 'any board'} (sign the list to ship it)")
    return 0


def cmd_revoke(args) -> int:
    state = KeyListState.load(args.state)
    path = Path(args.key)
    if path.exists():
        kid = PublicKey.load(path).key_id
    else:
        try:
            kid = bytes.fromhex(args.key)
        except ValueError:
            kid = b""
        if len(kid) != 8:
            raise FotaError(f"{args.key}: neither a key file nor an 8-byte key id in hex")
    state.revoke(kid)
    state.save()
    print(f"{args.state}: key {kid.hex()} revoked (sign the list and ship it in the next package)")
    return 0


def cmd_list_sign(args) -> int:
    state = KeyListState.load(args.state)
    blob = state.sign(FileSigner.load(args.root, passphrase_from_env(args.passphrase_env)))
    args.output.write_bytes(blob)
    print(f"wrote {args.output}: key list v{state.version}, {len(state.keys)} key(s), {len(state.revoked)} revoked")
    return 0


def cmd_push(args) -> int:
    from host_tools.errors import UnavailableError
    from host_tools.server.api.client import ApiClient
    from host_tools.server.service import default_data_dir

    raw = args.keylist.read_bytes()
    api = ApiClient.locate(args.data or default_data_dir(args.home), url=args.server, token=args.token)
    if api is None:
        raise UnavailableError("fota keys push needs a running fota serve with its HTTP API",
                               hint="start one with: fota serve (or name a remote one with --server URL / $FOTA_SERVER)")
    body = {"keylist": raw.hex()} | ({"devices": args.device} if args.device else {"group": args.group})
    sent = api.post("/api/keylist", body)
    print(f"key list v{sent['version']} sent to {len(sent['devices'])} device(s): {', '.join(sent['devices'])}")
    return 0
