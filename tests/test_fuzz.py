"""The bounded slice of `make fuzz` that CI runs: every device parser under MicroPython at a 64 KiB heap."""

from __future__ import annotations

import pytest
from fuzz import run

pytestmark = pytest.mark.fw


def test_device_parsers_take_any_bytes_under_micropython():
    inputs, escapes, memory, out = run.run(per=3000, seed=12)
    assert inputs == 3000 * len(run.TARGETS), out
    assert escapes == 0 and memory == 0, out


def test_the_fuzzer_finds_what_issue_12_reported():
    # the corpus keeps the two reported attacks by name; run alone, they must parse to the parsers' own errors
    inputs, escapes, memory, out = run.run(per=2, seed=1, targets=("coap", "inflate"))
    assert inputs == 4 and escapes == 0 and memory == 0, out
