"""`fota gateway`: serve CoAP devices from a central MQTT fota server (host_tools.server.gateway)."""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

from host_tools.errors import FotaError
from host_tools.server.gateway import Gateway, GatewayConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="serve local CoAP devices with offers and packages from an upstream MQTT server")
    p.add_argument("--upstream", required=True, help="mqtt://HOST:PORT (or mqtts://) of the central server's broker")
    p.add_argument("--device", action="append", required=True, help="a local device id the gateway acts for (repeatable)")
    p.add_argument("--coap-port", type=int, default=5683, help="CoAP (UDP) port for the devices (0: a free one)")
    p.add_argument("--coap-host", default="127.0.0.1", help="address CoAP listens on (the devices' network)")
    p.add_argument("--data", type=Path, help="gateway directory: payload cache (default: $FOTA_HOME/gateway)")
    p.add_argument("--prefix", default="fota", help="topic and resource prefix")
    p.add_argument("--ca", help="CA certificate (PEM) that signed an mqtts:// broker's certificate")
    p.add_argument("--credentials", type=Path, help="the gateway's broker login (from fota device enroll-gateway)")
    p.set_defaults(handler=cmd_gateway)


def cmd_gateway(args) -> int:
    from host_tools.server.service import default_data_dir

    data = args.data or default_data_dir(args.home).parent / "gateway"
    if any("/" in d or not d for d in args.device):
        raise FotaError("a device id cannot be empty or contain '/'")
    auth = None
    if args.credentials:
        cred = json.loads(args.credentials.read_text())
        auth = (cred["user"], cred["password"])
    gw = Gateway(GatewayConfig(upstream=args.upstream, data_dir=data, devices=args.device, prefix=args.prefix,
                               coap_host=args.coap_host, coap_port=args.coap_port, ca_file=args.ca, auth=auth))
    signal.signal(signal.SIGTERM, _interrupt)
    gw.start()
    print(f"fota gateway: upstream {args.upstream}, CoAP {gw.coap.url}, devices {', '.join(args.device)}, cache {gw.cache.root}",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        gw.stop()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
