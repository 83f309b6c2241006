#!/usr/bin/env bash
# Type-check firmware/ with pyright against the official MicroPython ESP32 stubs.
#
#   bash scripts/lint_firmware.sh            # installs what is missing, then checks firmware/
#   bash scripts/lint_firmware.sh --stats    # extra arguments go to pyright
#
# Installs, only when missing or at another version:
#   - pyright, pinned in scripts/pyright/package.json, into scripts/pyright/node_modules/ (npm, Node >= 18;
#     not at the top: firmware/package.json is the device code's mip package);
#   - micropython-esp32-stubs + micropython-stdlib-stubs into build/typings/ (pip --target), plus
#     build/typings/_esp32_upstream.pyi, the official esp32 stub that typings/esp32.pyi re-exports.
# Then a self-check proves the MicroPython stubs are the ones in use (a CPython-only call must fail),
# and pyright runs with pyrightconfig.json. Exit status: pyright's (0 = no errors).
set -euo pipefail
cd "$(dirname "$0")/.."

STUBS="micropython-esp32-stubs==1.29.0.post1 micropython-stdlib-stubs==1.29.0.post2"
STUBS_DIR=build/typings
NODE_DIR=scripts/pyright
PYRIGHT=$NODE_DIR/node_modules/.bin/pyright

if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=${PYTHON:-python3}; fi

die() { echo "lint_firmware: $*" >&2; exit 2; }

# pyright from npm, at the version scripts/pyright/package.json pins.
command -v node >/dev/null && command -v npm >/dev/null ||
  die "needs Node.js >= 18 and npm (Debian: apt-get install -y nodejs npm)"
want=$(node -p "require('./$NODE_DIR/package.json').devDependencies.pyright")
have=$(node -p "try { require('./$NODE_DIR/node_modules/pyright/package.json').version } catch (e) { '' }")
if [ "$have" != "$want" ]; then
  echo "lint_firmware: installing pyright $want (npm)"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --no-package-lock --loglevel=error >/dev/null ||
    die "npm install failed"
fi

# The stubs, into a directory of their own: they shadow stdlib modules (time, os, struct...) and
# must not land in the host venv. The stamp records which pins the directory holds.
if [ "$(cat "$STUBS_DIR/.installed" 2>/dev/null)" != "$STUBS" ]; then
  echo "lint_firmware: installing $STUBS into $STUBS_DIR"
  rm -rf "$STUBS_DIR"
  # shellcheck disable=SC2086  # $STUBS is a list of requirement specifiers
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-user --target "$STUBS_DIR" $STUBS ||
    die "pip install failed"
  cp "$STUBS_DIR/esp32.pyi" "$STUBS_DIR/_esp32_upstream.pyi"
  echo "$STUBS" >"$STUBS_DIR/.installed"
fi

# Self-check: each line marked `# E` must be an error and nothing else may be one. If pyright fell
# back to CPython's typeshed, or our esp32 override stopped loading, this fails before the real run.
canary=build/lint-canary
mkdir -p "$canary"
echo '{ "extends": "../../pyrightconfig.json", "include": ["."], "executionEnvironments": [] }' \
  >"$canary/pyrightconfig.json"
cat >"$canary/canary.py" <<'EOF'
import esp32
import hashlib
import machine
import time

p = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")
n = p.ioctl(4, 0) * 4096
p.writeblocks(0, bytearray(4096))
p.writeblocks(0, b"\x00", 17)
esp32.NVS("fota")
t = time.ticks_diff(time.ticks_ms(), 0)
esp32.Partition(1, block_size=4096)  # E: block_size is positional-only
time.monotonic()  # E: CPython only
hashlib.sha512(b"")  # E: the ESP32 port has no sha512
machine.WTD  # E: no such class
p.set_boot()
machine.reset()  # NoReturn: keep it last, pyright does not check code after it
EOF
"$PYRIGHT" -p "$canary/pyrightconfig.json" --outputjson >"$canary/result.json" || true
"$PYTHON" - "$canary" <<'EOF' || die "stub self-check failed (above): the MicroPython stubs or typings/esp32.pyi are not in effect"
import json, sys
d = sys.argv[1]
src = open(d + "/canary.py").read().splitlines()
want = {i + 1 for i, line in enumerate(src) if "# E:" in line}
diags = json.load(open(d + "/result.json"))["generalDiagnostics"]
got = {x["range"]["start"]["line"] + 1 for x in diags if x["severity"] == "error"}
if got != want:
    for x in diags:
        print("  %s:%d %s" % (x["file"], x["range"]["start"]["line"] + 1, x["message"].splitlines()[0]), file=sys.stderr)
    sys.exit("lint_firmware: expected errors on lines %s, got %s" % (sorted(want), sorted(got)))
EOF

exec "$PYRIGHT" -p pyrightconfig.json "$@"
