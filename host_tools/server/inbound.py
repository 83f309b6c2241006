"""Everything a device (or anyone on the network) sends the server, parsed into typed values with caps.

The MQTT service, the CoAP service and the gateway call these before a message touches the
registry; what does not parse raises `InboundError` (a FotaError), which the service counts in
its `InboundStats` and logs at most once per `log_every_s` per kind, never raising it into a
service thread:

    stats = InboundStats("mqtt")
    try:
        state = parse_state(payload)              # DeviceState, fields typed and bounded
        registry.record_state(device, state.as_dict())
    except InboundError as exc:
        stats.refused("state", exc)

Caps: a state document at most MAX_STATE bytes, an event MAX_EVENT, a chunk request the
layout of docs/PROTOCOL.md (1..16 offsets), a device id MAX_DEVICE_ID characters of
[0-9A-Za-z_-]. Numbers are integers in range (no floats, no booleans, no 1e999), strings are
bounded, nested values have a fixed shape.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from host_tools import protocol
from host_tools.errors import FotaError

MAX_STATE = 4096  # bytes of a reported state document (a device's is about 400)
MAX_EVENT = 2048  # bytes of one event
MAX_COMMAND = 512
MAX_DEVICE_ID = 64
MAX_TEXT = 256  # characters of any string field
MAX_ERRORS = 16  # entries of a state's error log
MAX_EVENT_FIELDS = 24
U32 = 0xFFFFFFFF
_DEVICE_ID = re.compile(r"[0-9A-Za-z_-]{1,%d}" % MAX_DEVICE_ID)

log = logging.getLogger("fota.server.inbound")


class InboundError(FotaError):
    """A message from the network that the server does not act on (malformed, oversized, out of range)."""


@dataclass(frozen=True)
class DeviceState:
    """docs/PROTOCOL.md "Reported state", every field checked."""

    board: str | None = None
    hw_rev: str | None = None
    version: str | None = None
    seq: int | None = None
    slot: str | None = None
    state: int | None = None
    progress: tuple[int, int] | None = None
    result: int | None = None
    code: int | None = None
    detail: str | None = None
    offer: int | None = None
    errors: tuple[tuple[int, str | None, int | None], ...] = ()
    image: str | None = None  # SHA-256 (hex) of the running image, once an update installed it (issue 20)
    deferred: dict | None = None  # {"code", "stage", "detail"}: an install or download the power check put off (issue 22)

    def as_dict(self) -> dict:
        """The document as the registry records it (lists, not tuples)."""
        return {"board": self.board, "hw_rev": self.hw_rev, "version": self.version, "seq": self.seq, "slot": self.slot,
                "state": self.state, "progress": list(self.progress) if self.progress else None, "result": self.result,
                "code": self.code, "detail": self.detail, "offer": self.offer, "errors": [list(e) for e in self.errors], "image": self.image,
                "deferred": dict(self.deferred) if self.deferred else None}


@dataclass(frozen=True)
class DeviceEvent:
    """docs/PROTOCOL.md "Events": the name, the offer it is about, its code; other scalar fields kept as they came."""

    event: str
    offer: int | None = None
    code: int | None = None
    fields: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {**self.fields, "event": self.event, "offer": self.offer, "code": self.code}


@dataclass(frozen=True)
class ChunkRequest:
    offer_id: int
    offsets: tuple[int, ...]


def device_id(text: str) -> str:
    """A device id from a topic or a path: 1..64 characters of [0-9A-Za-z_-]."""
    if not isinstance(text, str) or not _DEVICE_ID.fullmatch(text):
        raise InboundError(f"not a device id: {str(text)[:40]!r}")
    return text


def _json_object(payload: bytes | bytearray | memoryview, cap: int, what: str) -> dict:
    if len(payload) > cap:
        raise InboundError(f"{what} of {len(payload)} bytes (at most {cap})")
    try:
        body = json.loads(bytes(payload), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InboundError(f"{what} is not JSON: {str(exc)[:80]}") from None
    if not isinstance(body, dict):
        raise InboundError(f"{what} is not a JSON object")
    return body


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number here")


def _int(body: dict, key: str, lo: int = 0, hi: int = U32) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InboundError(f"{key} is not an integer in {lo}..{hi}")
    return v


def _text(body: dict, key: str, cap: int = MAX_TEXT) -> str | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise InboundError(f"{key} is not a string")
    return v[:cap]


def _error_entry(e: object) -> tuple[int, str | None, int | None]:
    if not isinstance(e, list) or len(e) != 3:
        raise InboundError("an error log entry is not [code, detail, time]")
    row = {"code": e[0], "detail": e[1], "time": e[2]}
    return _int(row, "code", 0, 0xFFFF) or 0, _text(row, "detail"), _int(row, "time", 0, 1 << 40)


def parse_state(payload: bytes | bytearray | memoryview) -> DeviceState:
    """A reported state document -> DeviceState; InboundError when it is anything else."""
    body = _json_object(payload, MAX_STATE, "state")
    progress = body.get("progress")
    if progress is not None:
        if not isinstance(progress, list) or len(progress) != 2:
            raise InboundError("progress is not [have, total]")
        row = {"have": progress[0], "total": progress[1]}
        progress = (_int(row, "have") or 0, _int(row, "total") or 0)
    errs = body.get("errors") or []
    if not isinstance(errs, list) or len(errs) > MAX_ERRORS:
        raise InboundError(f"errors is not a list of at most {MAX_ERRORS} entries")
    return DeviceState(board=_text(body, "board", 32), hw_rev=_text(body, "hw_rev", 16), version=_text(body, "version", 32),
                       seq=_int(body, "seq"), slot=_text(body, "slot", 16), state=_int(body, "state", 0, 3), progress=progress,
                       result=_int(body, "result", 0, 255), code=_int(body, "code", 0, 0xFFFF), detail=_text(body, "detail"),
                       offer=_int(body, "offer"), errors=tuple(_error_entry(e) for e in errs), image=_digest(body, "image"),
                       deferred=_deferred(body.get("deferred")))


def _deferred(value: object) -> dict | None:
    """The state's `deferred` ({"code", "stage", "detail"}) typed and bounded, or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InboundError("deferred is not an object")
    return {"code": _int(value, "code", 0, 0xFFFF), "stage": _text(value, "stage", 16), "detail": _text(value, "detail")}


def _digest(body: dict, key: str) -> str | None:
    """A SHA-256 in lower-case hex, or None when absent; InboundError for anything else."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InboundError(f"{key} is not a SHA-256 in lower-case hex")
    return value


def parse_event(payload: bytes | bytearray | memoryview) -> DeviceEvent:
    """A device event -> DeviceEvent (name, offer id, code typed; other fields only if scalar and small)."""
    body = _json_object(payload, MAX_EVENT, "event")
    name = _text(body, "event", 32)
    if not name:
        raise InboundError("event has no name")
    if len(body) > MAX_EVENT_FIELDS:
        raise InboundError(f"event has {len(body)} fields (at most {MAX_EVENT_FIELDS})")
    fields = {}
    for k, v in body.items():
        if k in ("event", "offer", "code"):
            continue
        if isinstance(v, str):
            fields[k] = v[:MAX_TEXT]
        elif v is None or isinstance(v, bool) or (isinstance(v, int) and abs(v) <= 1 << 53):
            fields[k] = v
        elif isinstance(v, float) and v == v and abs(v) < 1e15:
            fields[k] = v
    return DeviceEvent(name, _int(body, "offer"), _int(body, "code", 0, 0xFFFF), fields)


def parse_get(payload: bytes | bytearray | memoryview) -> ChunkRequest:
    """A chunk request (docs/PROTOCOL.md): exactly `u32 offer id | u16 count | count x u32`, count 1..16."""
    try:
        offer_id, offsets = protocol.decode_get(bytes(payload))
    except ValueError as exc:
        raise InboundError(str(exc)) from None
    if not offsets or len(payload) != protocol.GET.size + 4 * len(offsets):
        raise InboundError(f"chunk request of {len(payload)} bytes for {len(offsets)} offsets")
    return ChunkRequest(offer_id, offsets)


class InboundStats:
    """What the network sent that the server did not act on: counters by kind and reason, a rate-limited log.

    `counts` is the metric (kind -> messages refused); `errors` counts handler failures that are
    not the sender's fault but were caught so the service thread lives on.
    """

    def __init__(self, service: str, *, log_every_s: float = 10.0) -> None:
        self.service = service
        self.log_every_s = log_every_s
        self.counts: Counter[str] = Counter()  # kind -> refused messages
        self.errors: Counter[str] = Counter()  # kind -> unexpected exceptions caught in a handler
        self.limited: Counter[str] = Counter()  # device -> chunk requests over the rate limit
        self._last_log: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def refused(self, kind: str, exc: BaseException) -> None:
        """A message of `kind` ("state", "events", "get", ...) was refused because of `exc`."""
        with self._lock:
            self.counts[kind] += 1
        self._log(kind, f"{self.service}: refused a {kind} message: {exc}", logging.INFO)

    def failed(self, kind: str, exc: BaseException) -> None:
        """A handler raised something unexpected; caught, counted, logged (rate-limited)."""
        with self._lock:
            self.errors[kind] += 1
        self._log("!" + kind, f"{self.service}: {kind} handler failed: {exc!r}", logging.WARNING)

    def rate_limited(self, device: str) -> None:
        with self._lock:
            self.limited[device] += 1
            self.counts["rate_limited"] += 1
        self._log("rate", f"{self.service}: chunk requests of {device} over the rate limit", logging.INFO)

    def total(self) -> int:
        return sum(self.counts.values()) + sum(self.errors.values())

    def snapshot(self) -> dict:
        with self._lock:
            return {"refused": dict(self.counts), "failed": dict(self.errors)}

    def _log(self, key: str, text: str, level: int) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last_log.get(key)
            if last is not None and now - last < self.log_every_s:
                self._suppressed[key] += 1
                return
            self._last_log[key] = now
            more = self._suppressed.pop(key, 0)
        log.log(level, text + (f" (and {more} more since the last such line)" if more else ""))


class RateLimit:
    """A token bucket per key: `rate` per second, bursts of `burst`; `allow(key)` takes one token."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, cost: float = 1.0) -> bool:
        return self.take(key, cost, 1) == 1

    def take(self, key: str, cost: float, count: int) -> int:
        """How many of `count` units of `cost` the bucket grants now (their tokens taken): as many as `count`
        allow() calls in a row at this instant would, stopping at the first refused; one lock, one clock read."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            granted = min(count, int(tokens // cost)) if cost > 0 else count
            self._buckets[key] = (tokens - granted * cost, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.pop(next(iter(self._buckets)))
            return granted
