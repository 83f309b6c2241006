"""An MQTT broker inside our own process (amqtt), for the embedded default of `fota serve`.

    broker = EmbeddedBroker(port=0)     # 0: a free loopback port
    broker.start(); print(broker.url)   # mqtt://127.0.0.1:PORT
    broker.stop()
"""

from __future__ import annotations

import asyncio
import socket

from host_tools.server.loopthread import LoopThread


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """amqtt on loopback, run on a LoopThread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._lt = LoopThread("amqtt-broker")
        self._broker = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10) -> None:
        self._broker = self._lt.start(self._start, what="the embedded MQTT broker", timeout=timeout)

    async def _start(self):
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(config, loop=asyncio.get_running_loop())
        await broker.start()
        return broker

    async def _shutdown(self) -> None:
        await self._broker.shutdown()
        # amqtt 0.12 leaves the transports of clients that vanished (power cut, reset)
        # open; close them and their tasks so nothing outlives the broker.
        loop = asyncio.get_running_loop()
        for transport in list(getattr(loop, "_transports", {}).values()):
            transport.close()
        tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)

    def stop(self) -> None:
        if self._broker is not None:
            self._lt.stop(self._shutdown)
            self._broker = None
