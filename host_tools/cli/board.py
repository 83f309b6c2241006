"""`fota flash`, `fota provision`, `fota console`: a board on USB (or sim:NAME)."""

from __future__ import annotations

import argparse
from pathlib import Path

from host_tools.errors import EXIT_USAGE, FotaError
from host_tools.sim import ports


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flash", help="first USB flash of an app image (esptool), or sim:NAME")
    p.add_argument("image", type=Path, help="an app image (fota build) or a merged firmware.bin")
    p.add_argument("--port", required=True, help="serial port (/dev/ttyUSB0) or sim:NAME")
    p.add_argument("--board", default=None, help="board definition (default: esp32_generic; a sim board knows its own)")
    p.add_argument("--baud", type=int, default=460800, help="esptool's baud rate (default: 460800)")
    p.set_defaults(handler=cmd_flash)

    p = sub.add_parser("provision", help="write the device's configuration over mpremote and read it back")
    p.add_argument("--port", required=True, help="serial port or sim:NAME (a running virtual board)")
    p.add_argument("--board", default=None, help="board definition (default: a sim board's own, else esp32_generic)")
    p.add_argument("--hw-rev", default=None, help="hardware revision (default: a sim board's own, else the board's first)")
    p.add_argument("--server", default=None,
                   help="mqtt://HOST:PORT or mqtts://HOST:PORT as the device reaches it (default for sim:NAME: the local fota serve)")
    p.add_argument("--device-id", help="default: the chip's unique id in hex")
    p.add_argument("--wifi-ssid", help="Wi-Fi network the board joins")
    p.add_argument("--wifi-key", default="", help="its passphrase")
    p.add_argument("--ca", type=Path, help="CA certificate (PEM) the device checks an mqtts:// server against")
    p.add_argument("--trust", type=Path, action="append", default=[], help="public key to trust (writes trusted_keys.py)")
    p.add_argument("--no-reset", action="store_true", help="do not reset the board afterwards")
    p.add_argument("--data", type=Path, help="the server data directory whose registry enrols the device (default: $FOTA_HOME/server)")
    p.add_argument("--credentials", type=Path, help="the device's credentials from `fota device enroll -o FILE` (instead of enrolling here)")
    p.set_defaults(handler=cmd_provision)

    p = sub.add_parser("console", help="the device's console (mpremote's REPL)")
    p.add_argument("--port", required=True, help="serial port or sim:NAME")
    p.set_defaults(handler=cmd_console)


def cmd_flash(args) -> int:
    board = args.board or ("sim" if ports.is_sim(args.port) else "esp32_generic")
    import sys

    print(ports.flash(args.port, args.image, board=board, home=args.home, baud=args.baud, progress=sys.stdout))
    return 0


def cmd_provision(args) -> int:
    from host_tools.device.provision import DeviceConfig, provision
    from host_tools.image.keys import PublicKey

    ca = None
    if args.ca:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        ca = x509.load_pem_x509_certificate(args.ca.read_bytes()).public_bytes(Encoding.DER)
    board, hw_rev, server = _target_defaults(args)
    config = DeviceConfig(
        board=board, hw_rev=hw_rev, server=server, device_id=args.device_id,
        wifi=(args.wifi_ssid, args.wifi_key) if args.wifi_ssid else None, ca_der=ca,
        trusted=[PublicKey.load(p) for p in args.trust],
    )
    back = provision(args.port, config, reset=not args.no_reset, resolve=lambda port: ports.resolve_port(port, args.home),
                     enroll=_enroller(args))
    shown = {k: ("***" if k in ("wifi", "password", "key") else v) for k, v in back.items()}
    print(f"provisioned {args.port}: {shown}")
    return 0


def _enroller(args):
    """The device's identity (docs/SECURITY.md): from --credentials, else enrolled in the server's registry now."""
    import json

    if args.credentials:
        given = json.loads(args.credentials.read_text())
        return lambda device_id: {k: given[k] for k in ("device_id", "user", "password", "key")}
    from host_tools.server.identity import Identities
    from host_tools.server.service import default_data_dir, open_registry

    ids = Identities(open_registry(args.data or default_data_dir(args.home)))
    return lambda device_id: ids.enroll(device_id).device_config()


def _target_defaults(args) -> tuple[str, str, str]:
    """Board, hardware revision and server for provision: given, else what the target says (a sim board knows
    its board and revision; the local fota serve its broker), else esp32_generic and its first revision."""
    from host_tools.esp import boards
    from host_tools.server.service import default_data_dir, running_server

    sim_config = {}
    if ports.is_sim(args.port):
        from host_tools.sim.device import SimDevice

        sim_config = SimDevice.open(args.port.split(":", 1)[1], args.home).config
    board = args.board or sim_config.get("board") or "esp32_generic"
    hw_rev = args.hw_rev or sim_config.get("hw_rev") or boards.load(board).hw_revs[0]
    server = args.server
    if server is None:
        if not sim_config:
            raise FotaError("give --server mqtt://HOST:PORT: the address of fota serve's broker as the board reaches it",
                            exit_code=EXIT_USAGE)
        server = running_server(default_data_dir(args.home))["broker"]
    return board, hw_rev, server


def cmd_console(args) -> int:
    import os
    import sys

    device = ports.resolve_port(args.port, args.home)
    mpremote = str(Path(sys.executable).with_name("mpremote"))
    os.execv(mpremote, [mpremote, "connect", device, "repl"])
    return 0
