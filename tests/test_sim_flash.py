"""NOR flash semantics and power-cut injection of the virtual board's flash."""

from __future__ import annotations

import random

import pytest

from host_tools.sim.flash import Flash, FlashError, PowerLoss, PowerPlan

pytestmark = pytest.mark.host
SIZE = 64 * 1024


def ops_script():
    rng = random.Random(7)
    ops = []
    for sector in range(4):
        ops.append(("erase", sector * 4096, 4096))
        for _ in range(3):
            addr = sector * 4096 + rng.randrange(0, 4096 - 64)
            ops.append(("write", addr, bytes(rng.randrange(256) for _ in range(64))))
    ops.append(("erase", 4096, 8192))
    ops.append(("write", 4096, b"\x00" * 32))
    return ops


def model(ops, upto):
    # What a chip holds after ops 1..upto: erase sets 0xFF, a write ANDs.
    mem = bytearray(b"\xa5" * SIZE)
    for kind, addr, arg in ops[:upto]:
        if kind == "erase":
            mem[addr : addr + arg] = b"\xff" * arg
        else:
            for i, b in enumerate(arg):
                mem[addr + i] &= b
    return bytes(mem)


def run(flash, ops):
    for kind, addr, arg in ops:
        if kind == "erase":
            flash.erase(addr, arg)
        else:
            flash.write(addr, arg)


def fresh(tmp_path, **kw):
    path = tmp_path / "flash.bin"
    path.write_bytes(b"\xa5" * SIZE)
    return Flash(path, **kw)


def test_erase_sets_ff_and_write_only_clears_bits(tmp_path):
    flash = fresh(tmp_path, strict=False)
    flash.erase(0, 4096)
    assert flash.read(0, 4096) == b"\xff" * 4096
    flash.write(0, b"\x0f\xf0")
    flash.write(0, b"\xf0\xff")  # over programmed data: the chip ANDs
    assert flash.read(0, 2) == b"\x00\xf0"
    assert flash.ops == 3


def test_strict_mode_reports_a_write_over_unerased_data(tmp_path):
    flash = fresh(tmp_path)
    flash.erase(0, 4096)
    flash.write(0, b"\x0f")
    assert flash.faults == []
    flash.write(0, b"\xf0")
    assert len(flash.faults) == 1 and "unerased" in flash.faults[0].message
    assert flash.read(0, 1) == b"\x00"


def test_erase_must_be_sector_aligned(tmp_path):
    flash = fresh(tmp_path)
    with pytest.raises(FlashError):
        flash.erase(100, 4096)
    with pytest.raises(FlashError):
        flash.erase(0, 100)


@pytest.mark.parametrize("cut", [1, 2, 5, 9, 13, 17, 18])
def test_power_cut_before_op_n_keeps_exactly_ops_before_it(tmp_path, cut):
    ops = ops_script()
    flash = fresh(tmp_path, strict=False, plan=PowerPlan(cut_before=cut))
    with pytest.raises(PowerLoss) as lost:
        run(flash, ops)
    assert lost.value.op == cut
    flash.close()
    assert (tmp_path / "flash.bin").read_bytes() == model(ops, cut - 1)


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 17, 18])
def test_torn_operation_lands_partly(tmp_path, cut):
    ops = ops_script()
    flash = fresh(tmp_path, strict=False, plan=PowerPlan(cut_before=cut, tear=True, seed=cut))
    with pytest.raises(PowerLoss):
        run(flash, ops)
    flash.close()
    before, after = model(ops, cut - 1), model(ops, cut)
    got = (tmp_path / "flash.bin").read_bytes()
    kind = ops[cut - 1][0]
    for b, a, g in zip(before, after, got):
        if kind == "erase":  # bits only went 0 -> 1, never past the erased value
            assert g & b == b and g | a == a
        else:  # bits only went 1 -> 0, never past the written value
            assert g & b == g and g & a == a
    assert got != after or before == after
