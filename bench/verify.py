"""Benchmark firmware/fota/check/ed25519.verify under micropython beside pyca/cryptography.

    .venv/bin/python bench/verify.py [--vectors 64] [--rounds 5]

Prints ms per verify under the micropython binary (N verifies in one process, timed
with time.ticks_us inside it), the same for pyca/cryptography (OpenSSL) in this run,
their ratio, and the smallest -X heapsize (binary search, KB) in which importing
fota.check.ed25519 and verifying works, from source and precompiled with mpy-cross.
Figures only: nothing is asserted about timing.

This file runs under both interpreters: CPython drives, and micropython runs
mp_main() from the same file with the vectors on stdin.
"""

import sys

ROUNDS = 5


# MicroPython side: read "pk:sig:len" + raw message records from stdin, verify each
# once (first call builds the fixed tables), then time `rounds` passes over them.
def mp_main(rounds):
    import time
    from binascii import unhexlify

    from fota.check.ed25519 import verify

    inp = sys.stdin.buffer
    vecs = []
    while True:
        head = inp.readline()
        if not head:
            break
        pk, sig, n = head.strip().split(b":")
        vecs.append((unhexlify(pk), inp.read(int(n)), unhexlify(sig)))
    t = time.ticks_us()
    ok = verify(*vecs[0])
    first = time.ticks_diff(time.ticks_us(), t)
    for v in vecs:
        ok = verify(*v) and ok
    best = None
    for _ in range(rounds):
        t = time.ticks_us()
        for v in vecs:
            verify(*v)
        us = time.ticks_diff(time.ticks_us(), t)
        best = us if best is None or us < best else best
    print("ok" if ok else "FAIL", first, best / len(vecs))


# Heap probe: the smallest program that imports the verifier and checks TEST 1.
HEAP_PROBE = "from fota.check.ed25519 import verify\nprint(verify(bytes.fromhex('{pk}'), b'', bytes.fromhex('{sig}')))\n"


def load_vectors(count):
    """The first `count` (pk, msg, sig) of cryptography-vectors' Ed25519 sign.input."""
    import os

    import cryptography_vectors

    path = os.path.join("asymmetric", "Ed25519", "sign.input")
    out = []
    with cryptography_vectors.open_vector_file(path, "r") as f:
        for line in f:
            _, pk, msg, sig, _ = line.strip().split(":")
            out.append((bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)[:64]))
            if len(out) == count:
                break
    return out


def micropython():
    """The interpreter under test: $FOTA_MICROPYTHON, the fota[sim] wheel, or PATH (host_tools.sim.interpreter)."""
    from host_tools.sim.interpreter import check_micropython

    return check_micropython().path


def run_mp(args, mpypath, heapsize=None, stdin=None):
    import os
    import subprocess

    cmd = [micropython()] + (["-X", "heapsize=%dk" % heapsize] if heapsize else []) + args
    env = dict(os.environ, MICROPYPATH=mpypath)
    return subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=600)


def time_micropython(vectors, rounds, firmware):
    """(first call us, best average us per verify) in one micropython process."""
    stdin = b"".join(b"%s:%s:%d\n%s" % (pk.hex().encode(), sig.hex().encode(), len(msg), msg) for pk, msg, sig in vectors)
    res = run_mp([__file__, "--mp", str(rounds)], firmware, stdin=stdin)
    out = res.stdout.decode().split()
    if res.returncode != 0 or out[:1] != ["ok"]:
        raise SystemExit("micropython run failed:\n" + res.stdout.decode() + res.stderr.decode())
    return float(out[1]), float(out[2])


def time_pyca(vectors, rounds):
    """Best average us per verify with pyca/cryptography."""
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = [(Ed25519PublicKey.from_public_bytes(pk), msg, sig) for pk, msg, sig in vectors]
    best = None
    for _ in range(rounds):
        t = time.perf_counter()
        for key, msg, sig in keys:
            key.verify(sig, msg)
        dt = time.perf_counter() - t
        best = dt if best is None or dt < best else best
    return best / len(keys) * 1e6


def smallest_heap(mpypath, vector, lo=8, hi=256):
    """Binary search for the smallest -X heapsize (KB) where HEAP_PROBE prints True."""
    pk, _, sig = vector
    code = HEAP_PROBE.format(pk=pk.hex(), sig=sig.hex())

    def works(kb):
        res = run_mp(["-c", code], mpypath, heapsize=kb)
        return res.returncode == 0 and res.stdout.strip() == b"True"

    if not works(hi):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if works(mid):
            hi = mid
        else:
            lo = mid
    return hi


def compile_mpy(firmware, dest):
    """mpy-cross what fota.check.ed25519 needs into dest/fota; returns dest."""
    import os
    import shutil
    import subprocess

    mpy_cross = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    os.makedirs(os.path.join(dest, "fota", "check"))
    for name in ("compat", "check/ed25519", "check/sha512"):
        src = os.path.join(firmware, "fota", name + ".py")
        out = os.path.join(dest, "fota", name + ".mpy")
        subprocess.run([mpy_cross, "-o", out, "-s", "fota/%s.py" % name, src], check=True)
    for name in ("__init__.py", "check/__init__.py"):
        shutil.copy(os.path.join(firmware, "fota", name), os.path.join(dest, "fota", name))
    return dest


def host_main(argv=None):
    import argparse
    import os
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=64, help="sign.input vectors to cycle")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed passes; best kept")
    opts = parser.parse_args(argv)
    firmware = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "firmware")
    firmware = os.path.normpath(firmware)
    vectors = load_vectors(opts.vectors)
    longest = max(len(m) for _, m, _ in vectors)

    first_us, mp_us = time_micropython(vectors, opts.rounds, firmware)
    pyca_us = time_pyca(vectors, opts.rounds)
    print(
        "Ed25519 verify: %d sign.input vectors (%d keys, messages 0..%d bytes), best of %d"
        % (len(vectors), len(vectors), longest, opts.rounds)
    )
    print("  micropython, pure Python   %8.3f ms/verify  (first call, builds tables: %.1f ms)" % (mp_us / 1000, first_us / 1000))
    print("  pyca/cryptography, OpenSSL %8.3f ms/verify" % (pyca_us / 1000))
    print("  ratio micropython / pyca   %8.0f x" % (mp_us / pyca_us))

    with tempfile.TemporaryDirectory() as tmp:
        src_kb = smallest_heap(firmware, vectors[0])
        mpy_kb = smallest_heap(compile_mpy(firmware, tmp), vectors[0])
    print("smallest -X heapsize for import + verify (binary search):")
    print("  from source (.py, compiled on import)  %s KB" % src_kb)
    print("  precompiled with mpy-cross (.mpy)      %s KB" % mpy_kb)


if __name__ == "__main__":
    if sys.implementation.name == "micropython":
        mp_main(int(sys.argv[sys.argv.index("--mp") + 1]))
    else:
        host_main()
