"""A running fota server with its HTTP API, protocol-level devices and a webhook receiver, for API and console tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from host_tools.fleet.protodevice import DeviceSpec, enroll
from host_tools.fleet.protofleet import ProtoFleet
from host_tools.server.service import Server, ServerConfig
from mqttkit import wait_until  # noqa: F401 - re-exported: the tests import it from here
from simkit import session_signer


class HookReceiver:
    """An HTTP server on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        received: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.received = received
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class ApiStack:
    """Server (embedded broker, SQLite, API on a free port) + ProtoFleet devices + clients per role."""

    def __init__(self, data: Path, devices: list[DeviceSpec], *, webhooks: tuple[str, ...] = (), tick_s: float = 0.2) -> None:
        self.server = Server(ServerConfig(data, api_port=0, tick_s=tick_s, webhooks=webhooks))
        self.server.start()
        self.url = self.server.api.url
        tokens = self.server.api.tokens
        self.op = httpx.Client(base_url=self.url, timeout=15, headers={"Authorization": f"Bearer {tokens.token_for('operator')}"})
        self.ro = httpx.Client(base_url=self.url, timeout=15, headers={"Authorization": f"Bearer {tokens.token_for('read')}"})
        self.anon = httpx.Client(base_url=self.url, timeout=15)
        devices = enroll(devices, self.server.identities)  # each its own login and report key (docs/SECURITY.md)
        self.fleet = ProtoFleet(self.server.broker_url, devices, connect_rate=100)
        self.fleet.start()
        if not self.fleet.wait_connected(30):
            raise AssertionError("the devices did not connect")
        wait_until(lambda: len(self.server.registry.devices()) == len(devices), 30, "devices in the registry")

    def close(self) -> None:
        for client in (self.op, self.ro, self.anon):
            client.close()
        self.fleet.stop()
        self.server.stop()


def device_specs(behaviours: dict[str, tuple[str, str]]) -> list[DeviceSpec]:
    """{id: (behaviour, hw_rev)} -> DeviceSpecs trusting the test session's key."""
    key = session_signer().public_key
    return [DeviceSpec(i, keys=(key,), behaviour=b, hw_rev=hw, seq=1, reboot_delay=0.3, chunk_timeout=1.0)
            for i, (b, hw) in behaviours.items()]
