"""A local source: an update package in a file on the board, pushed chunk by chunk.

The same calls a network transport makes (offer, then the chunks the agent
wants), so every agent path runs without a network:

    src = FileSource("update.fota")
    result = pump(agent, src)       # installs and resets when the policy says so
"""

from ..check import manifest


class FileSource:
    def __init__(self, path, chunk=4096):
        self.path = path
        self.chunk = chunk
        self._f = None
        self._payload_at = 0
        self.sent = 0  # payload bytes handed to the agent
        self.buf = bytearray(chunk)  # before the signature check churns the heap

    def offer(self):
        f = self._f = open(self.path, "rb")
        header = f.read(manifest.HEADER_SIZE)
        mlen, _ = manifest.parse_header(header)
        blob = header + f.read(mlen + manifest.SIGNATURE_SIZE)
        self._payload_at = manifest.HEADER_SIZE + mlen + manifest.SIGNATURE_SIZE
        return blob

    # Read the payload chunk at `offset` into `buf`; returns the byte count.
    def readinto(self, offset, buf):
        self._f.seek(self._payload_at + offset)
        n = self._f.readinto(buf)
        self.sent += n
        return n

    def close(self):
        if self._f:
            self._f.close()
            self._f = None


def pump(agent, src, window=8):
    """Offer, feed every wanted chunk through one buffer, finish."""
    agent.offer(src.offer(), src.chunk)
    mv = memoryview(src.buf)
    total = agent.manifest.encoded_size
    while True:
        offsets = agent.wanted(window)
        if not offsets:
            break
        for offset in offsets:
            n = src.readinto(offset, mv[: min(src.chunk, total - offset)])
            agent.on_chunk(offset, mv[:n])
    src.close()
    return agent.finish()
