#!/usr/bin/env bash
# Build a MicroPython Unix binary from a MicroPython checkout, 32-bit by default: small ints
# 31 bits wide, as on an ESP32, so device code that allocates big ints shows it here.
#
#   MICROPY_DIR=~/src/micropython scripts/build_micropython_unix.sh [32|64]
#   make micropython32 MICROPY_DIR=~/src/micropython      # the same, 32-bit
#
# Output: build/micropython32/micropython (or build/micropython64/; FOTA_BUILD_DIR replaces build/).
# Use it with FOTA_MICROPYTHON=<that path> (the virtual board, benches, tests) or
# FOTA_MICROPYTHON32=<that path> (tests/test_ed25519_32bit.py).
#
# Works on a checkout without submodules (a `git archive`), because it leaves out what needs them:
#   MICROPY_PY_SSL=0    unless lib/mbedtls and lib/micropython-lib are checked out (then ssl/tls are built and
#                       ssl.py frozen); without them hashlib keeps sha256 (lib/crypto-algorithms), loses sha1/md5
#   MICROPY_PY_BTREE=0  btree needs lib/berkeley-db-1.xx; firmware does not use it
#   MICROPY_PY_FFI=0    ffi needs libffi for the target (32-bit libffi-dev or lib/libffi)
#   FROZEN_MANIFEST     the variant's manifest freezes micropython-lib (lib/micropython-lib: mip, ssl,
#                       unix-ffi); ours freezes only extmod/asyncio, as the ESP32 port does
# Kept: deflate (lib/uzlib), hashlib sha256, vfs lfs1/lfs2/fat (lib/littlefs, lib/oofatfs), socket,
# select, asyncio, _thread, termios: everything firmware/ and host_tools/sim/board/ import.
# 32-bit needs a multilib gcc: Debian/Ubuntu `apt-get install gcc-multilib`. Exits 2 and says what
# to install when something is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BITS=${1:-32}
die() { echo "build_micropython_unix: $*" >&2; exit 2; }

case $BITS in 32 | 64) ;; *) die "usage: scripts/build_micropython_unix.sh [32|64]" ;; esac
[ -n "${MICROPY_DIR:-}" ] || die "MICROPY_DIR is not set: point it at a MicroPython checkout (v1.28), e.g.
  git clone --branch v1.28.0 https://github.com/micropython/micropython ~/src/micropython
  make micropython32 MICROPY_DIR=~/src/micropython"
[ -f "$MICROPY_DIR/ports/unix/Makefile" ] || die "MICROPY_DIR=$MICROPY_DIR has no ports/unix/Makefile: not a MicroPython checkout"
if [ "$BITS" = 32 ] && ! echo 'int main(void){return 0;}' | ${CC:-gcc} -m32 -x c -o /dev/null - 2>/dev/null; then
  die "${CC:-gcc} cannot build 32-bit programs: apt-get install gcc-multilib (Debian/Ubuntu)"
fi

OUT=${FOTA_BUILD_DIR:-$ROOT/build}/micropython$BITS
rm -rf "$OUT/obj" && mkdir -p "$OUT"   # flags are not tracked by make: build afresh (~30 s)
echo 'include("$(MPY_DIR)/extmod/asyncio")' >"$OUT/manifest.py"
# The freezing rule insists on a micropython-lib checkout (a README.md) even when nothing uses it.
mkdir -p "$OUT/no-micropython-lib" && echo "not used: manifest.py needs nothing from micropython-lib" >"$OUT/no-micropython-lib/README.md"
flags=(MICROPY_PY_BTREE=0 MICROPY_PY_FFI=0 FROZEN_MANIFEST="$OUT/manifest.py"
  MPY_LIB_DIR="$OUT/no-micropython-lib" BUILD="$OUT/obj")
[ "$BITS" = 32 ] && flags+=(MICROPY_FORCE_32BIT=1)
# ssl when the checkout has lib/mbedtls (`git submodule update --init lib/mbedtls`): TLS costs heap on the
# Unix port (mbedTLS allocates from MicroPython's heap there), so heap figures with TLS need it.
# With it, micropython-lib's ssl.py (lib/micropython-lib) is frozen as the ESP32 port freezes it; firmware imports ssl.
if [ -f "$MICROPY_DIR/lib/mbedtls/library/ssl_tls.c" ]; then
  SSL_PY="$MICROPY_DIR/lib/micropython-lib/python-stdlib/ssl"
  [ -f "$SSL_PY/ssl.py" ] || die "lib/mbedtls is there but not lib/micropython-lib: git submodule update --init lib/micropython-lib"
  echo "module(\"ssl.py\", base_path=\"$SSL_PY\", opt=3)" >>"$OUT/manifest.py"
else
  flags+=(MICROPY_PY_SSL=0)
fi
# A `make micropython32` above us must not leak its variables into MicroPython's make.
port_make() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make "$@"; }
[ -x "$MICROPY_DIR/mpy-cross/build/mpy-cross" ] || port_make -C "$MICROPY_DIR/mpy-cross" -j"$(nproc 2>/dev/null || echo 2)"
port_make -C "$MICROPY_DIR/ports/unix" -j"$(nproc 2>/dev/null || echo 2)" "${flags[@]}"
cp "$OUT/obj/micropython" "$OUT/micropython"

# What was built: the small-int width tells a 32-bit build (31 bits, like an ESP32) from a 64-bit one.
"$OUT/micropython" -c "
import sys, gc, deflate, hashlib, vfs, select, socket, asyncio
def width():
    for b in range(8, 70):
        gc.collect()
        a = gc.mem_alloc()
        x = 1 << b
        if gc.mem_alloc() != a:
            return b + 1
print('build_micropython_unix: MicroPython %s, small ints %d bits, sys.maxsize %d' % (
    '.'.join(str(v) for v in sys.implementation.version[:3]), width(), sys.maxsize))
"
echo "build_micropython_unix: $OUT/micropython"
echo "  use it: export FOTA_MICROPYTHON=$OUT/micropython   (or FOTA_MICROPYTHON$BITS=...)"
