"""An asyncio event loop on a thread of its own, for services (amqtt, aiocoap) inside sync code.

    lt = LoopThread("coap-server")
    context = lt.start(make_context, what="the CoAP service")   # runs make_context() on the loop
    ...
    lt.stop(context.shutdown)                                     # awaits it, then ends the loop
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from host_tools.errors import FotaError


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def start(self, setup: Callable[[], Awaitable[Any]], *, what: str, timeout: float = 10) -> Any:
        """Start the loop, run `setup()` on it and return what it returned; FotaError if it failed."""
        self._thread = threading.Thread(target=self._run, args=(setup,), name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise FotaError(f"{what} did not start: {self._error}")
        return self._result

    def _run(self, setup) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self._result = self.loop.run_until_complete(setup())
        except Exception as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def alive(self) -> bool:
        """False once the loop's thread ended without stop() (the service died)."""
        return self.loop is None or (self._thread is not None and self._thread.is_alive())

    def stop(self, shutdown: Callable[[], Awaitable[Any]] | None = None, timeout: float = 10) -> None:
        """Await `shutdown()` on the loop, then stop the loop and its thread."""
        if self.loop is None:
            return
        try:
            if shutdown is not None and not self._error:
                asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self._thread:
                self._thread.join(timeout)
            self.loop.close()
            self.loop = None
