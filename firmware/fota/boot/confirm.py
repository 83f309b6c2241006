"""Across the reboot: stage an update, then confirm it or report its rollback.

Before `set_boot()` the agent writes a pending record (target slot, sequence,
version, previous version) and backs the config up. On the next boot:

- running the target and PENDING_VERIFY: arm the watchdog, migrate the config,
  run the self-test; pass -> `mark_app_valid_cancel_rollback()`, store the new
  sequence floor, report success; fail -> note why, reset (the bootloader rolls back);
- running the target and already VALID: a power cut hit between the mark and the
  bookkeeping, finish the commit;
- running the old image and the target's entry ABORTED/INVALID/PENDING_VERIFY:
  rolled back, report why, restore the config;
- running the old image and no entry for the target: `set_boot()` never completed
  (power cut); check the image again from flash and stage it again.

The application's downtime (docs/PROTOCOL.md "Downtime") is measured across the reboot on the RTC:
`last_action()` goes into the pending record, `_commit` reports the ms since in `committed`.

It works on the agent's BootState and a `report(event, **info)` function, and returns the
outcome, `(lwm2m result or None, error code or 0, detail)`: the agent records a failure and
decides its own state. `machine.reset()` is called here where the flow says so.

    result, code, detail = confirm.on_boot(boot, checks, migrate, self_test_ms, False, now, report)
"""

try:
    import esp32
    import machine
except ImportError:  # CPython: importable for tests and tools; the board supplies both
    esp32 = machine = None

from .. import clock, errors
from ..compat import ticks_diff, ticks_ms
from . import otadata, store
from .state import copy_file, ota_layout, slot_index


# Is local time inside the maintenance window (start minute of day, length in minutes)?
# No window, or no clock to judge it by: allowed.
def in_window(window, now):
    if window is None or now is None:
        return True
    start, length = window
    t = clock.localtime(now)  # now is Unix time; the port's localtime takes its own epoch
    minute = t[3] * 60 + t[4]
    return (minute - start) % 1440 < length


# The application's last action before the reset into a new image, for the pending record: [RTC ms, clock set].
# `alive_at` is the ticks_ms of its last sign of life (Service.alive), None: now (no service, or none yet).
def last_action(alive_at):
    ms = clock.rtc_ms()
    if alive_at is not None:
        ms -= ticks_diff(ticks_ms(), alive_at)
    return [ms, clock.is_set()]


# ms from the last action to now (the commit), or None when not known: no mark (staged by an older agent), the
# clock was set in between (NTP stepped it by an unknown amount), or the RTC went back (a power cut reset it).
# With the clock never set a power cut can go unseen: the RTC counts from 0 again; short downtimes look plausible.
def downtime_ms(mark):
    if not mark or bool(mark[1]) != clock.is_set():
        return None
    ms = clock.rtc_ms() - mark[0]
    return ms if ms >= 0 else None


# set_boot() on the staged target, then reset (never returns). Returns BAD_IMAGE when
# set_boot() refuses the image; the pending record is dropped then.
def set_boot(boot, target, report):
    try:
        target.set_boot()
    except OSError:
        boot.unstage()
        return errors.BAD_IMAGE
    report("rebooting", version=boot.pending()["version"])
    machine.reset()


def on_boot(boot, checks, migrate, self_test_ms, reset_after_commit, now, report):
    pending = boot.pending()
    part, entries, slots = ota_layout()
    if not slots:
        return None, 0, None
    running = esp32.Partition(esp32.Partition.RUNNING)
    run_idx = slot_index(slots, running)
    run_state = otadata.slot_state(entries, run_idx, len(slots)) if part else otadata.UNDEFINED
    if pending is None:
        if run_state == otadata.PENDING_VERIFY:  # someone else staged it: still prove it
            return _self_test(boot, None, checks, migrate, self_test_ms, reset_after_commit, now, report)
        return None, 0, None
    target_idx = next((i for i, p in enumerate(slots) if p.info()[4] == pending["slot"]), -1)
    if run_idx == target_idx:
        if run_state == otadata.PENDING_VERIFY:
            return _self_test(boot, pending, checks, migrate, self_test_ms, reset_after_commit, now, report)
        return _commit(boot, pending, now, report), 0, None
    target_state = otadata.slot_state(entries, target_idx, len(slots))
    if pending["fail"] or target_state in (otadata.ABORTED, otadata.INVALID, otadata.PENDING_VERIFY):
        return _rolled_back(boot, pending, now, report), 0, None
    return _restage(boot, pending, slots[target_idx], report)


def _self_test(boot, pending, checks, migrate, self_test_ms, reset_after_commit, now, report):
    wdt = boot.wdt = machine.WDT(timeout=self_test_ms)  # cannot be stopped once started
    started = ticks_ms()
    failed = None
    name = "migrate"
    try:
        if migrate and pending:
            migrate(pending["from"], pending["version"])
        for name, fn in checks:
            wdt.feed()
            if not fn():
                failed = (errors.SELF_TEST_FAILED, name)
                break
            if ticks_diff(ticks_ms(), started) > self_test_ms:
                failed = (errors.SELF_TEST_TIMEOUT, name)
                break
    except Exception as e:  # noqa: BLE001 - any exception in a check fails the self-test
        failed = (errors.SELF_TEST_FAILED, "%s: %r" % (name, e))
    if failed:
        if pending:
            pending["fail"] = [failed[0], failed[1]]
            boot.store.save()
        report("self_test_failed", code=failed[0], detail=failed[1])
        machine.reset()  # not confirmed: the bootloader rolls back
    wdt.feed()
    result = _commit(boot, pending, now, report)
    if reset_after_commit:
        machine.reset()  # boots the now-VALID image with the watchdog off
    return result, 0, None


def _commit(boot, pending, now, report):
    esp32.Partition.mark_app_valid_cancel_rollback()
    st = boot.store
    if pending:
        st.raise_floor(pending["seq"])  # the anchors first, then the JSON file below
        st.data["version"] = pending["version"]
        st.data["image"] = pending["sha"]  # reported in the state: the server offers deltas from this base
        st.set_result(0, errors.LWM2M_SUCCESS, "committed", pending["version"], now)
        st.data["pending"] = None
        st.save()
        store.remove(boot.config_path + ".bak")
        down = downtime_ms(pending.get("down"))
        if down is None:
            report("committed", version=pending["version"], seq=pending["seq"])
        else:
            report("committed", version=pending["version"], seq=pending["seq"], downtime_ms=down)
    return errors.LWM2M_SUCCESS


def _rolled_back(boot, pending, now, report):
    code, detail = pending["fail"] or (errors.SELF_TEST_TIMEOUT, "reset before the image confirmed itself")
    if copy_file(boot.config_path + ".bak", boot.config_path):
        store.remove(boot.config_path + ".bak")
    st = boot.store
    st.note_rolled_back(pending["sha"])  # anchors first: never offered into a reset loop again
    st.data["pending"] = None
    st.log_error(code, detail, now)
    st.set_result(code, errors.LWM2M_FAILED, "rolled back: " + detail, pending["version"], now)
    st.save()
    report("rolled_back", version=pending["version"], code=code, name=errors.name(code), detail=detail)
    return errors.LWM2M_FAILED


def _restage(boot, pending, target, report):
    # set_boot() did not complete before the reset: the image is in flash, verified
    # before; check it once more from flash and stage it again.
    from ..slot.writer import SlotWriter

    w = SlotWriter(target, pending["size"], 4096)
    if w.sha256(bytearray(4096)).hex() != pending["sha"]:
        boot.unstage()
        return errors.LWM2M_INTEGRITY, errors.DIGEST_MISMATCH, "staged image changed in flash"
    report("restaging", version=pending["version"])
    return None, set_boot(boot, target, report), "set_boot refused the image"
