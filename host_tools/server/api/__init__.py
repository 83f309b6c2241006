"""The HTTP API and web console of `fota serve`, on an asyncio loop of their own (uvicorn, in-process).

    api = ApiService(server, host="127.0.0.1", port=0)   # 0: a free port
    api.start(); print(api.url)                          # http://127.0.0.1:PORT  (/console/, /docs, /api/...)
    api.stop()

The socket is bound here, not by uvicorn, so a port in use is a FotaError rather than uvicorn's
sys.exit; graceful shutdown waits at most `GRACE_S` for open requests (event streams end at once).
"""

from __future__ import annotations

import asyncio
import socket

from host_tools.errors import FotaError
from host_tools.server.loopthread import LoopThread

GRACE_S = 2


class ApiService:
    def __init__(self, server, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self.host = host
        self.port = port
        self._lt = LoopThread("http-api")
        self._uvicorn = None
        self._task: asyncio.Task | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def tokens(self):
        """The token store (the local shortcut: `fota serve` prints the operator token's file)."""
        return self.app.state.tokens

    def start(self, timeout: float = 15) -> None:
        from host_tools.server.api.app import create_app

        self.app = create_app(self.server)
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise FotaError(f"cannot listen for HTTP on {self.host}:{self.port}: {exc}", hint="give another --api-port") from exc
        sock.listen(128)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._lt.start(self._start, what=f"the HTTP API on {self.url}", timeout=timeout)

    async def _start(self) -> None:
        import uvicorn

        config = uvicorn.Config(self.app, lifespan="on", log_config=None, access_log=False, log_level="warning",
                                timeout_graceful_shutdown=GRACE_S)
        self._uvicorn = uvicorn.Server(config)
        self._task = asyncio.create_task(self._uvicorn.serve(sockets=[self._sock]))
        while not self._uvicorn.started:
            if self._task.done():
                raise FotaError(f"the HTTP API did not start: {self._task.exception()}")
            await asyncio.sleep(0.02)

    async def _shutdown(self) -> None:
        self.app.state.feed.close()  # open event streams end now, not after the grace period
        self._uvicorn.should_exit = True
        await asyncio.wait_for(self._task, GRACE_S + 5)

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._lt.stop(self._shutdown, timeout=GRACE_S + 10)
            self._uvicorn = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
