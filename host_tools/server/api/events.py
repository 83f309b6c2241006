"""The live feed: what changed in the registry, polled twice a second and fanned out to subscribers.

Polling the registry (rather than hooking the MQTT and CoAP services) sees every change, also those
made by another process on the same database: device events, campaign moves, devices reporting in.
The same poll samples version adoption and sends the campaign webhooks.

Messages (each with a rising `seq`):
    {"type": "event", "device": ..., "offer": ..., "event": "progress", "body": {...}, "t": ...}
    {"type": "campaign", "name": ..., "status": ..., "wave": ..., "note": ...}
    {"type": "devices", "count": ..., "last_seen": ...}

    feed = ChangeFeed(registry, history, webhooks)
    task = asyncio.create_task(feed.run())
    q = feed.subscribe(); msg = await q.get(); feed.unsubscribe(q)
    feed.close()     # every subscriber gets None, run() returns
"""

from __future__ import annotations

import asyncio
import time

from host_tools.server.api.history import VersionHistory
from host_tools.server.api.webhooks import Webhooks
from host_tools.server.registry import Registry

QUEUE_SIZE = 256  # a subscriber that falls this far behind loses messages (the console reloads anyway)
ENDS = {"PAUSED": "campaign.paused", "COMPLETED": "campaign.completed", "ABORTED": "campaign.aborted"}


class ChangeFeed:
    def __init__(self, registry: Registry, history: VersionHistory, webhooks: Webhooks, *, interval: float = 0.5) -> None:
        self.registry = registry
        self.history = history
        self.webhooks = webhooks
        self.interval = interval
        self.seq = 0
        self.dropped = 0
        self._subscribers: set[asyncio.Queue] = set()
        self._closed = asyncio.Event()
        last = registry.db.query("SELECT MAX(id) AS m FROM events")
        self._last_event = int(last[0]["m"] or 0)
        self._campaigns: dict[str, tuple] | None = None  # None until the first poll: old states send no webhooks
        self._members: list[dict] = []
        self._devices: tuple = ()

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subscribers.discard(q)

    def close(self) -> None:
        self._closed.set()
        for q in list(self._subscribers):
            self._put(q, None)

    def _put(self, q: asyncio.Queue, msg: dict | None) -> None:
        try:
            q.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        """Poll until close(); a poll that fails (database busy) is tried again at the next interval."""
        while not self._closed.is_set():
            try:
                messages = await asyncio.to_thread(self.poll)
            except Exception:  # noqa: BLE001 - the feed outlives a failed poll
                messages = []
            for msg in messages:
                for q in list(self._subscribers):
                    self._put(q, msg)
            try:
                await asyncio.wait_for(self._closed.wait(), self.interval)
            except TimeoutError:
                pass

    def poll(self) -> list[dict]:
        """What changed since the last poll, as messages (runs on a worker thread)."""
        out: list[dict] = []
        for ev in self.registry.events_since(self._last_event):
            self._last_event = ev["id"]
            out.append({"type": "event", "device": ev["device"], "offer": ev["offer"], "event": ev["event"],
                        "body": ev["body"], "t": ev["t"]})
        out += self._poll_campaigns()
        row = self.registry.db.query("SELECT COUNT(*) AS n, MAX(last_seen) AS seen FROM devices")[0]
        devices = (row["n"], row["seen"])
        if devices != self._devices:
            self._devices = devices
            self.history.sample(self.registry.devices())
            out.append({"type": "devices", "count": row["n"], "last_seen": row["seen"]})
        for msg in out:
            self.seq += 1
            msg["seq"] = self.seq
        return out

    def _poll_campaigns(self) -> list[dict]:
        out = []
        members = self.registry.db.query("SELECT campaign, status, COUNT(*) AS n FROM campaign_devices GROUP BY campaign, status"
                                         " ORDER BY campaign, status")
        moved = {m["campaign"] for m in members if m not in self._members} | {m["campaign"] for m in self._members if m not in members}
        self._members = members
        now: dict[str, tuple] = {}
        for camp in self.registry.campaigns():
            key = (camp["status"], camp["wave"], camp["note"])
            now[camp["name"]] = key
            before = None if self._campaigns is None else self._campaigns.get(camp["name"])
            if before != key or camp["name"] in moved:
                out.append({"type": "campaign", "name": camp["name"], "status": camp["status"], "wave": camp["wave"],
                            "note": camp["note"]})
            if self._campaigns is not None and camp["status"] in ENDS and (before is None or before[0] != camp["status"]):
                self.webhooks.send({"event": ENDS[camp["status"]], "campaign": camp["name"], "status": camp["status"],
                                    "wave": camp["wave"], "note": camp["note"],
                                    "by_gate": camp["status"] == "PAUSED" and not (camp["note"] or "").startswith("paused by operator"),
                                    "t": time.time()})
        self._campaigns = now
        return out
