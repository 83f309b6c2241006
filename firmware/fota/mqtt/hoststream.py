"""CPython sockets seen through the MicroPython stream calls the client uses.

Only the host (unit tests, tools) loads this: MicroPython sockets and SSL sockets already have
readinto(buf, n), write(buf, n) and poll support, so the device never imports it.
"""

import select


class HostStream:
    def __init__(self, sock):
        self.s = sock
        self._p = select.poll()
        self._p.register(sock, select.POLLIN)

    # Fill buf[:n]; a short count means EOF (MicroPython's readinto does the same).
    def readinto(self, buf, n):
        mv, got = memoryview(buf), 0
        while got < n:
            r = self.s.recv_into(mv[got:n])
            if not r:
                break
            got += r
        return got

    def write(self, buf, n):
        self.s.sendall(memoryview(buf)[:n])
        return n

    # Like MicroPython's poll.ipoll(ms): an SSL socket with decrypted bytes waiting is readable at once.
    def ipoll(self, ms):
        pending = getattr(self.s, "pending", None)
        if pending is not None and pending():
            return ((self.s, select.POLLIN),)
        return self._p.poll(ms)

    def close(self):
        self.s.close()
