"""Delta updates (issue 20): host format, the device patcher under CPython, and virtual boards.

A delta package (encoding 2) carries zlib-deflated patch records and names its base (record
0x0F: size, SHA-256, patch size). The board applies it from its running slot into the next one
while the chunks arrive; a board running another image refuses it before any flash write.
"""

from __future__ import annotations

import hashlib
import importlib
import random
import shutil
import zlib

import pytest

from agentkit import make_board, run_until_done, status, wait_done
from host_tools import firmware
from host_tools.image import delta
from host_tools.image.package import Manifest, VerifyError, decode_payload, make_package, parse_package, verify_package
from simkit import fw_image, session_signer


def delta_package(base: bytes, new: bytes, *, version: str = "2.0.0", sequence: int = 2) -> bytes:
    m = Manifest(sequence=sequence, version=version, board="sim", chip_id=0, hw_revs=("A",), image_size=0, image_sha256=b"")
    return make_package(new, m, session_signer(), encoding="delta", base=base).to_bytes()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Edits like a rebuild makes: bytes changed, a block inserted, a block removed."""
    out = bytearray(data)
    for _ in range(20):
        out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
    at = rng.randrange(len(out))
    out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
    cut = rng.randrange(len(out) - 2000)
    del out[cut : cut + rng.randrange(1, 2000)]
    return bytes(out)


# -- host format ---------------------------------------------------------------------------
@pytest.mark.host
@pytest.mark.parametrize("seed", range(6))
def test_records_rebuild_the_new_image(seed):
    rng = random.Random(seed)
    base = bytes(rng.choice(b"abcdefgh\x00\x01") for _ in range(20000 + seed * 3000))
    new = mutate(base, rng)
    records = delta.make_records(base, new)
    assert delta.apply_records(base, records) == new
    payload, size = delta.encode_delta(base, new, 10)
    assert size == len(records) and delta.decode_delta(base, payload, 10) == new


@pytest.mark.host
def test_package_names_its_base_and_verifies_against_it():
    v1, v2 = fw_image("1.0.0"), fw_image("2.0.0")
    pkg = parse_package(delta_package(v1, v2))
    m = pkg.manifest
    assert m.encoding == 2 and m.encoding_name == "delta" and m.zlib_wbits == 11
    assert m.base_size == len(v1) and m.base_sha256 == hashlib.sha256(v1).digest()
    assert m.patch_size == len(zlib.decompress(pkg.payload, 11))
    keys = [session_signer().public_key]
    assert verify_package(pkg, keys, base=v1).ok
    no_base = verify_package(pkg, keys)
    assert no_base.ok and any("no base given" in n for n in no_base.notes)
    assert any("not the one this delta names" in p for p in verify_package(pkg, keys, base=v2).problems)
    with pytest.raises(VerifyError):
        decode_payload(pkg)
    assert len(pkg.payload) < len(v2) // 20  # app-only change: under 5 % of the raw image


# -- the device's patcher under CPython ------------------------------------------------------
class FakePart:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def readblocks(self, n: int, buf, off: int = 0) -> None:
        start = n * 4096 + off
        buf[:] = self.data[start : start + len(buf)]

    def info(self):
        return (0, 0x10, 0, 0x180000, "ota_0", False)


def fw_patch():
    firmware.package()
    return importlib.import_module(firmware.PACKAGE + ".slot.patch")


@pytest.mark.host
@pytest.mark.parametrize("seed", range(4))
def test_device_patcher_streams_any_split(seed):
    patch = fw_patch()
    rng = random.Random(100 + seed)
    base = bytes(rng.choice(b"0123456789") for _ in range(30000))
    new = mutate(base, rng)
    records = delta.make_records(base, new)
    out = bytearray(len(new))
    p = patch.Patcher(
        FakePart(base), len(base), len(new), lambda o, mv: out.__setitem__(slice(o, o + len(mv)), mv), bytearray(4096)
    )
    pos = 0
    while pos < len(records):
        n = rng.randrange(1, 5000)
        p.feed(pos, memoryview(records[pos : pos + n]))
        pos += n
    assert p.finished() and bytes(out) == new


@pytest.mark.host
def test_device_patcher_refuses_corrupt_records():
    patch = fw_patch()
    errors = firmware.errors()
    base = bytes(range(256)) * 40

    def rec(op: int, length: int) -> bytes:
        out = bytearray()
        delta._varint(length << 2 | op, out)
        return bytes(out)

    for records, size in (
        (rec(delta.COPY, 20000), 50000),  # COPY beyond the base
        (rec(delta.SEEK, 9), 50000),  # SEEK to -5
        (rec(delta.INSERT, 8) + b"x" * 8, 4),  # INSERT beyond image_size
        (b"\xff" * 5, 50000),
    ):  # a varint longer than 4 bytes
        p = patch.Patcher(FakePart(base), len(base), size, lambda o, mv: None, bytearray(4096))
        with pytest.raises(errors.OtaError) as exc:
            p.feed(0, memoryview(records))
        assert exc.value.code == errors.PATCH
    with pytest.raises(errors.OtaError) as exc:
        patch.check_base(FakePart(base), len(base), hashlib.sha256(base[:-1]).digest(), bytearray(4096))
    assert exc.value.code == errors.BASE_MISMATCH


@pytest.mark.host
def test_old_and_new_devices_refuse_before_any_erase():
    # record 0x0F is critical: firmware of revision 2 (0x0E the last type it knows) refuses it
    manifest = firmware.manifest()
    errors = firmware.errors()
    pkg = parse_package(delta_package(fw_image("1.0.0"), fw_image("2.0.0")))
    assert manifest.parse_manifest(pkg.manifest_bytes).encoding == 2
    last = manifest._T_LAST
    try:
        manifest._T_LAST = 0x0E
        with pytest.raises(errors.OtaError) as exc:
            manifest.parse_manifest(pkg.manifest_bytes)
        assert exc.value.code == errors.UNSUPPORTED_FIELD
    finally:
        manifest._T_LAST = last


# -- virtual boards ------------------------------------------------------------------------
@pytest.mark.fw
def test_app_only_change_by_delta_commits_after_the_self_test(tmp_path):
    board = make_board(tmp_path, "delta", delta_package(fw_image("1.0.0"), fw_image("2.0.0")))
    run = run_until_done(board, heapsize="64k")
    st = status(run)
    assert st["version"] == "2.0.0" and st["seq"] == 2 and st["result"] == 1, run.transcript()
    assert "MemoryError" not in run.transcript()
    assert board.status().active == 1 and run.flash.faults == []


@pytest.mark.fw
def test_delta_for_another_base_is_refused_before_any_flash_write(tmp_path):
    other_base = fw_image("1.0.0", pad=4096)
    board = make_board(tmp_path, "other", delta_package(other_base, fw_image("2.0.0")))
    run = run_until_done(board)
    assert "REFUSED 39" in run.transcript()  # BASE_MISMATCH
    assert run.flash.ops_in(0xD000, 0x310000) == 2  # only the first boot's otadata write (otadata and the app slots: files and NVS aside)
    st = status(run)
    assert st["version"] == "1.0.0" and st["code"] == 39


@pytest.mark.fw
@pytest.mark.parametrize("tear", [False, True], ids=["clean-cut", "torn-op"])
def test_power_cut_before_every_flash_operation_of_a_delta_update(tmp_path, tear, capsys):
    from test_agent_powercut import check_outcome, cuts, run_with_cut

    from host_tools.sim.device import SimDevice
    from host_tools.sim.runtime import BoardRun

    template = make_board(tmp_path / "t", "tpl", delta_package(fw_image("1.0.0"), fw_image("2.0.0")))
    counter = SimDevice(shutil.copytree(template.path, tmp_path / "t" / "count"))
    with BoardRun(counter) as run:
        wait_done(run)
    total = run.flash.ops
    assert status(run)["version"] == "2.0.0"
    outcomes = {}
    for n in cuts(total):
        board = SimDevice(shutil.copytree(template.path, tmp_path / "t" / f"cut{n}"))
        outcomes[n] = check_outcome(board, run_with_cut(board, n, tear), n)
    assert "updated" in outcomes.values()
    with capsys.disabled():
        summary = {k: list(outcomes.values()).count(k) for k in set(outcomes.values())}
        print(f"\n[delta power-cut sweep, {'torn' if tear else 'clean'}] {total} flash operations, {len(outcomes)} cuts; outcomes {summary}")


@pytest.mark.host
def test_cli_sign_inspect_verify_with_a_base(tmp_path, capsys):
    from host_tools.cli import main

    (tmp_path / "v1.bin").write_bytes(fw_image("1.0.0"))
    (tmp_path / "v2.bin").write_bytes(fw_image("2.0.0"))
    assert main(["keygen", str(tmp_path / "k.pem")]) == 0
    sign = ["sign", str(tmp_path / "v2.bin"), "--key", str(tmp_path / "k.pem"), "--sequence", "2", "--hw-rev", "A"]
    assert main([*sign, "--encoding", "zlib", "-o", str(tmp_path / "full.fota")]) == 0
    assert main([*sign, "--sequence", "3", "--base", str(tmp_path / "v1.bin"), "-o", str(tmp_path / "d.fota")]) == 0
    m = parse_package((tmp_path / "d.fota").read_bytes()).manifest
    assert m.encoding_name == "delta" and m.base_sha256 == hashlib.sha256(fw_image("1.0.0")).digest()
    assert main(["inspect", str(tmp_path / "d.fota")]) == 0
    assert "delta base" in capsys.readouterr().out
    verify = ["verify", str(tmp_path / "d.fota"), "--pubkey", str(tmp_path / "k.pub")]
    assert main([*verify, "--base", str(tmp_path / "v1.bin")]) == 0
    assert main([*verify, "--base", str(tmp_path / "full.fota")]) != 0  # v2 is not this delta's base
    assert main([*sign, "--sequence", "4", "--encoding", "delta", "-o", str(tmp_path / "x.fota")]) != 0  # no --base
