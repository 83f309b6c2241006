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
"""

import time

try:
    import esp32
    import machine
except ImportError:  # CPython: importable for tests and tools; the board supplies both
    esp32 = machine = None

from . import errors, otadata, store

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_TYPE_DATA = const(1)
_SUBTYPE_OTADATA = const(0)
_SUBTYPE_OTA_MIN = const(0x10)


# (otadata Partition or None, its two entries, the ota_N app partitions in N order)
def ota_layout():
    found = esp32.Partition.find(_TYPE_DATA, _SUBTYPE_OTADATA)
    part = found[0] if found else None
    entries = otadata.read(part) if part else []
    slots = [p for p in esp32.Partition.find(esp32.Partition.TYPE_APP) if _SUBTYPE_OTA_MIN <= p.info()[1] < 0x20]
    slots.sort(key=lambda p: p.info()[1])
    return part, entries, slots


def slot_index(slots, part):
    addr = part.info()[2]
    for i, p in enumerate(slots):
        if p.info()[2] == addr:
            return i
    return -1


# Is local time inside the maintenance window (start minute of day, length in minutes)?
# No window, or no clock to judge it by: allowed.
def in_window(window, now):
    if window is None or now is None:
        return True
    start, length = window
    t = time.localtime(now)
    minute = t[3] * 60 + t[4]
    return (minute - start) % 1440 < length


def _copy(src, dst):
    try:
        with open(src) as f:
            text = f.read()
    except OSError:
        return False
    store.write_atomic(dst, text)
    return True


def stage_and_reboot(agent, target, m):
    st = agent.store
    _copy(agent.config_path, agent.config_path + ".bak")
    st.data["pending"] = {
        "slot": target.info()[4],
        "seq": m.sequence,
        "version": m.version,
        "from": agent.version(),
        "sha": m.image_sha256.hex(),
        "size": m.image_size,
        "fail": None,
        "tag": agent.tag,
    }
    st.data["download"] = None
    st.save()
    return _set_boot_and_reset(agent, target)


def _set_boot_and_reset(agent, target):
    try:
        target.set_boot()
    except OSError:
        agent.store.data["pending"] = None
        agent.store.save()
        agent._fail(errors.BAD_IMAGE, "set_boot refused the image")
        raise OtaError(errors.BAD_IMAGE)
    agent.state = 3  # UPDATING
    agent.report("rebooting", version=agent.store.data["pending"]["version"])
    machine.reset()


def on_boot(agent):
    pending = agent.store.data["pending"]
    if pending:
        agent.tag = pending.get("tag")
    part, entries, slots = ota_layout()
    if not slots:
        return None
    running = esp32.Partition(esp32.Partition.RUNNING)
    run_idx = slot_index(slots, running)
    run_state = otadata.slot_state(entries, run_idx, len(slots)) if part else otadata.UNDEFINED
    if pending is None:
        if run_state == otadata.PENDING_VERIFY:  # someone else staged it: still prove it
            return _self_test(agent, None)
        return None
    target_idx = next((i for i, p in enumerate(slots) if p.info()[4] == pending["slot"]), -1)
    if run_idx == target_idx:
        if run_state == otadata.PENDING_VERIFY:
            return _self_test(agent, pending)
        return _commit(agent, pending)
    target_state = otadata.slot_state(entries, target_idx, len(slots))
    if pending["fail"] or target_state in (otadata.ABORTED, otadata.INVALID, otadata.PENDING_VERIFY):
        return _rolled_back(agent, pending)
    return _restage(agent, pending, slots[target_idx])


def _self_test(agent, pending):
    wdt = agent.wdt = machine.WDT(timeout=agent.self_test_ms)  # cannot be stopped once started
    started = time.ticks_ms()
    failed = None
    name = "migrate"
    try:
        if agent.migrate and pending:
            agent.migrate(pending["from"], pending["version"])
        for name, fn in agent.checks:
            wdt.feed()
            if not fn():
                failed = (errors.SELF_TEST_FAILED, name)
                break
            if time.ticks_diff(time.ticks_ms(), started) > agent.self_test_ms:
                failed = (errors.SELF_TEST_TIMEOUT, name)
                break
    except Exception as e:  # noqa: BLE001 - any exception in a check fails the self-test
        failed = (errors.SELF_TEST_FAILED, "%s: %r" % (name, e))
    if failed:
        if pending:
            pending["fail"] = [failed[0], failed[1]]
            agent.store.save()
        agent.report("self_test_failed", code=failed[0], detail=failed[1])
        machine.reset()  # not confirmed: the bootloader rolls back
    wdt.feed()
    result = _commit(agent, pending)
    if agent.reset_after_commit:
        machine.reset()  # boots the now-VALID image with the watchdog off
    return result


def _commit(agent, pending):
    esp32.Partition.mark_app_valid_cancel_rollback()
    st = agent.store
    if pending:
        st.data["seq_floor"] = max(st.data["seq_floor"], pending["seq"])
        st.data["version"] = pending["version"]
        st.set_result(0, errors.LWM2M_SUCCESS, "committed", pending["version"], agent.now())
        st.data["pending"] = None
        st.save()
        store.remove(agent.config_path + ".bak")
        agent.report("committed", version=pending["version"], seq=pending["seq"])
    return errors.LWM2M_SUCCESS


def _rolled_back(agent, pending):
    code, detail = pending["fail"] or (errors.SELF_TEST_TIMEOUT, "reset before the image confirmed itself")
    if _copy(agent.config_path + ".bak", agent.config_path):
        store.remove(agent.config_path + ".bak")
    st = agent.store
    st.data["pending"] = None
    st.log_error(code, detail, agent.now())
    st.set_result(code, errors.LWM2M_FAILED, "rolled back: " + detail, pending["version"], agent.now())
    st.save()
    agent.report("rolled_back", version=pending["version"], code=code, name=errors.name(code), detail=detail)
    return errors.LWM2M_FAILED


def _restage(agent, pending, target):
    # set_boot() did not complete before the reset: the image is in flash, verified
    # before; check it once more from flash and stage it again.
    from .slot import SlotWriter

    w = SlotWriter(target, pending["size"], 4096)
    if w.sha256(bytearray(4096)).hex() != pending["sha"]:
        agent.store.data["pending"] = None
        agent._fail(errors.DIGEST_MISMATCH, "staged image changed in flash")
        return errors.LWM2M_INTEGRITY
    agent.report("restaging", version=pending["version"])
    return _set_boot_and_reset(agent, target)


OtaError = errors.OtaError
