"""Issue 14 on the virtual board: the floor from the image, rolled-back images, key lists, expiry."""

from __future__ import annotations

import time

import pytest

from agentkit import MAIN, make_board, run_until_done, status
from host_tools.image.build import BuildSpec, build_image
from host_tools.image.keylist import KeyList, ListedKey
from host_tools.image.keys import FileSigner
from simkit import APP_TEMPLATE, fw_image, fw_package, session_signer

pytestmark = pytest.mark.fw

STATE_FILES = ("fota_state.json", "fota_state.json.a", "fota_state.json.b", "fota_state.json.tmp")


def refused(run) -> list[int]:
    return [int(line.split()[1]) for line in run.transcript().splitlines() if line.startswith("REFUSED")]


def again(board, package: bytes):
    board.write_file("update.fota", package)
    return run_until_done(board)


def test_floor_from_the_image_after_every_state_file_is_lost(tmp_path):
    board = make_board(tmp_path, "floor", fw_package(fw_image("2.0.0"), version="2.0.0", sequence=5))
    run = run_until_done(board)
    assert status(run)["version"] == "2.0.0" and status(run)["seq"] == 5
    with board.fs() as fs:
        for name in STATE_FILES:
            if fs.exists(name):
                fs.remove(name)
    run = again(board, fw_package(fw_image("2.1.0"), version="2.1.0", sequence=5))
    assert refused(run) == [11] and status(run)["seq"] == 5  # ROLLBACK: floor 5 from secure_version


def test_rolled_back_image_is_refused_when_offered_again(tmp_path):
    bad = fw_package(fw_image("2.0.0", "fail"), version="2.0.0", sequence=2)
    board = make_board(tmp_path, "rb", bad)
    run = run_until_done(board)
    assert status(run)["version"] == "1.0.0" and status(run)["code"] == 22  # SELF_TEST_FAILED, rolled back
    run = again(board, bad)  # the same package, whatever the offer id
    assert refused(run) == [32]  # ROLLED_BACK_BEFORE
    run = again(board, fw_package(fw_image("2.0.1"), version="2.0.1", sequence=3))
    assert status(run)["version"] == "2.0.1"  # a fixed release still goes through


def test_revoked_key_refused_once_the_new_key_list_arrived(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    root, a, b = (FileSigner(Ed25519PrivateKey.generate()) for _ in range(3))

    def key_list(version, keys, revoked=()):
        kl = KeyList(version, root.public_key.key_id, [ListedKey(k.public_key) for k in keys],
                     [k.public_key.key_id for k in revoked])
        kl.signature = root.sign(kl.body())
        return kl.to_bytes()

    def image(version):  # firmware that trusts the root only (and the session key, for the v1 flash)
        app = (("app.py", APP_TEMPLATE.format(version=version, behaviour="ok")),)
        return build_image(BuildSpec(board="sim", version=version, extra_modules=app,
                                     trusted_keys=(session_signer().public_key,), root_keys=(root.public_key,)))

    v1, v2 = key_list(1, [a, b]), key_list(2, [b], revoked=[a])
    board = make_board(tmp_path, "kl", fw_package(image("2.0.0"), version="2.0.0", sequence=2, signer=b, key_list=v2),
                       v1=image("1.0.0"))
    board.write_file("main.py", MAIN.replace("trusted_keys.KEYS,", 'trusted_keys.KEYS, roots=trusted_keys.ROOTS,'))
    assert status(run_until_done(board))["version"] == "2.0.0"  # list v2 seen
    run = again(board, fw_package(image("3.0.0"), version="3.0.0", sequence=3, signer=a, key_list=v1))
    assert refused(run) == [34]  # KEY_LIST_OLD
    run = again(board, fw_package(image("3.0.0"), version="3.0.0", sequence=3, signer=a, key_list=v2))
    assert refused(run) == [35]  # KEY_REVOKED
    run = again(board, fw_package(image("3.0.0"), version="3.0.0", sequence=3, signer=session_signer()))
    assert refused(run) == [34]  # no list after one was seen: the baked-in flat keys no longer count


def test_expires_enforced_with_no_clock_from_the_signed_time_floor(tmp_path):
    """A chip before NTP (or with its clock set back): `now` is the newest signed `created` seen."""
    now = int(time.time())
    board = make_board(tmp_path, "exp", fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2, created=now))
    board.write_file("main.py", MAIN.replace("clock=clock,", "clock=lambda: None,"))
    assert status(run_until_done(board))["version"] == "2.0.0"
    stale = fw_package(fw_image("2.1.0"), version="2.1.0", sequence=3, created=now - 7 * 86400, expires=now - 86400)
    run = again(board, stale)
    assert refused(run) == [12]  # EXPIRED, with no clock at all
