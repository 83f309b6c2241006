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

from host_tools import protocol
from host_tools.server.mqtt_client import ServerError, paho_client, parse_broker_url, start_client
from host_tools.server.packages import PackageStore
from host_tools.server.registry import Registry


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
        self.malformed = 0  # device messages that could not be parsed
        self.rejected = 0  # chunk requests for an unknown offer or for another device's offer
        self._connected = threading.Event()
        self._client = paho_client(client_id, tls, ca_file, self._connected, self._on_connect, self._on_message)

    def start(self, timeout: float = 10) -> None:
        start_client(self._client, self.host, self.port, self._connected, timeout, ServerError, "the MQTT broker")

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
        except (ValueError, KeyError, TypeError, AttributeError):
            self.malformed += 1  # a malformed message from a device changes nothing

    def _serve_chunks(self, device: str, payload: bytes) -> None:
        offer_id, offsets = protocol.decode_get(payload)
        offer = self.registry.offer(offer_id)
        if offer is None or offer.device != device:
            self.rejected += 1
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
