"""Maintenance windows: a cron-style start, a duration, a time zone.

    w = Window.parse("0 2 * * * 120 Europe/Berlin")   # every night 02:00-04:00 Berlin time
    w.open_at(time.time())

Cron fields: minute hour day-of-month month day-of-week (0 or 7 = Sunday), each
`*`, a number, a range `a-b`, a list `a,b`, or a step `*/n` / `a-b/n`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from host_tools.errors import FotaError

_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


class WindowError(FotaError):
    """A maintenance window that does not parse."""


def _field(text: str, lo: int, hi: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, end = lo, hi
        elif "-" in body:
            start, end = (int(x) for x in body.split("-", 1))
        else:
            start = end = int(body)
        if not (lo <= start <= end <= hi) or step < 1:
            raise WindowError(f"cron field {text!r} is outside {lo}..{hi}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Window:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    duration: timedelta
    tz: ZoneInfo

    @classmethod
    def parse(cls, text: str) -> Window:
        parts = text.split()
        if len(parts) not in (6, 7):
            raise WindowError(f"window {text!r} is not 'MIN HOUR DOM MON DOW DURATION_MIN [TZ]'")
        try:
            fields = [_field(p, lo, hi) for p, (lo, hi) in zip(parts[:5], _RANGES)]
            duration = timedelta(minutes=int(parts[5]))
            tz = ZoneInfo(parts[6] if len(parts) == 7 else "UTC")
        except ValueError as exc:
            raise WindowError(f"window {text!r}: {exc}") from exc
        except ZoneInfoNotFoundError as exc:
            raise WindowError(f"window {text!r}: unknown time zone") from exc
        weekdays = frozenset(0 if d == 7 else d for d in fields[4])
        return cls(fields[0], fields[1], fields[2], fields[3], weekdays, duration, tz)

    def _starts(self, moment: datetime) -> bool:
        cron_dow = (moment.weekday() + 1) % 7  # cron: 0 = Sunday
        return (moment.minute in self.minutes and moment.hour in self.hours and moment.day in self.days
                and moment.month in self.months and cron_dow in self.weekdays)

    def open_at(self, timestamp: float) -> bool:
        """Did a window start within `duration` before this moment (in the window's time zone)?"""
        now = datetime.fromtimestamp(timestamp, self.tz).replace(second=0, microsecond=0)
        minutes = int(self.duration.total_seconds() // 60)
        return any(self._starts(now - timedelta(minutes=m)) for m in range(minutes))
