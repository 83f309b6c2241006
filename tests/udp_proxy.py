"""A UDP impairment proxy for loopback tests: loss, duplication, reordering and delay, seeded and bounded.

    lossy = Impairment(loss=0.2, duplicate=0.05, reorder=0.05)
    with UdpProxy(("127.0.0.1", server_port), up=lossy, down=lossy, seed=7) as proxy:
        ...the device talks to 127.0.0.1:proxy.port instead of the server...
    proxy.stats["up"].dropped                     # per direction: passed, dropped, duplicated, reordered

`up` is client -> server, `down` server -> client. Each client address gets its own socket towards
the server, so the server sees one peer per client, as without the proxy. Decisions come from one
`random.Random(seed)` per direction: the same seed and the same traffic give the same impairments.
Bounded: at most `max_queue` datagrams held (more are dropped and counted as overflow), delays
are capped at 5 s, at most `max_clients` clients. Only loopback addresses are accepted.
"""

from __future__ import annotations

import heapq
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_DELAY_MS = 5000


@dataclass(frozen=True)
class Impairment:
    loss: float = 0.0  # probability that a datagram is dropped
    duplicate: float = 0.0  # probability that it is sent twice
    reorder: float = 0.0  # probability that it is held back by reorder_ms (later ones overtake it)
    delay_ms: float = 0.0  # added to every datagram
    jitter_ms: float = 0.0  # plus uniform [0, jitter_ms]
    reorder_ms: float = 20.0
    drop_if: Callable[[bytes], bool] | None = field(default=None, compare=False)  # also dropped: datagrams it picks

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability")
        if self.delay_ms + self.jitter_ms + self.reorder_ms > MAX_DELAY_MS or min(self.delay_ms, self.jitter_ms, self.reorder_ms) < 0:
            raise ValueError(f"delays must be >= 0 and add up to at most {MAX_DELAY_MS} ms")


@dataclass
class Stats:
    passed: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    overflow: int = 0


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    sock: socket.socket = field(compare=False)
    data: bytes = field(compare=False)
    addr: tuple | None = field(compare=False)  # None: the socket is connected to the server


class UdpProxy:
    def __init__(self, upstream: tuple[str, int], *, up: Impairment = Impairment(), down: Impairment = Impairment(),
                 seed: int = 0, host: str = "127.0.0.1", port: int = 0, max_queue: int = 4096, max_clients: int = 16) -> None:
        if upstream[0] not in LOOPBACK or host not in LOOPBACK:
            raise ValueError("the impairment proxy only runs on loopback")
        self.upstream = upstream
        self.impair = {"up": up, "down": down}
        self.stats = {"up": Stats(), "down": Stats()}
        self._rng = {"up": random.Random(f"{seed}/up"), "down": random.Random(f"{seed}/down")}
        self.max_queue = max_queue
        self.max_clients = max_clients
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listen.bind((host, port))
        self._listen.setblocking(False)
        self.host, self.port = self._listen.getsockname()[:2]
        self._clients: dict[tuple, socket.socket] = {}
        self._queue: list[_Due] = []
        self._seq = 0
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp-proxy", daemon=True)

    def __enter__(self) -> UdpProxy:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in [self._listen, *self._clients.values()]:
            s.close()
        self._sel.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = 0.05
            if self._queue:
                timeout = max(0.0, min(timeout, self._queue[0].at - time.monotonic()))
            for key, _ in self._sel.select(timeout):
                self._read(key.fileobj, key.data)
            now = time.monotonic()
            while self._queue and self._queue[0].at <= now:
                due = heapq.heappop(self._queue)
                try:
                    if due.addr is None:
                        due.sock.send(due.data)
                    else:
                        due.sock.sendto(due.data, due.addr)
                except OSError:
                    pass  # nobody listening (yet): lost, as on a network

    def _read(self, sock: socket.socket, client: tuple | None) -> None:
        try:
            data, addr = sock.recvfrom(65536)
        except OSError:
            return
        if client is None:  # from a client, towards the server
            out = self._clients.get(addr)
            if out is None:
                if len(self._clients) >= self.max_clients:
                    return
                out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                out.connect(self.upstream)
                out.setblocking(False)
                self._clients[addr] = out
                self._sel.register(out, selectors.EVENT_READ, addr)
            self._forward("up", out, data, None)
        else:  # from the server, back to its client
            self._forward("down", self._listen, data, client)

    def _forward(self, direction: str, sock: socket.socket, data: bytes, addr: tuple | None) -> None:
        imp, rng, st = self.impair[direction], self._rng[direction], self.stats[direction]
        if rng.random() < imp.loss or (imp.drop_if is not None and imp.drop_if(data)):
            st.dropped += 1
            return
        copies = 2 if rng.random() < imp.duplicate else 1
        st.duplicated += copies - 1
        now = time.monotonic()
        for _ in range(copies):
            delay = imp.delay_ms + rng.random() * imp.jitter_ms
            if rng.random() < imp.reorder:
                delay += imp.reorder_ms
                st.reordered += 1
            if len(self._queue) >= self.max_queue:
                st.overflow += 1
                continue
            self._seq += 1
            heapq.heappush(self._queue, _Due(now + delay / 1000, self._seq, sock, data, addr))
            st.passed += 1
