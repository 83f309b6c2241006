"""The paho client both MQTT roles of the host use: the server's service and the gateway's upstream link.

    host, port, tls = parse_broker_url("mqtts://broker:8883")
    client = paho_client("fota-server", tls, ca_file, connected, on_connect, on_message)
    start_client(client, host, port, connected, 10, ServerError, "the MQTT broker")
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from host_tools.errors import FotaError

MQTTv5 = mqtt.MQTTv5


class ServerError(FotaError):
    """The broker cannot be reached, or a request makes no sense."""


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """mqtt://HOST:PORT or mqtts://HOST:PORT (TLS) -> (host, port, tls)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not parsed.hostname:
        raise ServerError(f"broker URL {url!r} is not mqtt://HOST:PORT or mqtts://HOST:PORT")
    tls = parsed.scheme in ("mqtts", "ssl")
    return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


def paho_client(client_id: str, tls: bool, ca_file: str | None, connected: threading.Event,
                on_connect: Callable, on_message: Callable, auth: tuple[str, str] | None = None,
                v5: bool = False) -> mqtt.Client:
    """A clean-session MQTT 3.1.1 client that reconnects (0.2 .. 5 s) and clears `connected` when the link drops.

    `auth` = (username, password) for the broker's login (docs/SECURITY.md: every principal has one).
    `v5`: MQTT 5 instead (a clean start at every connect), for shared subscriptions (`$share/GROUP/FILTER`)."""
    if v5:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if auth is not None:
        client.username_pw_set(*auth)
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_disconnect = lambda *a: connected.clear()
    client.reconnect_delay_set(0.2, 5)
    if tls:
        client.tls_set(ca_certs=ca_file)  # verifies the broker against this CA (or the system's)
    return client


def start_client(client: mqtt.Client, host: str, port: int, connected: threading.Event, timeout: float,
                 error: type[FotaError], what: str) -> None:
    """Connect and start the network thread; `error` when `what` cannot be reached or sends no CONNACK in time."""
    try:
        if client.protocol == mqtt.MQTTv5:
            client.connect(host, port, keepalive=30, clean_start=True)
        else:
            client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise error(f"cannot reach {what} at {host}:{port}: {exc}") from exc
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise error(f"no CONNACK from {what} at {host}:{port} (or it refused the login)",
                    hint="is the broker's password file up to date? (fota broker-files)")
