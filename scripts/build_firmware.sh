#!/usr/bin/env bash
# Build real MicroPython firmware for a board in boards/, with firmware/ (ota, mqtt) frozen in.
#
#   IDF_PATH=~/esp/esp-idf MICROPY_DIR=~/src/micropython scripts/build_firmware.sh esp32_generic
#
# Needs ESP-IDF (IDF_PATH, with export.sh; MicroPython 1.28 supports v5.2 .. v5.5) and a MicroPython
# checkout (MICROPY_DIR). The board directory is used where it is (make BOARD_DIR=...), so its
# manifest.py finds firmware/ beside it. Output in build/<board>/ (FOTA_BUILD_DIR replaces build/):
#   micropython.bin      the app image: what an OTA update carries (checked with `fota build`)
#   firmware.bin         bootloader + partition table + app, for the first flash over USB
#   bootloader.bin, partition-table.bin, sdkconfig, idf/ (the whole ESP-IDF build directory)
# Without ESP-IDF or MicroPython it exits 2 and says what to install.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IDF_MIN=5.2
IDF_MAX=5.5

die() { echo "build_firmware: $*" >&2; exit 2; }

[ $# -eq 1 ] || die "usage: scripts/build_firmware.sh BOARD   (boards: $(cd "$ROOT/boards" && ls -d */ | tr -d / | tr '\n' ' '))"
BOARD=$1
BOARD_DIR=$ROOT/boards/$BOARD
[ -f "$BOARD_DIR/board.json" ] || die "unknown board '$BOARD' (no boards/$BOARD/board.json)"
[ -f "$BOARD_DIR/mpconfigboard.cmake" ] ||
  die "board '$BOARD' has no MicroPython board definition (mpconfigboard.cmake); the sim board's image is made by \`fota build --board sim\`"

# What is missing, all of it at once, then how to get it.
missing=()
if [ -z "${IDF_PATH:-}" ]; then
  missing+=("IDF_PATH is not set: it must point at an ESP-IDF checkout (v$IDF_MIN .. v$IDF_MAX)")
elif [ ! -f "$IDF_PATH/export.sh" ]; then
  missing+=("IDF_PATH=$IDF_PATH has no export.sh: not an ESP-IDF checkout")
fi
if [ -z "${MICROPY_DIR:-}" ]; then
  missing+=("MICROPY_DIR is not set: it must point at a MicroPython checkout (v1.28)")
elif [ ! -f "$MICROPY_DIR/ports/esp32/Makefile" ]; then
  missing+=("MICROPY_DIR=$MICROPY_DIR has no ports/esp32/Makefile: not a MicroPython checkout")
fi
if [ ${#missing[@]} -gt 0 ]; then
  {
    echo "build_firmware: cannot build real firmware for $BOARD:"
    printf '  - %s\n' "${missing[@]}"
    cat <<EOF

Install, once (MicroPython 1.28 builds with ESP-IDF v$IDF_MIN .. v$IDF_MAX, e.g. v5.5.1):
  git clone --branch v5.5.1 --recursive https://github.com/espressif/esp-idf ~/esp/esp-idf
  ~/esp/esp-idf/install.sh esp32,esp32s3
  git clone --branch v1.28.0 https://github.com/micropython/micropython ~/src/micropython
  make -C ~/src/micropython/mpy-cross

Then set, and build:
  export IDF_PATH=~/esp/esp-idf            # this script runs: . \$IDF_PATH/export.sh
  export MICROPY_DIR=~/src/micropython
  scripts/build_firmware.sh $BOARD         # or: make firmware BOARD=$BOARD

The virtual board needs none of this: \`fota build --board sim\`.
EOF
  } >&2
  exit 2
fi

# ESP-IDF's environment (export.sh is not written for `set -eu`).
set +eu
# shellcheck disable=SC1091
. "$IDF_PATH/export.sh" >/dev/null || { set -eu; die ". \$IDF_PATH/export.sh failed: run $IDF_PATH/install.sh esp32,esp32s3 first"; }
set -eu
idf_version=$(idf.py --version 2>/dev/null || true)
if [[ $idf_version =~ v([0-9]+)\.([0-9]+) ]]; then
  idf_mm="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
else
  die "cannot tell the ESP-IDF version from 'idf.py --version' ($idf_version)"
fi
if ! printf '%s\n%s\n%s\n' "$IDF_MIN" "$idf_mm" "$IDF_MAX" | sort -C -V; then
  [ "${FOTA_ANY_IDF:-}" = 1 ] ||
    die "ESP-IDF $idf_version: MicroPython 1.28 supports v$IDF_MIN .. v$IDF_MAX (set FOTA_ANY_IDF=1 to try anyway)"
  echo "build_firmware: warning: ESP-IDF $idf_version is outside v$IDF_MIN .. v$IDF_MAX" >&2
fi

OUT=${FOTA_BUILD_DIR:-$ROOT/build}/$BOARD
mkdir -p "$OUT"
[ -x "$MICROPY_DIR/mpy-cross/build/mpy-cross" ] || make -C "$MICROPY_DIR/mpy-cross"

# A `make firmware BOARD=...` above us must not leak its variables (BOARD, BUILD, -j) into
# MicroPython's make: it takes the board name from BOARD_DIR.
port_make() {
  env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BOARD -u BUILD \
    make -C "$MICROPY_DIR/ports/esp32" BOARD_DIR="$BOARD_DIR" BUILD="$OUT/idf" "$@"
}
echo "build_firmware: $BOARD with $idf_version, MicroPython in $MICROPY_DIR"
port_make submodules
port_make -j"$(nproc 2>/dev/null || echo 2)" all

cp "$OUT/idf/micropython.bin" "$OUT/idf/firmware.bin" "$OUT/idf/sdkconfig" "$OUT/"
cp "$OUT/idf/bootloader/bootloader.bin" "$OUT/idf/partition_table/partition-table.bin" "$OUT/"

# The app image must pass what the board's bootloader checks and fit its OTA slot.
if [ -x "$ROOT/.venv/bin/fota" ]; then
  "$ROOT/.venv/bin/fota" build --board "$BOARD" --image "$OUT/micropython.bin" -o "$OUT/micropython.app-bin"
else
  echo "build_firmware: no .venv (make setup): micropython.bin not checked against boards/$BOARD" >&2
fi
echo "build_firmware: $OUT/micropython.bin ($(wc -c <"$OUT/micropython.bin") bytes)"
