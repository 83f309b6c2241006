"""Devices' reports (docs/PROTOCOL.md "Authenticated reports") taken in batches, one transaction per batch.

The MQTT service's network thread only queues each state and event; this thread takes the reports
that arrive within LINGER_S of the first (at most MAX_BATCH) in one transaction: the identity rows locked in id order
(Identities.open_reports: several workers taking the same reports wait for one another, never
deadlock), each report's MAC and counter checked as if it came alone, then the states, events and
offer outcomes written (Registry.record_states, record_events): about ten database round trips per
batch instead of about six per report (docs/DEPLOY.md "Limits measured here").

A report that is authentic but does not parse spends its counter and changes nothing else (counted
by `refused`). A batch that fails as a whole (a database error) is taken again report by report, so
one report that cannot be written costs only itself (counted by `failed`). A worker that dies with
reports queued loses them as it lost them before in paho's buffers: every worker receives every
report, another takes them (docs/DEPLOY.md); a single server has the retained states again at start.

    taker = ReportTaker(registry, identities, on_final=svc.settle_offers, refused=..., failed=...)
    taker.start()
    taker.put("a1b2c3", "state", payload)      # from paho's thread; returns at once
    taker.stop()                               # takes what is queued, then ends
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from host_tools.server import inbound
from host_tools.server.identity import Identities
from host_tools.server.registry import Registry

MAX_BATCH = 256  # reports per transaction (a connect burst of 10,000 devices: about 40 transactions)
LINGER_S = 0.05  # how long a batch waits for more reports after its first (a report's added latency, at most)
_STOP = None


class ReportTaker:
    """One thread that takes the queued reports of devices into the registry, a batch per transaction."""

    def __init__(self, registry: Registry, identities: Identities, *, on_final: Callable[[list[str]], None],
                 refused: Callable[[str, Exception], None], failed: Callable[[str, Exception], None]) -> None:
        self.registry = registry
        self.identities = identities
        self.on_final = on_final  # offers of these devices (a batch's, each once) reached an outcome (after the commit)
        self.refused = refused  # (kind, error): an authentic report that does not parse
        self.failed = failed  # (kind, error): a report that could not be written
        self.batches = 0
        self.taken = 0  # reports taken (authentic, parsed, written)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reports", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def put(self, device: str, kind: str, payload: bytes) -> None:
        """Queue a report (`kind` "state" or "events") as it came from the network."""
        self._queue.put((device, kind, payload))

    def stop(self, timeout: float = 30) -> None:
        """Take what is queued, then end the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            until = time.monotonic() + LINGER_S  # a few reports more per transaction, not one each
            while batch[-1] is not _STOP and len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get(timeout=max(until - time.monotonic(), 0)))
                except queue.Empty:
                    break
            stop = batch[-1] is _STOP
            reports = [r for r in batch if r is not _STOP]
            if reports:
                try:
                    self._take(reports)
                except Exception:  # noqa: BLE001 - nothing of the batch was written: each report alone
                    for report in reports:
                        try:
                            self._take([report])
                        except Exception as exc:  # noqa: BLE001 - the thread outlives any one report
                            self.failed(report[1], exc)
            if stop:
                return

    def _take(self, reports: list[tuple[str, str, bytes]]) -> None:
        """One transaction: check every report, write what they change; then settle the offers that ended."""
        states: list[tuple[str, dict]] = []
        events: list[tuple[str, dict]] = []
        refused: list[tuple[str, Exception]] = []
        with self.registry.db.transaction():
            bodies = self.identities.open_reports(reports)
            for (device, kind, _), body in zip(reports, bodies):
                if body is None:
                    continue
                try:
                    if kind == "state":
                        states.append((device, inbound.parse_state(body).as_dict()))
                    else:
                        events.append((device, inbound.parse_event(body).as_dict()))
                except inbound.InboundError as exc:
                    refused.append((kind, exc))
            settled = self.registry.record_states(states)
            finals = self.registry.record_events(events)
        self.batches += 1
        self.taken += len(states) + len(events)
        for kind, exc in refused:
            self.refused(kind, exc)
        ended = list(dict.fromkeys([*settled, *(d for (d, _), final in zip(events, finals) if final)]))
        if ended:
            self.on_final(ended)
