"""Update campaigns: a package, a target selection, waves, and the gates between them.

A campaign lists, before it starts, every device it will touch (and in which
wave) and every device it excludes, with the reason. Running, it offers the
package wave by wave, never more than `max_in_flight` devices at once and only
inside the maintenance window (unless the preset is emergency); a device counts
as succeeded only when it committed the new image. A wave's error threshold
(over devices that finished, with a minimum sample) pauses the campaign; an
operator resumes or aborts it.

A campaign may carry delta packages (`deltas`) beside its full package: each device is offered
the delta whose base is the image it reports running (Registry.running_image), else the full
package; a delta the device refuses as not fitting (BASE_MISMATCH 39, PATCH 40) is followed by
the full package, once (`fallbacks` in the stored spec and in the report).

    spec = CampaignSpec(name="r42", package="3f2a...", waves=["test", "canary", "100%"], error_threshold=0.2)
    plan = plan_campaign(registry, spec)        # .targets, .excluded
    runner = CampaignRunner(registry, offer=mqtt.offer, withdraw=mqtt.clear_offer)
    runner.create(spec); runner.start("r42"); runner.tick()   # `fota serve` ticks every second
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from host_tools.errors import FotaError
from host_tools.firmware import errors as firmware_errors
from host_tools.fleet.window import Window
from host_tools.image.package import HEADER_SIZE, MANIFEST_MAX, SIGNATURE_SIZE, Manifest, parse_package
from host_tools.server.registry import FINAL, Registry

# Campaign states
CREATED, RUNNING, PAUSED, ABORTED, COMPLETED = "CREATED", "RUNNING", "PAUSED", "ABORTED", "COMPLETED"
# Device states in a campaign, beyond the offer's own (registry.FINAL and the in-progress ones)
PENDING, EXCLUDED = "PENDING", "EXCLUDED"
FAILURES = ("ROLLED_BACK", "REFUSED", "FAILED", "TIMED_OUT")
DELTA_REFUSALS = (firmware_errors().BASE_MISMATCH, firmware_errors().PATCH)  # a delta that does not fit: full package
STALE_AFTER_S = 7 * 86400.0  # a report lists devices the server has not heard from for longer (freeze attack or dead)

PRESETS = {
    # waves, error threshold, min sample, in-flight cap, honour the window
    "bugfix": dict(waves=["test", "25%", "100%"], error_threshold=0.1, min_sample=2, max_in_flight=20, use_window=True),
    "release": dict(waves=["test", "5%", "25%", "100%"], error_threshold=0.05, min_sample=3, max_in_flight=10, use_window=True),
    "emergency": dict(waves=["100%"], error_threshold=0.5, min_sample=5, max_in_flight=100, use_window=False),
}


class CampaignError(FotaError):
    """A campaign that cannot be created or moved to the asked state."""


@dataclass
class CampaignSpec:
    """What an operator decides; stored as JSON in the registry."""

    name: str
    package: str
    groups: list[str] = field(default_factory=list)  # empty: every device
    tags: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)  # only devices on these versions (empty: any)
    boards: list[str] = field(default_factory=list)  # only these boards (empty: any)
    hw_revs: list[str] = field(default_factory=list)  # only these hardware revisions (empty: any)
    waves: list[str] = field(default_factory=lambda: ["100%"])  # a group name or a percentage of what is left
    success_threshold: float = 1.0  # share of a wave that must succeed before the next starts
    error_threshold: float = 0.2  # failures / finished that pause the campaign
    min_sample: int = 3  # finished devices before the error threshold is judged
    device_timeout_s: float = 600
    retries: int = 0
    max_in_flight: int = 10
    window: str | None = None  # "CRON DURATION_MINUTES TZ", e.g. "0 2 * * * 120 Europe/Berlin"
    use_window: bool = True
    policy: str = "auto"
    preset: str | None = None
    chunk: int = 4096
    rollback_package: str | None = None  # offered back to updated devices on abort (optional)
    allow_rolled_back: bool = False  # offer even to devices the image rolled back on (they refuse it: ROLLED_BACK_BEFORE)
    deltas: list[str] = field(default_factory=list)  # delta package ids making the same image from bases in the fleet
    delta_bases: dict[str, str] = field(default_factory=dict)  # base image SHA-256 (hex) -> delta id; made by create()

    @classmethod
    def with_preset(cls, preset: str, **kw) -> CampaignSpec:
        if preset not in PRESETS:
            raise CampaignError(f"unknown preset {preset!r}: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], "preset": preset, **kw})


def spec_of(camp: dict) -> CampaignSpec:
    fields = {k: v for k, v in camp["spec"].items() if k in CampaignSpec.__dataclass_fields__}
    return CampaignSpec(**fields)


@dataclass
class Plan:
    targets: list[tuple[str, int]]  # (device, wave index)
    excluded: list[tuple[str, str]]  # (device, reason)


def _compatible(device: dict, package: dict) -> str | None:
    """Why a device cannot take the package, or None."""
    if device.get("board") and device["board"] != package["board"]:
        return f"board {device['board']} (package is for {package['board']})"
    revs = [r for r in (package["hw_revs"] or "").split(",") if r]
    if revs and "*" not in revs and device.get("hw_rev") not in revs:
        return f"hardware revision {device.get('hw_rev')} not in {', '.join(revs)}"
    if device.get("seq") is not None and device["seq"] >= package["sequence"]:
        return f"already at sequence {device['seq']} (package {package['sequence']})"
    return None


def _excluded(registry: Registry, device: dict, package: dict, spec: CampaignSpec) -> str | None:
    """Why the campaign leaves a selected device out, or None: incompatible, or the image rolled back on it."""
    reason = _compatible(device, package)
    if reason or spec.allow_rolled_back:
        return reason
    return registry.rolled_back_reason(device["id"], spec.package)


def _selected(device: dict, spec: CampaignSpec) -> bool:
    if spec.groups and not set(spec.groups) & set(device["groups"]):
        return False
    if spec.tags and not set(spec.tags) <= set(device["tags"]):
        return False
    if spec.boards and device.get("board") not in spec.boards:
        return False
    if spec.hw_revs and device.get("hw_rev") not in spec.hw_revs:
        return False
    return not spec.versions or device.get("version") in spec.versions


def plan_campaign(registry: Registry, spec: CampaignSpec) -> Plan:
    """Which devices, in which wave; which are excluded and why. Deterministic."""
    package = registry.package(spec.package)
    if package is None:
        raise CampaignError(f"no package {spec.package} in the registry", hint="fota deploy or fota campaign create --package FILE adds it")
    targets, excluded = [], []
    candidates = []
    for device in registry.devices():
        if not _selected(device, spec):
            continue
        reason = _excluded(registry, device, package, spec)
        if reason:
            excluded.append((device["id"], reason))
        else:
            candidates.append(device)
    # a stable pseudo-random order, so percentages pick the same devices every time
    candidates.sort(key=lambda d: hashlib.sha256((spec.name + d["id"]).encode()).digest())
    left = list(candidates)
    for index, wave in enumerate(spec.waves):
        if wave.endswith("%"):
            share = float(wave[:-1]) / 100
            count = len(left) if share >= 1 else max(1, round(share * len(candidates))) if left else 0
            chosen = left[:count]
        else:
            chosen = [d for d in left if wave in d["groups"]]
        targets += [(d["id"], index) for d in chosen]
        left = [d for d in left if d not in chosen]
    excluded += [(d["id"], "in no wave") for d in left]
    return Plan(targets, excluded)


def stored_manifest(registry: Registry, pid: str) -> Manifest:
    """A stored package's manifest, read from the file the registry names (header, manifest, signature only)."""
    row = registry.package(pid)
    if row is None:
        raise CampaignError(f"no package {pid} in the registry", hint="fota campaign create --delta FILE adds it")
    try:
        with open(row["path"], "rb") as f:
            head = f.read(HEADER_SIZE + MANIFEST_MAX + SIGNATURE_SIZE)
        mlen = int.from_bytes(head[8:12], "little")
        return parse_package(head[: HEADER_SIZE + mlen + SIGNATURE_SIZE]).manifest
    except (OSError, FotaError) as exc:
        raise CampaignError(f"package {pid}: cannot read its manifest ({exc})") from None


class CampaignRunner:
    """Moves campaigns on; `offer(device, package, chunk=, policy=, record=)` makes an offer and returns its id,
    calling `record(offer_id)` in the transaction that records it (MqttService.offer) or not at all (the
    runner then names the offer itself, after). `offer_many([(device, package), ...], chunk=, policy=, record=)`,
    if given, makes several at once and must call `record(offer_ids)` in their transaction (MqttService.offer_many)."""

    def __init__(self, registry: Registry, offer: Callable[..., int], withdraw: Callable[[str], None],
                 clock: Callable[[], float] = time.time, republish: Callable[[int], None] | None = None,
                 manifest_of: Callable[[str], Manifest] | None = None, offer_many: Callable[..., list[int]] | None = None) -> None:
        self.registry = registry
        self.offer = offer
        self.offer_many = offer_many
        self.withdraw = withdraw
        self.clock = clock
        self.republish = republish  # publish an adopted offer again (its maker may have died before publishing it)
        self.manifest_of = manifest_of or (lambda pid: stored_manifest(registry, pid))  # the server's: its package store

    # -- operator actions ------------------------------------------------------
    def create(self, spec: CampaignSpec) -> Plan:
        if self.registry.campaign(spec.name):
            raise CampaignError(f"campaign {spec.name!r} exists already")
        if spec.window:
            Window.parse(spec.window)  # refuse a bad window now, not at 2 a.m.
        spec.delta_bases = self._delta_bases(spec)
        plan = plan_campaign(self.registry, spec)
        if not plan.targets:
            why = f"; excluded: {', '.join(f'{d} ({r})' for d, r in plan.excluded[:5])}" if plan.excluded else ""
            raise CampaignError(f"campaign {spec.name!r} would target no device{why}",
                                hint="check --group/--board/--hw-rev/--from-version and fota devices")
        self.registry.save_campaign(spec.name, asdict(spec), CREATED)
        for device, wave in plan.targets:
            self.registry.add_campaign_device(spec.name, device, wave, PENDING)
        for device, reason in plan.excluded:
            self.registry.add_campaign_device(spec.name, device, -1, EXCLUDED, reason)
        return plan

    def _delta_bases(self, spec: CampaignSpec) -> dict[str, str]:
        """base SHA-256 (hex) -> delta id; refused unless every delta makes exactly the full package's image."""
        if not spec.deltas:
            return {}
        if self.registry.package(spec.package) is None:
            raise CampaignError(f"no package {spec.package} in the registry", hint="fota campaign create --package FILE adds it")
        full = self.manifest_of(spec.package)
        if full.encoding_name == "delta":
            raise CampaignError(f"package {spec.package} is a delta; --package takes the full package, --delta the deltas")
        bases: dict[str, str] = {}
        for pid in dict.fromkeys(spec.deltas):
            m = self.manifest_of(pid)
            if m.encoding_name != "delta" or m.base_sha256 is None:
                raise CampaignError(f"package {pid} is not a delta package (encoding {m.encoding_name})")
            if m.image_sha256 != full.image_sha256:
                raise CampaignError(f"delta {pid} makes image {m.image_sha256.hex()[:16]}..., not the full package's "
                                    f"{full.image_sha256.hex()[:16]}...", hint="sign the delta from the same new image as the full package")
            if (m.board, m.sequence, m.version) != (full.board, full.sequence, full.version):
                raise CampaignError(f"delta {pid} is {m.board} {m.version} sequence {m.sequence}; the full package is "
                                    f"{full.board} {full.version} sequence {full.sequence}")
            base = m.base_sha256.hex()
            if base in bases:
                raise CampaignError(f"deltas {bases[base]} and {pid} both apply to base {base[:16]}...")
            bases[base] = pid
        return bases

    def package_for(self, name: str, spec: CampaignSpec, device: str) -> str:
        """What the campaign offers `device`: the delta from the image it reports running, else the full package
        (no such delta, an unknown image, or a delta it refused as not fitting: a fallback)."""
        if spec.delta_bases and device not in self._fallbacks(name):
            base = self.registry.running_image(device)
            if base is not None and base in spec.delta_bases:
                return spec.delta_bases[base]
        return spec.package

    def _fallbacks(self, name: str) -> dict[str, dict]:
        camp = self.registry.campaign(name)
        return (camp or {}).get("spec", {}).get("fallbacks", {})

    def _note_fallback(self, name: str, device: str, offer) -> None:
        camp = self._get(name)
        spec = camp["spec"]
        spec.setdefault("fallbacks", {})[device] = {"delta": offer.package, "offer": offer.id, "code": offer.code,
                                                    "reason": offer.reason, "t": self.clock()}
        self.registry.save_campaign(name, spec, camp["status"], camp["wave"], camp["note"] or "")

    def start(self, name: str) -> None:
        self._move(name, (CREATED,), RUNNING)

    def pause(self, name: str, note: str = "paused by operator") -> None:
        self._move(name, (RUNNING,), PAUSED, note)

    def resume(self, name: str) -> None:
        """Go on; the failures that tripped the gate are accepted, new ones trip it again."""
        camp = self._get(name)
        self._move(name, (PAUSED,), RUNNING, "resumed by operator")
        wave = camp["wave"]
        failed = sum(1 for r in self.registry.campaign_devices(name) if r["wave"] == wave and r["status"] in FAILURES)
        spec = camp["spec"]
        spec.setdefault("accepted_failures", {})[str(wave)] = failed
        self.registry.save_campaign(name, spec, RUNNING, wave, "resumed by operator")

    def abort(self, name: str) -> None:
        """Stop offering; withdraw offers not yet taken; optionally offer the previous version back."""
        camp = self._get(name)
        self._move(name, (CREATED, RUNNING, PAUSED), ABORTED, "aborted by operator")
        spec = spec_of(camp)
        for row in self.registry.campaign_devices(name):
            if row["status"] not in FINAL + (EXCLUDED, PENDING) and row["offer"]:
                self.withdraw(row["device"])
                self.registry.set_offer_status(row["offer"], "CANCELLED", reason="campaign aborted")
                self.registry.update_campaign_device(name, row["device"], status="CANCELLED", finished=self.clock())
            elif row["status"] == "SUCCEEDED" and spec.rollback_package:
                self.offer(row["device"], spec.rollback_package, chunk=spec.chunk, policy=spec.policy)

    def _get(self, name: str) -> dict:
        camp = self.registry.campaign(name)
        if camp is None:
            raise CampaignError(f"no campaign named {name!r}")
        return camp

    def _move(self, name: str, allowed: tuple[str, ...], to: str, note: str = "") -> None:
        camp = self._get(name)
        if camp["status"] not in allowed:
            raise CampaignError(f"campaign {name} is {camp['status']}; cannot go to {to}")
        self.registry.set_campaign_status(name, to, note=note)

    # -- the loop --------------------------------------------------------------
    def tick(self) -> None:
        if self.republish is not None:  # offers a worker recorded, then died before publishing
            for o in self.registry.unpublished_offers():
                self.republish(o.id)
        for camp in self.registry.campaigns():
            if camp["status"] == RUNNING:
                self._tick(camp)

    # A tick reads what changed, not the whole campaign: the open rows (at most max_in_flight) with their
    # offers, counts per (wave, status) for the gates, and as many PENDING rows as it may offer to.
    def _tick(self, camp: dict) -> None:
        name, spec = camp["name"], spec_of(camp)
        wave = camp["wave"]
        self._admit_late(name, spec, wave)
        self._sync(name, spec)
        counts = self.registry.campaign_counts(name)
        in_wave = sum(n for (w, _), n in counts.items() if w == wave)
        finished = sum(n for (w, s), n in counts.items() if w == wave and s in FINAL)
        failed = sum(n for (w, s), n in counts.items() if w == wave and s in FAILURES)
        accepted = camp["spec"].get("accepted_failures", {}).get(str(wave), 0)  # acknowledged by a resume
        new_failures = failed - accepted
        if new_failures > 0 and finished >= spec.min_sample and failed / finished >= spec.error_threshold:
            self.registry.set_campaign_status(name, PAUSED, note=f"wave {wave + 1} ({spec.waves[wave]}): {failed} of "
                                              f"{finished} finished devices failed (error threshold {spec.error_threshold:.0%})")
            return
        if in_wave and finished == in_wave:
            succeeded = counts.get((wave, "SUCCEEDED"), 0)
            if succeeded / in_wave + 1e-9 < spec.success_threshold and new_failures > 0:
                self.registry.set_campaign_status(name, PAUSED, note=f"wave {wave + 1} ({spec.waves[wave]}): {succeeded} of "
                                                  f"{in_wave} succeeded (success threshold {spec.success_threshold:.0%})")
                return
            if wave + 1 < len(spec.waves):
                self.registry.set_campaign_status(name, RUNNING, wave=wave + 1, note=f"wave {wave + 1} done")
            else:
                self.registry.set_campaign_status(name, COMPLETED, note="all waves done")
            return
        if not in_wave:
            nxt = wave + 1
            status = RUNNING if nxt < len(spec.waves) else COMPLETED
            self.registry.set_campaign_status(name, status, wave=min(nxt, len(spec.waves) - 1), note="empty wave")
            return
        busy = sum(n for (_, s), n in counts.items() if s not in FINAL + (PENDING, EXCLUDED))
        self._offer_more(name, spec, wave, busy)

    def _offer_more(self, name: str, spec: CampaignSpec, wave: int, busy: int) -> None:
        """Offer the wave's PENDING devices, in device order, until `busy` reaches the in-flight cap."""
        if spec.use_window and spec.window and not Window.parse(spec.window).open_at(self.clock()):
            return
        after = ""
        while busy < spec.max_in_flight:
            rows = self.registry.campaign_pending(name, wave, after=after, limit=spec.max_in_flight - busy)
            if not rows:
                return
            devices = [row["device"] for row in rows]  # what each offer checks, read for the page at once
            rolled = {} if spec.allow_rolled_back else self.registry.rolled_back_reasons(devices, spec.package)
            open_offers = self.registry.open_offers(devices)
            batch: list[tuple[dict, str]] = []  # (row, package) to offer together (offer_many)
            for row in rows:
                after = row["device"]
                if why := rolled.get(row["device"]):
                    self.registry.update_campaign_device(name, row["device"], status=EXCLUDED, wave=-1, reason=why)
                    continue
                busy += 1
                package = self.package_for(name, spec, row["device"])
                if self.offer_many is None or self._orphan_offer(row["device"], package, open_offers.get(row["device"], [])):
                    self._offer_row(name, spec, row, package, open_offers.get(row["device"], []))
                else:
                    batch.append((row, package))
            if batch:
                self._offer_rows(name, spec, batch)

    def _offer_rows(self, name: str, spec: CampaignSpec, batch: list[tuple[dict, str]]) -> None:
        """Offer each (row, package) through `offer_many`, the offers named in their rows in the transaction that
        records them (a page of offers: a few statements and one wait for the broker, not a round of each per device)."""
        def record(offer_ids: list[int]) -> None:
            now = self.clock()
            self.registry.update_campaign_devices(name, [(row["device"], _offered(row, offer_id, now))
                                                         for (row, _), offer_id in zip(batch, offer_ids)])

        self.offer_many([(row["device"], package) for row, package in batch], chunk=spec.chunk, policy=spec.policy,
                        record=record)

    def _offer_row(self, name: str, spec: CampaignSpec, row: dict, package: str, open_offers: list) -> None:
        """Offer the device `package` and name the offer in its row: in one transaction with the offer when
        the offer function calls `record` (MqttService.offer), else right after. `open_offers`: the device's
        offers without an outcome."""
        device, named = row["device"], []

        def record(offer_id: int) -> None:
            self.registry.update_campaign_device(name, device, **_offered(row, offer_id, self.clock()))
            named.append(offer_id)

        # an open offer of this package already (made by an offer function without `record` just before the
        # server stopped): that one is the device's offer, published again; a second would count it twice
        orphan = self._orphan_offer(device, package, open_offers)
        if orphan and self.republish:
            self.republish(orphan)
        offer_id = orphan or self.offer(device, package, chunk=spec.chunk, policy=spec.policy, record=record)
        if not named:
            record(offer_id)

    def _orphan_offer(self, device: str, package: str, open_offers: list) -> int | None:
        """An open offer of `package` to `device` that no campaign row names: made by an offer function that
        does not call `record`, just before the server stopped (MqttService.offer names it in the same transaction)."""
        open_ = [o.id for o in open_offers if o.package == package]
        if not open_:
            return None
        named = self.registry.campaign_offers_of(device)
        orphans = [i for i in open_ if i not in named]
        return orphans[-1] if orphans else None

    def _admit_late(self, name: str, spec: CampaignSpec, wave: int) -> None:
        """Devices that registered after the plan: into the current wave, or excluded with the reason."""
        late = [d for d in self.registry.devices_outside(name) if _selected(d, spec)]
        package = self.registry.package(spec.package) if late else None
        for device in late:
            reason = _excluded(self.registry, device, package, spec)
            if reason:
                self.registry.add_campaign_device(name, device["id"], -1, EXCLUDED, reason)
            else:
                self.registry.add_campaign_device(name, device["id"], max(wave, len(spec.waves) - 1), PENDING)

    def _sync(self, name: str, spec: CampaignSpec) -> None:
        """Fold offer outcomes, timeouts and retries into the campaign's open device rows (a row with an
        outcome keeps it: its offer's is final too, and never changes again). The rows' changes are written
        together at the end, in one transaction (a tick that dies before leaves them to the next)."""
        now = self.clock()
        fallbacks = self._fallbacks(name) if spec.delta_bases else {}
        deltas = set(spec.delta_bases.values())
        updates: list[tuple[str, dict]] = []
        for row, offer in self.registry.campaign_open(name, FINAL + (EXCLUDED, PENDING)):
            status = offer.status
            if status not in FINAL and row["started"] and now - row["started"] > spec.device_timeout_s:
                self.registry.set_offer_status(row["offer"], "TIMED_OUT", reason=f"no outcome within {spec.device_timeout_s:.0f} s")
                self.withdraw(row["device"])
                offer = self.registry.offer(row["offer"])
                status = offer.status  # TIMED_OUT, or the outcome the device reported just before
            if status not in FINAL:
                if status != row["status"]:
                    updates.append((row["device"], {"status": status}))
                continue
            if status in ("FAILED", "REFUSED") and offer.package in deltas and offer.code in DELTA_REFUSALS \
                    and row["device"] not in fallbacks:
                self._note_fallback(name, row["device"], offer)  # the delta does not fit this device: the full package next
                fallbacks[row["device"]] = True
                updates.append((row["device"], {"status": PENDING, "offer": None}))
                continue
            if status in ("FAILED", "TIMED_OUT") and row["attempts"] - (row["device"] in fallbacks) <= spec.retries:
                updates.append((row["device"], {"status": PENDING, "offer": None}))
                continue
            updates.append((row["device"], {"status": status, "finished": now, "code": offer.code, "reason": offer.reason}))
        self.registry.update_campaign_devices(name, updates)


def _offered(row: dict, offer_id: int, now: float) -> dict:
    """A campaign row's fields once `offer_id` is made for it: one more attempt, started `now`."""
    return {"status": "OFFERED", "offer": offer_id, "attempts": row["attempts"] + 1, "started": now}


def unreachable(rows: list[dict], devices: dict[str, dict], stale_after_s: float, now: float) -> list[dict]:
    """The campaign's devices the server has not heard from for longer than `stale_after_s` (or never):
    dead, or cut off from newer releases (a freeze attack); oldest contact first."""
    out = []
    for row in rows:
        d = devices.get(row["device"]) or {}
        heard = d.get("last_heard") or d.get("last_seen")
        if heard is None or now - heard > stale_after_s:
            out.append({"device": row["device"], "last_heard": heard, "last_sent": d.get("last_sent"),
                        "last_sent_what": d.get("last_sent_what"), "age_s": None if heard is None else now - heard})
    return sorted(out, key=lambda u: u["last_heard"] or 0)


def downtime_stats(values: list[int]) -> dict | None:
    """{"devices", "median_ms", "worst_ms"} of measured downtimes, or None when there are none."""
    if not values:
        return None
    return {"devices": len(values), "median_ms": round(statistics.median(values)), "worst_ms": max(values)}


def downtime(rows: list[dict], camp: dict | None) -> tuple[list[dict], dict | None]:
    """The application's downtime (each row's `downtime_ms`, from its offer's `committed` event) per wave, and the
    downtime to expect from the waves already done (those before the current one; all once COMPLETED), or None."""
    waves = ((camp or {}).get("spec") or {}).get("waves") or []
    per_wave = []
    for index, wave in enumerate(waves):
        stats = downtime_stats([r["downtime_ms"] for r in rows if r["wave"] == index and r.get("downtime_ms") is not None])
        per_wave.append({"index": index, "name": wave} | (stats or {"devices": 0, "median_ms": None, "worst_ms": None}))
    if camp is None:
        return per_wave, None
    done = range(len(waves)) if camp["status"] == COMPLETED else range(min(camp["wave"], len(waves)))
    stats = downtime_stats([r["downtime_ms"] for r in rows if r["wave"] in done and r.get("downtime_ms") is not None])
    return per_wave, stats and stats | {"waves": [i for i in done if per_wave[i]["devices"]]}


def deferred(rows: list[dict], devices: dict[str, dict]) -> list[dict]:
    """The campaign's devices whose power check puts an install or download off (their state's `deferred`,
    issue 22): device, stage, code, its name, detail. Their offers wait as DOWNLOADED (or not started)."""
    out = []
    for row in rows:
        text = (devices.get(row["device"]) or {}).get("deferred")
        if text:
            d = json.loads(text)
            out.append({"device": row["device"], "stage": d.get("stage"), "code": d.get("code"),
                        "name": firmware_errors().name(d.get("code")), "detail": d.get("detail")})
    return out


def report(registry: Registry, name: str, *, stale_after_s: float = STALE_AFTER_S, now: float | None = None) -> dict:
    """Outcomes by status; failures by reason and by hardware revision; devices unheard of for `stale_after_s`;
    the application's downtime per device (`downtime_ms` in each row) and per wave, and what to expect from it."""
    offers = {o.id: o for o in registry.offers()}
    rows = [r | {"downtime_ms": o.downtime_ms if (o := offers.get(r["offer"])) is not None else None}
            for r in registry.campaign_devices(name)]
    devices = {d["id"]: d for d in registry.devices()}
    by_status: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    by_hw: dict[str, dict[str, int]] = {}
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
        if row["status"] in FAILURES or row["status"] == EXCLUDED:
            reason = f"{row['status']}: {row['reason'] or '-'}"
            by_reason[reason] = by_reason.get(reason, 0) + 1
            hw = (devices.get(row["device"]) or {}).get("hw_rev") or "?"
            by_hw.setdefault(hw, {})[row["status"]] = by_hw.setdefault(hw, {}).get(row["status"], 0) + 1
    camp = registry.campaign(name)
    spec = (camp or {}).get("spec") or {}
    deltas = set((spec.get("delta_bases") or {}).values())
    packages = {i: o.package for i, o in offers.items()} if deltas else {}
    offered = {"delta": sum(1 for r in rows if packages.get(r["offer"]) in deltas),
               "full": sum(1 for r in rows if r["offer"] is not None and packages.get(r["offer"]) not in deltas)}
    per_wave, expected = downtime(rows, camp)
    return {"campaign": camp, "by_status": by_status, "by_reason": by_reason, "by_hw_rev": by_hw, "devices": rows,
            "downtime": per_wave, "expected_downtime": expected, "deferred": deferred(rows, devices),
            "offered": offered if deltas else None, "fallbacks": spec.get("fallbacks") or {},
            "stale_after_s": stale_after_s,
            "unreachable": unreachable(rows, devices, stale_after_s, time.time() if now is None else now)}
