"""The update service as a guest of the application: turns of the link, the watchdog, telemetry.

fota.device.start(app) makes one (config, Wi-Fi, agent.boot(), the MQTT link) and returns it; the
application then runs it beside its own work, as an asyncio task or from its own loop:

    svc = device.start(app)
    asyncio.create_task(svc.task())       # asyncio: waits on the socket, never busy
    ...
    while True:                            # or a loop of its own
        svc.alive()                        # "the application is alive": the watchdog is fed
        svc.publish("temp", b"21.5")       # P/D/app/temp over the update link's connection
        svc.step(500)                      # serve the link for up to 500 ms

The watchdog (the self-test's, or `watchdog_ms` in config.json) is fed by the service only while the
application called `alive()` within `app_timeout_ms`: a hung application still resets the board, a
running service does not hide it. `step()` never raises: whatever escapes a turn of the link is logged
(FAULT in the persisted error log), the link ends the attempt (resumable) and reconnects after a back-off.
"""

from . import errors
from .backoff import Backoff
from .compat import const, sleep_ms, ticks_add, ticks_diff, ticks_ms

_FEED_MS = const(1000)  # longest the service idles between two turns (and two watchdog feeds)
_PACKETS = const(1)  # packets per turn: a chunk is ~100 ms of flash work at ESP32 speed; the application runs between two
_FAULT_DETAIL = const(80)  # characters of an exception kept in the error log


class Service:
    def __init__(self, agent, link, *, app_timeout_ms=30000, wdt=None):
        self.agent = agent
        self.wdt = wdt  # a watchdog of the application's (when the self-test armed none: agent.wdt comes first)
        self.link = link
        self.app_timeout_ms = app_timeout_ms  # 0: the application is never judged (device.run)
        self.faults = 0  # turns that ended in a fault
        self._alive_at = agent.alive_at = ticks_ms()  # start-up counts as a sign of life
        self._next = ticks_ms()  # no turn of the link before this (back-off after a fault or a failed connect)
        self._faults = Backoff(1000, 60000)

    # The application says it is alive: called from its main loop (or its sensor task) at least every app_timeout_ms.
    # The agent keeps it too: the last one before a reset into a new image starts the reported downtime.
    def alive(self):
        self._alive_at = self.agent.alive_at = ticks_ms()

    def app_alive(self):
        return not self.app_timeout_ms or ticks_diff(ticks_ms(), self._alive_at) < self.app_timeout_ms

    # Feed the watchdog, if one is armed, while the application is alive. An ESP32 watchdog cannot be stopped.
    def feed(self):
        wdt = self.agent.wdt or self.wdt
        if wdt is not None and self.app_alive():
            wdt.feed()

    def publish(self, name, payload, qos=0):
        """The application's message on P/D/app/<name> over the service's MQTT connection (one per device).
        False when it could not go out now (offline, reconnecting): the application decides what to keep."""
        return self.link.publish_app(name, payload, qos)

    def step(self, timeout_ms=0):
        """One turn: packets for up to timeout_ms (a few at most; less when the link's own timers are due
        sooner), the link's work, the watchdog. Returns the ms the service may idle before its next turn
        (0: call again soon)."""
        self.feed()
        idle = self.idle_ms()
        if timeout_ms > idle:
            timeout_ms = idle
        left = ticks_diff(self._next, ticks_ms())
        if left > 0:  # backing off
            if timeout_ms > 0:
                self._sleep(left if left < timeout_ms else timeout_ms)
            return self.idle_ms()
        try:
            wait = self.link.serve_once(timeout_ms, _PACKETS)
            self._faults.reset()
        except Exception as e:  # noqa: BLE001 - the service outlives any one fault; MemoryError included
            wait = self._faults.next_ms()
            self._fault(e)
        if wait:
            self._next = ticks_add(ticks_ms(), wait)
        self.feed()
        return self.idle_ms()

    def idle_ms(self):
        """The ms until the service needs a turn even if nothing arrives (capped at _FEED_MS)."""
        left = ticks_diff(self._next, ticks_ms())
        if left > 0:
            return left if left < _FEED_MS else _FEED_MS
        return self.link.idle_ms(_FEED_MS)

    def _sleep(self, ms):
        while ms > 0:
            n = ms if ms < _FEED_MS else _FEED_MS
            sleep_ms(n)
            ms -= n
            self.feed()

    async def task(self):
        """The service as an asyncio task beside the application's: between turns it waits for the socket to
        become readable or for its next timer, so the other tasks run meanwhile. Never returns."""
        import asyncio

        client = self.link.client
        while True:
            wait = self.step(0)
            sock = client.sock
            if wait <= 0 or client.readable():  # more to do now (chunks streaming in): no allocation on this path
                await asyncio.sleep_ms(0)  # the application's tasks run between two batches of packets
            elif sock is None:
                await asyncio.sleep_ms(wait)
            else:
                try:
                    await asyncio.wait_for_ms(_readable(sock), wait)
                except asyncio.TimeoutError:
                    pass

    def run(self):
        """The service alone, forever (fota.device.run): the service's own loop is the application's."""
        while True:
            self.alive()
            self.step(self.idle_ms())

    def _fault(self, e):
        self.faults += 1
        print("fota: fault:", repr(e))
        try:
            self.agent.log_error(errors.FAULT, repr(e)[:_FAULT_DETAIL])
            self.link.fault(e)
        except Exception as e2:  # noqa: BLE001 - reporting a fault must not end the service either
            print("fota: fault while handling a fault:", repr(e2))


# An awaitable that completes when `sock` is readable (the way asyncio's own streams wait: the task is parked
# on the event loop's poller, no polling). A generator: MicroPython awaits generators.
def _readable(sock):
    import asyncio

    yield asyncio.core._io_queue.queue_read(sock)  # pyright: ignore[reportAttributeAccessIssue] - MicroPython's asyncio
