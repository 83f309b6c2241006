"""Deep-sleep duty cycles: each wake serves the update link for a time budget, then the board sleeps.

A sensor on a battery wakes, reads, sends, and deep-sleeps; every wake is a boot (config, Wi-Fi,
`agent.boot()`), so the service gets one budget per wake:

    svc = device.start(app)
    duty.cycle(svc, 8000, may_install=True)   # offer, chunks, verify, install: whatever fits in 8 s
    svc.publish("reading", payload)            # still connected (unless the board rebooted into an update)
    duty.sleep(svc, 60000)                     # DISCONNECT, machine.deepsleep(60000): never returns

`cycle()` returns when the budget is spent or nothing is left to do (no offer arrived within
`settle_ms` of connecting, or the offer is done, deferred or waits for consent). Towards the end of
the budget a download is suspended (no more chunks asked for; those asked for are waited for, up to
_DRAIN_MS), then a raw download's chunk bitmap goes to the journal and no chunk is taken after it, so
the next wake (the server's offer is retained) asks only for the missing ones: no chunk in flash is
fetched twice (one still on its way at the checkpoint is dropped and asked for again). A zlib download
goes on from the last resume point its journal names (every 64 KiB of image); a delta download restarts
from its stream start at every wake (firmware/README.md "Deep-sleep duty cycles").
The install happens in a wake with `may_install` true (and the agent's policy, window and power check).
"""

import machine

from .compat import const, ticks_diff, ticks_ms

_SETTLE_MS = const(1000)  # after connecting: time for the retained offer to arrive (docs/PROTOCOL.md)
_SAVE_MS = const(1500)  # the end of the budget: the journal (an NVS commit; ~1.3 s as a LittleFS file) and the state
_DRAIN_MS = const(1500)  # before that: the chunks asked for arrive (a window of 8 at ~0.1 s of flash work each)
_TURN_MS = const(200)  # longest turn of the link inside a cycle


def cycle(svc, budget_ms, may_install=True, settle_ms=_SETTLE_MS):
    """Serve the update link for at most `budget_ms` (from this call), then persist and report. Returns the ms
    it took. `may_install`: this wake may reboot into a downloaded update (False: it waits for a later wake)."""
    agent, link = svc.agent, svc.link
    agent.may_reboot = bool(may_install)
    start = ticks_ms()
    drain = budget_ms - _SAVE_MS
    serve = drain - _DRAIN_MS
    since = None  # ticks of the first turn found connected
    while True:
        used = ticks_diff(ticks_ms(), start)
        if used >= serve:
            break
        if link.connected:
            if since is None:
                since = ticks_ms()
            elif ticks_diff(ticks_ms(), since) >= settle_ms and not link.busy():
                break  # the offer came (or none is there) and nothing is left for this wake
        svc.alive()
        left = serve - used
        svc.step(left if left < _TURN_MS else _TURN_MS)
    agent.suspend()  # no more chunks asked for
    while link.connected and link.inflight() and ticks_diff(ticks_ms(), start) < drain:
        svc.alive()
        svc.step(_TURN_MS)
    agent.checkpoint()  # raw: the journal, now; a chunk still arriving is not taken (the next wake asks again)
    while link.connected and link.busy() and ticks_diff(ticks_ms(), start) < budget_ms:
        svc.alive()
        svc.step(0)  # the progress event and the state document
    used = ticks_diff(ticks_ms(), start)
    print("fota: wake:", used, "ms, state", agent.state, "progress", agent.status()["progress"])
    return used


def sleep(svc, ms):
    """End the MQTT session cleanly and deep-sleep `ms` (never returns; the board boots again after it)."""
    if svc.link.connected:
        try:
            svc.link.client.disconnect()
        except OSError:
            pass
    machine.deepsleep(ms)


def wake(app, budget_ms, sleep_ms, may_install=True, path="config.json"):
    """One whole wake of a sensor that has nothing else to send: start, cycle, sleep. Never returns."""
    from . import device

    svc = device.start(app, path)
    cycle(svc, budget_ms, may_install)
    sleep(svc, sleep_ms)
