"""The server side of docs/PROTOCOL.md over any MQTT 3.1.1 broker (paho-mqtt).

Answers chunk requests from the package store, records every device's state and
events in the registry, publishes and clears retained offers.

    svc = MqttService(registry, store, "mqtt://127.0.0.1:1883")
    svc.start()
    svc.offer("a1b2c3", package_id)          # retained on fota/a1b2c3/offer
"""

from __future__ import annotations

import json
import socket
import threading
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from host_tools import protocol
from host_tools.errors import FotaError
from host_tools.server.packages import PackageStore
from host_tools.server.registry import Registry


class ServerError(FotaError):
    """The broker cannot be reached, or a request makes no sense."""


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """mqtt://HOST:PORT or mqtts://HOST:PORT (TLS) -> (host, port, tls)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not parsed.hostname:
        raise ServerError(f"broker URL {url!r} is not mqtt://HOST:PORT or mqtts://HOST:PORT")
    tls = parsed.scheme in ("mqtts", "ssl")
    return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


class MqttService:
    """One paho client, its network thread, and the handlers for device topics."""

    def __init__(self, registry: Registry, store: PackageStore, broker_url: str, *, prefix: str = "fota",
                 client_id: str = "fota-server", serve: bool = True, ca_file: str | None = None) -> None:
        self.registry = registry
        self.store = store
        self.host, self.port, tls = parse_broker_url(broker_url)
        self.prefix = prefix
        self.serve = serve  # False: a CLI client that only publishes offers and commands
        self.bytes_served = 0
        self.chunks_served = 0
        self._connected = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_disconnect = lambda *a: self._connected.clear()
        self._client.reconnect_delay_set(0.2, 5)
        if tls:
            self._client.tls_set(ca_certs=ca_file)  # verifies the broker against this CA (or the system's)

    def start(self, timeout: float = 10) -> None:
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise ServerError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(timeout):
            raise ServerError(f"no CONNACK from the MQTT broker at {self.host}:{self.port}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        sock = client.socket()
        if sock is not None and hasattr(sock, "setsockopt"):  # chunks go out at once (no Nagle delay)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        p = self.prefix
        if self.serve:
            client.subscribe([(f"{p}/+/state", 1), (f"{p}/+/events", 1), (f"{p}/+/get", 0)])
        self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        parsed = protocol.parse_topic(self.prefix, msg.topic)
        if parsed is None:
            return
        device, kind = parsed
        try:
            if kind == "get":
                self._serve_chunks(device, msg.payload)
            elif kind == "state" and msg.payload:
                self.registry.record_state(device, json.loads(msg.payload))
            elif kind == "events":
                self._on_event(device, json.loads(msg.payload))
        except (ValueError, KeyError):
            return  # a malformed message from a device changes nothing

    def _serve_chunks(self, device: str, payload: bytes) -> None:
        offer_id, offsets = protocol.decode_get(payload)
        offer = self.registry.offer(offer_id)
        if offer is None or offer.device != device:
            return
        topic = protocol.topic(self.prefix, device, "data")
        for offset in offsets:
            if offset % offer.chunk:
                continue
            data = self.store.chunk(offer.package, offset, offer.chunk)
            if not data:
                continue
            self._client.publish(topic, protocol.encode_data(offer_id, offset, data), qos=0)
            self.bytes_served += len(data)
            self.chunks_served += 1

    def _on_event(self, device: str, event: dict) -> None:
        if self.registry.record_event(device, event):
            self.clear_offer(device)

    # -- offers ---------------------------------------------------------------
    def offer(self, device: str, package_id: str, *, chunk: int = 4096, policy: str = "auto") -> int:
        """Record an offer and publish it retained, so an offline device gets it later."""
        code = protocol.policy_code(policy)
        offer_id = self.registry.create_offer(device, package_id, chunk=chunk, policy=code)
        blob = self.store.offer_blob(package_id)
        info = self._client.publish(protocol.topic(self.prefix, device, "offer"), protocol.encode_offer(offer_id, chunk, code, blob),
                                    qos=1, retain=True)
        info.wait_for_publish(10)
        return offer_id

    def clear_offer(self, device: str) -> None:
        self._client.publish(protocol.topic(self.prefix, device, "offer"), b"", qos=1, retain=True)

    def command(self, device: str, cmd: dict) -> None:
        self._client.publish(protocol.topic(self.prefix, device, "cmd"), json.dumps(cmd), qos=1).wait_for_publish(10)
