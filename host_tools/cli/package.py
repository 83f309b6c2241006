"""`fota build`, `fota sign`, `fota inspect`, `fota verify`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from host_tools.cli.args import non_negative_int, output_file
from host_tools.cli.keys import passphrase_from_env
from host_tools.errors import EXIT_USAGE, FotaError
from host_tools.esp import boards
from host_tools.esp.app_image import parse_app_image
from host_tools.image.build import BuildSpec, build_image
from host_tools.image.guards import SequenceHistory, hw_revs_choice
from host_tools.image.keylist import KeyListError, parse_key_list
from host_tools.image.keys import FileSigner, PublicKey, private_key_exposed
from host_tools.image.package import Manifest, VerifyError, decode_payload, load_base, make_package, parse_package, verify_package


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build (sim) or validate (real board) the app image an update carries")
    p.add_argument("--board", default="sim", help="board definition under boards/ (default: sim)")
    p.add_argument("--app", type=Path, help="sim: directory of application modules to freeze beside firmware/ (fota init makes one)")
    p.add_argument("--image", type=Path, help="an app image to validate instead of building one (micropython.bin for a real board)")
    p.add_argument("--version", default=None, help="sim: version string for esp_app_desc_t (default: VERSION in the app's app.py)")
    p.add_argument("--trust", type=Path, action="append", default=[], help="sim: public key the firmware trusts (repeatable)")
    p.add_argument("--root", type=Path, action="append", default=[], help="sim: root key whose key lists the firmware trusts")
    p.add_argument("--sequence", type=non_negative_int, default=0,
                   help="stamp esp_app_desc_t.secure_version (the sequence the package will carry)")
    p.add_argument("--no-trust", action="store_true",
                   help="sim: freeze no trusted keys (the board gets trusted_keys.py from fota provision --trust)")
    p.add_argument("--no-agent", action="store_true",
                   help="sim: a stock image without the frozen agent (install it with mpremote mip; see README)")
    p.add_argument("-o", "--output", type=output_file, required=True, help="app image file to write")
    p.set_defaults(handler=cmd_build)

    p = sub.add_parser("sign", help="make a signed update package from an app image")
    p.add_argument("image", type=Path, help="the app image (fota build's output, or micropython.bin)")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    p.add_argument("--passphrase-env", metavar="VAR", help="the key's passphrase is in this environment variable")
    p.add_argument("--board", default="sim", help="board the package is for (default: sim)")
    p.add_argument("--version", default=None,
                   help="release version (default: the image's own app version; a different one is refused)")
    p.add_argument("--sequence", type=non_negative_int, required=True, help="anti-rollback counter; must grow with every release")
    p.add_argument("--hw-rev", action="append", default=[],
                   help="compatible hardware revision (repeatable, required; '*' = every revision, must be asked for)")
    p.add_argument("--key-list", type=Path, help="signed key list (fota keys list-sign) to carry; the key must be in it")
    p.add_argument("--force", action="store_true", help="sign a sequence far above the last one signed for this board")
    p.add_argument("--encoding", choices=("raw", "zlib", "delta"), default=None,
                   help="payload encoding (zlib: fewer bytes, more device CPU: it pays on slow links, not on Wi-Fi, docs/BOARD.md; delta: only what changed from --base); default raw")
    p.add_argument("--base", type=Path, help="delta: the image devices run now (app image, or the .fota it came from)")
    p.add_argument("--min-version", help="devices must run at least this version")
    p.add_argument("--expires-in", type=float, metavar="DAYS", help="refuse the package after this many days")
    p.add_argument("--notes", help="release notes (informational)")
    p.add_argument("-o", "--output", type=output_file, required=True, help="package file to write (.fota)")
    p.set_defaults(handler=cmd_sign)

    p = sub.add_parser("inspect", help="print a package's header, manifest and image; exit 3 if the image is invalid")
    p.add_argument("package", type=Path, help="a .fota package")
    p.add_argument("--json", action="store_true", help="the same fields as JSON")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("verify", help="check a package's signature, digests and image; non-zero exit on failure")
    p.add_argument("package", type=Path, help="a .fota package")
    p.add_argument("--pubkey", type=Path, action="append", required=True, help="trusted public key (repeatable)")
    p.add_argument("--base", type=Path, help="a delta's base image (or its .fota): rebuild and check the new image")
    p.set_defaults(handler=cmd_verify)


def cmd_build(args) -> int:
    sim_build = boards.load(args.board).name == "sim" and args.image is None
    if sim_build and not args.no_agent and not args.trust and not args.no_trust:
        raise FotaError("this firmware would trust no signing key, so it would refuse every update",
                        hint="give --trust keys/release.pub (or --no-trust when fota provision --trust installs the keys)",
                        exit_code=EXIT_USAGE)
    version = args.version
    if version is None:
        version = app_version(args.app) if args.app else ""
    spec = BuildSpec(
        board=args.board, version=version, app_dir=args.app, image=args.image,
        trusted_keys=tuple(PublicKey.load(p) for p in args.trust), agent=not args.no_agent,
        root_keys=tuple(PublicKey.load(p) for p in args.root), secure_version=args.sequence,
    )
    image = build_image(spec)
    args.output.write_bytes(image)
    what = f"version {version}, " if sim_build and version else ""
    print(f"wrote {args.output}: {len(image)} bytes, {what}valid app image for board {args.board}")
    return 0


def app_version(app_dir: Path) -> str:
    """VERSION from the application's app.py (what the agent reports), without importing it."""
    import ast

    source = app_dir / "app.py"
    if not source.exists():
        return ""
    try:
        tree = ast.parse(source.read_text(), str(source))
    except SyntaxError as exc:
        raise FotaError(f"{source}:{exc.lineno}: syntax error: {exc.msg}", hint="fix the application before building") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "VERSION" for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    return ""


def cmd_sign(args) -> int:
    board = boards.load(args.board)
    image = args.image.read_bytes()
    own = parse_app_image(image, chip_id=board.chip_id, chip_rev=board.chip_rev).app_desc
    own_version = own.version if own else ""
    if args.version is None:
        if not own_version:
            raise FotaError(f"{args.image} carries no version of its own", hint="give --version", exit_code=EXIT_USAGE)
        args.version = own_version
    elif own_version and own_version.lstrip("v") != args.version.lstrip("v"):
        raise FotaError(f"--version {args.version} differs from the image's own version {own_version}",
                        hint=f"sign it as {own_version}, or rebuild the image with --version {args.version}", exit_code=EXIT_USAGE)
    hw_revs = hw_revs_choice(args.hw_rev)
    history = SequenceHistory.beside(args.key)
    history.check(board.name, args.sequence, force=args.force)
    if private_key_exposed(args.key):
        print(f"warning: {args.key} is readable by other users (chmod 600 {args.key})", file=sys.stderr)
    signer = FileSigner.load(args.key, passphrase_from_env(args.passphrase_env))
    key_list = None
    if args.key_list is not None:
        key_list = args.key_list.read_bytes()
        why = parse_key_list(key_list).allows(signer.public_key, board.name)
        if why:
            raise KeyListError(f"refusing to sign: {why}", hint="sign with a key the current key list allows")
    now = int(time.time())
    manifest = Manifest(
        sequence=args.sequence, version=args.version, board=board.name, chip_id=board.chip_id,
        hw_revs=hw_revs, image_size=0, image_sha256=b"",
        min_version=args.min_version, created=now, notes=args.notes, key_list=key_list,
        expires=None if args.expires_in is None else now + int(args.expires_in * 86400),
    )
    from host_tools.image.build import check_app_image

    check_app_image(image, board)
    base = None
    if args.base is not None:
        base = load_base(args.base.read_bytes())
        args.encoding = args.encoding or "delta"
    if (args.encoding == "delta") != (base is not None):
        raise FotaError("--encoding delta and --base go together", hint="fota sign new.bin --base old.bin ...", exit_code=EXIT_USAGE)
    package = make_package(image, manifest, signer, encoding=args.encoding or "raw", base=base)
    args.output.write_bytes(package.to_bytes())
    history.record(board.name, args.sequence)
    print(f"wrote {args.output}: {args.version} seq {args.sequence} for {board.name}, {package.manifest.encoding_name} payload "
          f"{len(package.payload)} bytes (image {len(image)}), key id {package.key_id.hex()}")
    return 0


class _Delta(Exception):
    """inspect: a delta's image is not in the package (it is made from the device's base)."""


def cmd_inspect(args) -> int:
    package = parse_package(args.package.read_bytes())
    m = package.manifest
    rows = [
        ("format", "fota package v1, Ed25519"),
        ("key id", package.key_id.hex()),
        ("manifest", f"{len(package.manifest_bytes)} bytes"),
        ("sequence", m.sequence),
        ("version", m.version),
        ("board", f"{m.board} (chip id {m.chip_id})"),
        ("hw revisions", ", ".join(m.hw_revs)),
        ("image", f"{m.image_size} bytes, sha256 {m.image_sha256.hex()}"),
        ("encoding", m.encoding_name + (f" (wbits {m.zlib_wbits})" if m.zlib_wbits else "")),
        ("payload", f"{m.encoded_size} bytes" + (f", sha256 {m.encoded_sha256.hex()}" if m.encoded_sha256 else "")),
        ("min version", m.min_version or "-"),
        ("expires", _when(m.expires)),
        ("created", _when(m.created)),
        ("notes", m.notes or "-"),
        ("key list", _key_list_row(m.key_list)),
    ]
    if m.base_sha256 is not None:
        rows.append(("delta base", f"{m.base_size} bytes, sha256 {m.base_sha256.hex()}; patch {m.patch_size} bytes"))
    for tag, value in m.unknown:
        rows.append((f"record 0x{tag:02x}", value.hex()))
    invalid = None
    try:
        if m.base_sha256 is not None:
            raise _Delta
        info = parse_app_image(decode_payload(package), chip_id=m.chip_id)
        desc = info.app_desc
        rows.append(("app image", f"{len(info.segments)} segment(s), checksum and SHA-256 valid"))
        if desc:
            rows.append(("app desc", f"project {desc.project_name or '-'} version {desc.version or '-'} idf {desc.idf_ver}"))
    except _Delta:
        rows.append(("app image", "made on the device from its base (fota verify --base checks it)"))
    except Exception as exc:  # noqa: BLE001 - inspect shows what it can, then exits non-zero
        invalid = str(exc)
        rows.append(("app image", f"INVALID: {exc}"))
    if args.json:
        print(json.dumps(dict(rows), indent=1, default=str))
    else:
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    if invalid is not None:
        raise VerifyError(f"{args.package}: the app image is invalid: {invalid}")
    return 0


def cmd_verify(args) -> int:
    package = parse_package(args.package.read_bytes())
    base = None
    if args.base is not None:
        base = load_base(args.base.read_bytes())
    report = verify_package(package, [PublicKey.load(p) for p in args.pubkey], base=base)
    for note in report.notes:
        print(f"ok: {note}")
    if not report.ok:
        raise VerifyError("; ".join(report.problems))
    print(f"{args.package}: verified")
    return 0


def _key_list_row(blob: bytes | None) -> str:
    if blob is None:
        return "- (checked against the firmware's trusted keys)"
    kl = parse_key_list(blob)
    return f"v{kl.version}, root {kl.root_id.hex()}, {len(kl.keys)} key(s), {len(kl.revoked)} revoked"


def _when(stamp: int | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))
