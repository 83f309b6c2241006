#!/usr/bin/env bash
# MicroPython's own test runner against a virtual board: run-tests.py -t port:PTY, unmodified.
#   make upstream-tests MICROPY_DIR=/path/to/micropython [UPSTREAM_TESTS="-d ports/esp32 basics"]
# MICROPY_DIR is a MicroPython checkout (v1.28.0); nothing of it is copied into this repository.
set -euo pipefail
MICROPY_DIR=${MICROPY_DIR:?set MICROPY_DIR to a MicroPython checkout}
TESTS=${UPSTREAM_TESTS:--d ports/esp32}
BIN=$(cd "${BIN:-.venv/bin}" && pwd)  # absolute, symlinks kept (the venv python)
[ -f "$MICROPY_DIR/tests/run-tests.py" ] || { echo "no tests/run-tests.py under $MICROPY_DIR" >&2; exit 2; }
HOME_DIR=$(mktemp -d)
export FOTA_HOME=$HOME_DIR
cleanup() { [ -n "${RUN_PID:-}" ] && kill "$RUN_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$HOME_DIR"; }
trap cleanup EXIT
mkdir -p "$HOME_DIR/app" && echo "VERSION = 'upstream-tests'" > "$HOME_DIR/app/app.py"
"$BIN/fota" build --board sim --app "$HOME_DIR/app" --version 1.0.0 --no-trust -o "$HOME_DIR/app.bin" >/dev/null
"$BIN/fota" sim create up >/dev/null
"$BIN/fota" flash "$HOME_DIR/app.bin" --port sim:up --board sim >/dev/null
"$BIN/fota" sim run up > "$HOME_DIR/board.log" 2>&1 &
RUN_PID=$!
for _ in $(seq 100); do PTY=$("$BIN/fota" sim repl up 2>/dev/null) && break; sleep 0.2; done
echo "virtual board up on $PTY (console log: board.log)"
cd "$MICROPY_DIR/tests"
MICROPY_MICROPYTHON="$BIN/micropython" "$BIN/python" ./run-tests.py -t "port:$PTY" $TESTS
