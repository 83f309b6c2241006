"""`fota keygen` and `fota keys export`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from host_tools.errors import FotaError
from host_tools.image.keys import PublicKey, generate_key, trusted_keys_module


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="make an Ed25519 signing key (PEM, mode 0600) and its .pub")
    p.add_argument("key", type=Path, help="private key file to write, e.g. keys/release.pem")
    p.add_argument("--passphrase-env", metavar="VAR", help="encrypt the key with the passphrase in $VAR")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    p.set_defaults(handler=cmd_keygen)

    keys = sub.add_parser("keys", help="trusted keys for devices").add_subparsers(dest="keys_command", metavar="KEYSCOMMAND")
    keys.required = True
    p = keys.add_parser("export", help="write the device's trusted-keys module from public keys")
    p.add_argument("pubkeys", type=Path, nargs="+", help="public (or private) key files to trust")
    p.add_argument("-o", "--output", type=Path, default=Path("trusted_keys.py"))
    p.set_defaults(handler=cmd_export)


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
    args.output.write_text(trusted_keys_module(keys))
    ids = ", ".join(k.key_id.hex() for k in keys)
    print(f"wrote {args.output}: {len(keys)} trusted key(s): {ids}")
    return 0
