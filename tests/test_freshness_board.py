"""Issue 14 end to end: `fota serve` (embedded broker) and a virtual board running the agent over MQTT.

An image that rolled back on a board is not offered to it again unless forced (then the board refuses
it itself, ROLLED_BACK_BEFORE); a key list pushed on its own revokes a key for packages that carry no list.
"""

from __future__ import annotations

import pytest

from host_tools.image.build import BuildSpec, build_image
from host_tools.image.keylist import KeyList, ListedKey
from host_tools.image.keys import FileSigner
from host_tools.sim.runtime import BoardRun
from mqttkit import device_id, mqtt_board, start_server, wait_final, wait_until
from simkit import APP_TEMPLATE, fw_image, fw_package, session_signer

pytestmark = pytest.mark.fw


@pytest.fixture
def server(tmp_path):
    srv = start_server(tmp_path / "server", None)
    yield srv
    srv.stop()


def board_on(server, tmp_path, name, **kw):
    return mqtt_board(tmp_path, name, host=server.broker.host, port=server.broker.port, ids=server.identities, **kw)


def test_rolled_back_image_is_not_offered_again_unless_forced(tmp_path, server):
    board = board_on(server, tmp_path, "rb")
    bad = fw_package(fw_image("2.0.0", "fail"), version="2.0.0", sequence=2)
    with BoardRun(board):
        dev = wait_until(lambda: server.registry.device(device_id(board)), 30, "first state")["id"]
        first = wait_final(server, server.deploy(bad, [dev])[0])
        assert first.status == "ROLLED_BACK" and first.code == 22
        assert server.deploy(bad, [dev]) == []  # remembered: not offered again
        assert "rolled back" in server.registry.rolled_back_reason(dev, server.registry.offer(first.id).package)
        forced = wait_final(server, server.deploy(bad, [dev], force=True)[0])
        assert forced.status == "REFUSED" and forced.code == 32  # the board refuses it itself: ROLLED_BACK_BEFORE
        wait_until(lambda: server.registry.device(dev)["version"] == "1.0.0", 30, "v1 reported")


def test_pushed_key_list_revokes_a_key_for_packages_without_a_list(tmp_path, server):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    root, new = (FileSigner(Ed25519PrivateKey.generate()) for _ in range(2))
    old = session_signer()  # the key the firmware trusts flat (KEYS), revoked by the list
    app = (("app.py", APP_TEMPLATE.format(version="1.0.0", behaviour="ok")),)
    image = build_image(BuildSpec(board="sim", version="1.0.0", extra_modules=app, trusted_keys=(old.public_key,),
                                  root_keys=(root.public_key,)))
    kl = KeyList(1, root.public_key.key_id, [ListedKey(new.public_key)], [old.public_key.key_id])
    kl.signature = root.sign(kl.body())
    forged = KeyList(2, root.public_key.key_id, [ListedKey(old.public_key)], [])
    forged.signature = new.sign(forged.body())  # not the root's signature
    board = board_on(server, tmp_path, "kl", image=image)
    with BoardRun(board):
        dev = wait_until(lambda: server.registry.device(device_id(board)), 30, "first state")["id"]
        assert server.push_key_list(forged.to_bytes(), [dev]) == 2
        wait_until(lambda: [e for e in server.registry.events(dev) if e["event"] == "keylist"], 60, "forged list refused")
        assert server.push_key_list(kl.to_bytes(), [dev]) == 1
        kept = wait_until(lambda: [e["body"] for e in server.registry.events(dev)
                                   if e["event"] == "keylist" and e["body"].get("code") == 0], 60, "key list kept")
        assert kept[0]["version"] == 1
        refused = [e["body"] for e in server.registry.events(dev) if e["event"] == "keylist" and e["body"].get("code")]
        assert refused and refused[0]["code"] == 33  # KEY_LIST: not signed by the root
        assert server.registry.device(dev)["last_sent_what"] == "keylist 1"
        offer = wait_final(server, server.deploy(fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2, signer=old), [dev])[0])
        assert offer.status == "REFUSED" and offer.code == 35  # KEY_REVOKED, although the package carries no list
