"""Outgoing webhooks for campaign events: paused (by a gate or an operator), completed, aborted.

Each URL gets a JSON POST per event, `{"event": "campaign.paused", "campaign": "r42", "status":
"PAUSED", "note": "wave 2 (canary): 1 of 3 finished devices failed ...", "by_gate": true, "t": ...}`,
with up to `retries` further tries (1 s, 2 s apart) on a connection error or a 5xx answer. Delivery
runs on a worker thread, so a slow receiver never holds up the server.

    hooks = Webhooks(["http://127.0.0.1:9000/fota"])
    hooks.send({"event": "campaign.completed", "campaign": "r42"})
    hooks.deliveries[-1]      # {"url": ..., "event": ..., "status": 200, "error": None, "t": ...}
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from urllib.parse import urlparse

from host_tools.errors import FotaError

EVENTS = ("campaign.paused", "campaign.completed", "campaign.aborted")


def check_url(url: str) -> str:
    """An http(s) URL with a host, or FotaError."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise FotaError(f"webhook URL {url!r} is not http(s)://HOST[:PORT]/PATH")
    return url


class Webhooks:
    """A queue of events and one thread that POSTs them to every URL."""

    def __init__(self, urls: list[str] | tuple[str, ...], *, timeout: float = 5.0, retries: int = 2) -> None:
        self.urls = [check_url(u) for u in urls]
        self.timeout = timeout
        self.retries = retries
        self.deliveries: deque[dict] = deque(maxlen=200)
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.urls:
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def send(self, event: dict) -> None:
        """Queue `event` for every URL (dropped, and counted as such, if the queue is full)."""
        if not self.urls:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.deliveries.append({"url": "*", "event": event.get("event"), "status": None, "error": "queue full", "t": time.time()})

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            body = json.dumps(event).encode()
            for url in self.urls:
                self.deliveries.append(self._post(url, body) | {"event": event.get("event")})

    def _post(self, url: str, body: bytes) -> dict:
        status, error = None, None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(attempt)
            request = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "application/json", "User-Agent": "fota-webhooks"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    status, error = answer.status, None
                    break
            except urllib.error.HTTPError as exc:
                status, error = exc.code, str(exc)
                if exc.code < 500:
                    break
            except OSError as exc:
                status, error = None, str(exc)
        return {"url": url, "status": status, "error": error, "t": time.time()}
