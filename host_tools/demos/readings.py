"""The sensor example's readings as the broker delivers them, counted by board and phase of a campaign.

The demo subscribes with the server's broker login to fota/+/app/reading (a device may publish only
under its own fota/<device>/app/#) and keeps each reading's arrival time and counter. The counter starts
at 0 on every boot, so where it starts again the board rebooted, and the time from its last reading
before to its first after is what the reboot cost the application (the new image's boot, its self-test
and the service's reconnect: `svc.publish` drops what it cannot send).

    readings = Readings(host, port, user, password)
    readings.phase("campaign r2")          # from now on readings count in this phase
    print(readings.render(names))          # one line per board: counts per phase, reboot gaps, last reading
    readings.close()
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt

TOPIC = "fota/+/app/reading"  # the example's svc.publish("reading", ...) under the server's default prefix


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic() at arrival
    n: int  # the board's counter: 0 at each boot
    c: float | None  # degrees Celsius; None: the sensor read out of range
    mv: int


class Readings:
    topic = TOPIC

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.by_device: dict[str, list[Reading]] = {}
        self.phases: list[tuple[str, float]] = [("boot", time.monotonic())]
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"demo-readings-{time.time_ns()}")
        self._client.username_pw_set(user, password)
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe(TOPIC, 0)
        self._client.connect(host, port)
        self._client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        device = msg.topic.split("/")[1]
        try:
            r = json.loads(msg.payload)
            reading = Reading(time.monotonic(), int(r["n"]), r.get("c"), int(r.get("mv", 0)))
        except (ValueError, KeyError, TypeError):
            return  # not the example's shape: not counted
        with self._lock:
            self.by_device.setdefault(device, []).append(reading)

    def phase(self, name: str) -> None:
        """Readings arriving from now on count in phase `name`."""
        with self._lock:
            self.phases.append((name, time.monotonic()))

    def of(self, device: str) -> list[Reading]:
        with self._lock:
            return list(self.by_device.get(device, ()))

    def latest(self, device: str) -> Reading | None:
        got = self.of(device)
        return got[-1] if got else None

    def wait(self, devices, since: float, timeout: float) -> bool:
        """Until every device has a reading that arrived after `since`; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all((r := self.latest(d)) is not None and r.at > since for d in devices):
                return True
            time.sleep(0.2)
        return False

    def render(self, names: dict[str, str]) -> str:
        """A line per board: readings per phase, each reboot's gap, the longest other gap, the last reading."""
        with self._lock:
            phases = list(self.phases)
        heads = [name for name, _ in phases]
        lines = ["  " + f"{'board':<10} " + " ".join(f"{h:>{max(len(h), 5)}}" for h in heads)
                 + "   reboot gaps       other gaps <=  last reading"]
        for uid, label in names.items():
            got = self.of(uid)
            counts = [sum(1 for r in got if start <= r.at < end)
                      for (_, start), end in zip(phases, [t for _, t in phases[1:]] + [float("inf")])]
            reboots = [b.at - a.at for a, b in zip(got, got[1:]) if b.n <= a.n]
            others = [b.at - a.at for a, b in zip(got, got[1:]) if b.n > a.n]
            gaps = ", ".join(f"{g:.1f} s" for g in reboots) or "-"
            longest = f"{max(others):.1f} s" if others else "-"
            last = got[-1] if got else None
            shown = "none" if last is None else (f"{last.c:.1f} degC" if last.c is not None else f"out of range ({last.mv} mV)")
            lines.append("  " + f"{label:<10} " + " ".join(f"{c:>{max(len(h), 5)}}" for h, c in zip(heads, counts))
                         + f"   {gaps:<17} {longest:>13}  {shown}")
        return "\n".join(lines)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
