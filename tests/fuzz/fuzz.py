# The device's parsers under MicroPython, fed mutated valid inputs (issue 12).
#
#     MICROPYPATH=<firmware compiled by mpy-cross> micropython -X heapsize=64k tests/fuzz/fuzz.py CORPUS N SEED [TARGET]
#
# Each target takes any bytes and may only fail with its own error (OtaError, MQTTError / OSError, a False or None
# result); anything else escaping is counted and printed with the input, as is every MemoryError. The mutator is a
# seeded xorshift, so a run is the same on every interpreter and machine. tests/fuzz/run.py compiles the firmware
# and runs this; tests/fuzz/corpus/<target>/ holds the valid inputs mutations start from.

import gc
import os
import sys

from fota.errors import OtaError

# Each target imports only its parser (a process runs one target): the Unix port keeps imported bytecode in
# the 64 KiB heap, which a chip keeps in flash.


class Rng:
    def __init__(self, seed):
        self.s = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

    def next(self):
        x = self.s
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.s = x
        return x

    def below(self, n):
        return self.next() % n if n > 0 else 0


_MAX_INPUT = 2048  # bytes of a mutated input (the largest corpus entries are 1152 and 1512)
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x0D, 0x0E, 0x0F, 0xFE, 0x40, 0x20)


def mutate(rng, data, corpus):
    # MicroPython's bytearray has no slice deletion or insertion: runs are cut and joined instead.
    b = bytearray(data)
    for _ in range(1 + rng.below(4)):
        op = rng.below(9)
        if len(b) > _MAX_INPUT:
            b = b[:_MAX_INPUT]
        n = len(b)
        if op == 0 and n:  # flip a bit
            i = rng.below(n)
            b[i] ^= 1 << rng.below(8)
        elif op == 1 and n:  # an interesting byte
            b[rng.below(n)] = _INTERESTING[rng.below(len(_INTERESTING))]
        elif op == 2 and n:  # a random byte
            b[rng.below(n)] = rng.below(256)
        elif op == 3 and n:  # truncate
            b = b[: rng.below(n)]
        elif op == 4 and n:  # delete a run
            i = rng.below(n)
            b = b[:i] + b[i + 1 + rng.below(16) :]
        elif op == 5:  # insert random bytes
            i = rng.below(n + 1)
            b = b[:i] + bytearray(rng.below(256) for _ in range(1 + rng.below(8))) + b[i:]
        elif op == 6 and n:  # duplicate a run
            i = rng.below(n)
            b = b[:i] + b[i : i + 1 + rng.below(32)] + b[i:]
        elif op == 7 and n >= 2:  # a 16-bit field set to an extreme
            i = rng.below(n - 1)
            v = (0, 0xFFFF, 0x8000, n, n + 1)[rng.below(5)]
            b[i] = v & 0xFF
            b[i + 1] = v >> 8
        elif op == 8 and corpus:  # splice with another corpus entry
            other = corpus[rng.below(len(corpus))]
            i = rng.below(n + 1)
            b = b[:i] + bytearray(other[rng.below(len(other) + 1) :])
    return bytes(b)


# -- targets: one function per parser; return normally or raise the parser's own error ----------------------
def t_offer(data):
    from fota.check import manifest
    from fota.link import wire

    offer = wire.parse_offer(data, len(data))
    if offer is not None:
        blob = memoryview(data)[wire.OFFER_HEAD :]
        manifest.parse_header(blob[: manifest.HEADER_SIZE])


def t_data(data):
    from fota.link import wire

    wire.parse_data(memoryview(data))


def t_manifest(data):
    from fota.check import manifest

    m = manifest.parse_manifest(data)
    dev = manifest.Device("sim", 0, "A", 1, "1.0.0", 1700000000)
    manifest.check_device(m, dev, 1 << 20)


_MSG = []


def t_coap(data):
    if not _MSG:
        from fota.coap.message import Msg

        _MSG.append(Msg())
    msg = _MSG[0]
    buf = bytearray(data)  # exactly the datagram: reading past it raises IndexError
    mv = memoryview(buf)
    pos = 0
    while pos < len(buf):  # merged datagrams: parse each framed message in turn
        if not msg.parse(mv, pos, len(buf)) or msg.end <= pos:
            break
        msg.payload_len()
        pos = msg.end


class _Stream:
    # The bytes of a broker's packets, read as the client reads a socket (readinto, write).
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def readinto(self, buf, n=-1):
        if n < 0:
            n = len(buf)
        chunk = self.data[self.pos : self.pos + n]
        buf[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def write(self, buf, n=-1):
        return n

    def close(self):
        pass


_CLIENT = []


def t_mqtt(data):
    if not _CLIENT:
        from fota.mqtt.client import MQTTClient

        _CLIENT.append(MQTTClient("fuzz", "localhost", buf_size=1200))
        _CLIENT[0].set_callback(lambda topic, payload, retained: None)
    c = _CLIENT[0]
    c.sock = _Stream(data)
    try:
        while c.sock is not None and c.sock.pos < len(data):
            c._handle()
    except OSError:  # MQTTError is one: the connection is closed, the link reconnects
        pass


class _Manifest:
    def __init__(self, n):
        self.encoded_size = n
        self.image_size = 64 * 1024
        self.zlib_wbits = 10


_CARRY = bytearray(4096 + 1024)
_OUT = bytearray(4096)


def t_inflate(data):
    from fota.slot.inflate import Inflater

    inf = Inflater(lambda offset, mv: None, _Manifest(len(data)), _CARRY, _OUT)
    for offset in range(0, len(data), 512):
        inf.feed(offset, memoryview(data)[offset : offset + 512])
    inf.finished()


def t_cmd(data):
    from fota.link import wire

    wire.parse_command(data)


TARGETS = {"offer": t_offer, "data": t_data, "manifest": t_manifest, "coap": t_coap, "mqtt": t_mqtt,
           "inflate": t_inflate, "cmd": t_cmd}
ALLOWED = (OtaError,)  # the parsers' own error (a False / None result is not an exception at all)


def load(corpus_dir, name):
    out = []
    d = corpus_dir + "/" + name
    for f in sorted(os.listdir(d)):
        with open(d + "/" + f, "rb") as fh:
            out.append(fh.read())
    return out


def run(corpus_dir, n, seed, only=None):
    total = escapes = memory = 0
    for name in sorted(TARGETS):
        if only and name != only:
            continue
        fn, corpus = TARGETS[name], load(corpus_dir, name)
        rng = Rng(seed + sum(name.encode()))
        esc = mem = 0
        for i in range(n):
            data = corpus[i % len(corpus)] if i < len(corpus) else mutate(rng, corpus[rng.below(len(corpus))], corpus)
            try:
                fn(data)
            except ALLOWED:
                pass
            except MemoryError:
                mem += 1
                if mem <= 3:
                    print("MEMORY", name, i, bytes(data[:64]).hex())
            except Exception as e:  # noqa: BLE001 - what the fuzzer looks for: anything else escaping a parser
                esc += 1
                if esc <= 5:
                    print("ESCAPE", name, i, repr(e), bytes(data[:200]).hex())
            data = None
            gc.collect()  # the mutator's copies must not fragment the heap the parser gets
        print("target", name, "inputs", n, "escapes", esc, "memory", mem)
        total += n
        escapes += esc
        memory += mem
    print("TOTAL inputs", total, "escapes", escapes, "memory", memory)
    return escapes + memory


if __name__ == "__main__":
    args = sys.argv[1:]
    bad = run(args[0], int(args[1]), int(args[2]), args[3] if len(args) > 3 else None)
    sys.exit(1 if bad else 0)
