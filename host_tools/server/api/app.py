"""The FastAPI application of `fota serve`: the HTTP API under /api, metrics, the live feed, the console.

    app = create_app(server)      # a started host_tools.server.service.Server
    # GET /openapi.json (the OpenAPI document), /docs; GET /console/ (the web console, no build step)

Every route but the console's static files, /healthz and the OpenAPI document needs a bearer token
(auth.py); every change is written to the audit log (audit.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from host_tools.errors import FotaError
from host_tools.server.api import campaigns, devices, packages
from host_tools.server.api.audit import AuditLog
from host_tools.server.api.auth import TOKENS_FILE, Principal, TokenStore, reader
from host_tools.server.api.common import device_row
from host_tools.server.api.events import ChangeFeed
from host_tools.server.api.history import VersionHistory, version_counts
from host_tools.server.api.metrics import CONTENT_TYPE, render_metrics
from host_tools.server.api.webhooks import Webhooks

CONSOLE = Path(__file__).resolve().parent.parent / "console"
PING_S = 15.0  # a comment line on an idle event stream, so proxies keep it open


def create_app(server, *, feed_interval: float = 0.5) -> FastAPI:
    """The app for a running Server; its lifespan runs the live feed and the webhook sender."""
    tokens = TokenStore.ensure(server.config.data_dir / TOKENS_FILE)
    history = VersionHistory(server.registry.db)
    hooks = Webhooks(list(server.config.webhooks))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        feed = ChangeFeed(server.registry, history, hooks, interval=feed_interval)
        app.state.feed = feed
        hooks.start()
        task = asyncio.create_task(feed.run())
        try:
            yield
        finally:
            feed.close()
            await asyncio.wait_for(task, 5)
            await asyncio.to_thread(hooks.stop)

    app = FastAPI(title="fota", version="1", lifespan=lifespan,
                  description="The fleet's update server: devices, packages, deployments, campaigns, events.")
    app.state.server = server
    app.state.tokens = tokens
    app.state.audit = AuditLog(server.registry.db)
    app.state.history = history
    app.state.webhooks = hooks
    for module in (devices, packages, campaigns):
        app.include_router(module.router)

    @app.exception_handler(FotaError)
    async def _fota_error(request: Request, exc: FotaError) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "hint": exc.hint}, status_code=422)

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/console/")

    @app.get("/healthz", tags=["server"], summary="Liveness (no token)")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/api/whoami", tags=["server"], summary="The token's name and role")
    def whoami(who: Principal = Depends(reader)) -> dict:
        return {"name": who.name, "role": who.role}

    @app.get("/api/server", tags=["server"], summary="What this server runs: broker, CoAP, counters")
    def server_info(who: Principal = Depends(reader)) -> dict:
        mqtt = server.mqtt
        return {"broker": server.broker_url, "prefix": server.config.prefix, "coap": server.coap.url if server.coap else None,
                "chunks_served": mqtt.chunks_served, "bytes_served": mqtt.bytes_served, "malformed": mqtt.malformed,
                "rejected": mqtt.rejected}

    @app.get("/api/fleet", tags=["devices"], summary="The overview: devices by version and state, online, adoption over time")
    def fleet(who: Principal = Depends(reader), since: float = Query(0.0, ge=0)) -> dict:
        rows = [device_row(d) for d in server.registry.devices()]
        states: dict[str, int] = {}
        for d in rows:
            states[d["state_name"]] = states.get(d["state_name"], 0) + 1
        return {"devices": len(rows), "online": sum(d["online"] for d in rows), "by_version": version_counts(rows),
                "by_state": states, "adoption": history.series(since)}

    @app.get("/api/audit", tags=["server"], summary="The audit log, newest first")
    def audit(who: Principal = Depends(reader), limit: int = Query(100, ge=1, le=10000), action: str | None = Query(None, max_length=64)):
        return app.state.audit.entries(limit, action)

    @app.get("/api/webhooks", tags=["server"], summary="Webhook URLs and recent deliveries")
    def webhooks(who: Principal = Depends(reader)) -> dict:
        return {"urls": hooks.urls, "deliveries": list(hooks.deliveries)}

    @app.get("/metrics", tags=["server"], summary="Prometheus text format", response_class=PlainTextResponse)
    def metrics(request: Request, who: Principal = Depends(reader)) -> PlainTextResponse:
        return PlainTextResponse(render_metrics(server, request.app.state.feed), media_type=CONTENT_TYPE)

    @app.get("/api/events/stream", tags=["events"], summary="Server-sent events: device events, campaign moves, devices")
    async def stream(request: Request, who: Principal = Depends(reader)) -> StreamingResponse:
        feed: ChangeFeed = request.app.state.feed
        queue = feed.subscribe()

        async def frames():
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(queue.get(), PING_S)
                    except TimeoutError:
                        yield ": ping\n\n"
                        continue
                    if msg is None:
                        return
                    yield f"id: {msg['seq']}\nevent: {msg['type']}\ndata: {json.dumps(msg, default=str)}\n\n"
            finally:
                feed.unsubscribe(queue)

        return StreamingResponse(frames(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    app.mount("/console", StaticFiles(directory=CONSOLE, html=True), name="console")
    return app
