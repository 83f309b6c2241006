"""Issue 14 under CPython: a floor that cannot go down, key lists and weak keys, the signing guards.

The firmware's own modules (store, state, manifest, keylist) run here against stand-ins: a
partition holding an app descriptor, and a file layer that loses power before any operation
(torn writes included). The board tests (tests/test_antirollback_board.py) run them under
micropython on the virtual board.
"""

from __future__ import annotations

import importlib
import json
import struct
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import FIRMWARE
from host_tools.cli import main
from host_tools.image.keylist import KeyListState, parse_key_list
from host_tools.image.keys import FileSigner, KeyError_, PublicKey, generate_key, trusted_keys_module
from host_tools.image.package import Manifest, make_package, parse_package, verify_package
from simkit import app_image

pytestmark = pytest.mark.host


def _fw(name: str):
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    return importlib.import_module(name)


store_mod = _fw("fota.boot.store")
state_mod = _fw("fota.boot.state")
manifest_mod = _fw("fota.check.manifest")
ed_mod = _fw("fota.check.ed25519")
errors = _fw("fota.errors")

# The eight small-order points of edwards25519, canonically encoded (identity first).
SMALL_ORDER = [bytes.fromhex(h) for h in (
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
)]


# -- the floor: anchors + the image's secure_version -----------------------------------------

class DescPartition:
    """esp32.Partition(RUNNING) stand-in: an app image whose esp_app_desc_t has secure_version."""

    RUNNING = 1

    def __init__(self, secure_version: int) -> None:
        self.data = bytes(0x20) + struct.pack("<II", 0xABCD5432, secure_version) + bytes(64)

    def readblocks(self, block, buf, off=0):
        buf[:] = self.data[off : off + len(buf)]


def boot_state(tmp_path, monkeypatch, secure_version: int):
    fake = type("esp32", (), {})()
    fake.Partition = lambda _which: DescPartition(secure_version)
    fake.Partition.RUNNING = 1
    monkeypatch.setattr(state_mod, "esp32", fake)
    return state_mod.BootState(str(tmp_path / "fota_state.json"), str(tmp_path / "j.json"), str(tmp_path / "c.json"))


STATE_FILES = ["fota_state.json", "fota_state.json.a", "fota_state.json.b"]


@pytest.mark.parametrize("damage", ["delete", "corrupt", "truncate"])
@pytest.mark.parametrize("which", STATE_FILES + ["all"])
def test_floor_survives_losing_any_state_file(tmp_path, monkeypatch, damage, which):
    bs = boot_state(tmp_path, monkeypatch, secure_version=3)  # running image: package seq 3
    for seq in (4, 5):  # two later commits (as confirm._commit does)
        bs.store.raise_floor(seq)
        bs.store.save()
    bs.store.note_rolled_back("ab" * 32)
    assert bs.seq_floor() == 5
    for name in STATE_FILES if which == "all" else [which]:
        path = tmp_path / name
        if damage == "delete":
            path.unlink()
        elif damage == "corrupt":
            raw = bytearray(path.read_bytes())
            # The anchors are sealed: their CRC must catch a flip anywhere, so flip the middle byte.
            # The JSON file is not: a flip inside a key name leaves valid JSON with the floor intact
            # (the middle byte moved there when the state gained 'image'), so flip the floor's digit.
            at = raw.index(b'"seq_floor": ') + 13 if name == "fota_state.json" else len(raw) // 2
            raw[at] ^= 0x5A
            path.write_bytes(bytes(raw))
        else:
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    again = boot_state(tmp_path, monkeypatch, secure_version=3)
    floor = again.seq_floor()
    if which == "all":
        assert floor == 3  # every file gone: the running image's own secure_version
    else:
        assert floor == 5 and again.rolled_back("ab" * 32)
    m = manifest_mod.Manifest()
    for seq in range(0, floor + 1):  # what check_device does with the floor
        m.sequence = seq
        assert m.sequence <= floor


def test_FAT_rename_cut_reads_the_complete_tmp_file(tmp_path):
    path = str(tmp_path / "s.json")
    store_mod.write_atomic(path, '{"seq_floor": 4}')
    store_mod.write_atomic(path + ".tmp", '{"seq_floor": 5}')
    (tmp_path / "s.json").unlink()  # FAT: old file removed, power lost before the rename
    assert store_mod.read_json(path) == {"seq_floor": 5}


class PowerCut(Exception):
    pass


class TornFS:
    """A file layer that counts operations and loses power before operation `cut`.

    A write that is cut may be torn: part of the new text lands (after open("w") truncated
    the file), as on flash without atomic writes.
    """

    def __init__(self, files: dict[str, str] | None = None, cut: int = 0, tear: bool = False) -> None:
        self.files = dict(files or {})
        self.cut, self.tear, self.ops = cut, tear, 0

    def _op(self, partial=None):
        self.ops += 1
        if self.ops == self.cut:
            if self.tear and partial:
                partial()
            raise PowerCut()

    def open(self, path, mode="r"):
        fs = self

        class F:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def read(self):
                if path not in fs.files:
                    raise OSError(2)
                return fs.files[path]

            def write(self, text):
                def torn():
                    fs.files[path] = text[: len(text) // 2]
                fs._op(torn)
                fs.files[path] = text

        if "w" in mode:
            self._op(lambda: self.files.__setitem__(path, ""))
            self.files[path] = ""
        elif path not in self.files:
            raise OSError(2)
        return F()

    def rename(self, a, b):
        self._op()
        self.files[b] = self.files.pop(a)

    def remove(self, p):
        self._op()
        if p not in self.files:
            raise OSError(2)
        del self.files[p]


def commit_run(fs: TornFS, monkeypatch, floors) -> list[int]:
    """Commit each floor in turn as confirm._commit does; the floors that completed."""
    monkeypatch.setattr(store_mod, "open", fs.open, raising=False)
    monkeypatch.setattr(store_mod.os, "rename", fs.rename)
    monkeypatch.setattr(store_mod.os, "remove", fs.remove)
    done = []
    try:
        for seq in floors:
            st = store_mod.Store("st.json")
            st.raise_floor(seq)
            st.data["version"] = str(seq)
            st.save()
            st.note_rolled_back(f"{seq:064x}")
            done.append(seq)
    except PowerCut:
        pass
    return done


@pytest.mark.parametrize("tear", [False, True], ids=["clean", "torn"])
def test_power_cut_sweep_over_the_state_writes(monkeypatch, tear):
    """Cut before every file operation of five commits: the floor read after it never goes down."""
    floors = [1, 2, 3, 7, 9]
    counter = TornFS()
    assert commit_run(counter, monkeypatch, floors) == floors
    total = counter.ops
    for n in range(1, total + 1):
        fs = TornFS(cut=n, tear=tear)
        done = commit_run(fs, monkeypatch, floors)
        monkeypatch.undo()
        assert len(done) < len(floors), n
        seen_max = 0
        # read back after the cut (power on): a plain Store over what survived
        monkeypatch.setattr(store_mod, "open", TornFS(fs.files).open, raising=False)
        st = store_mod.Store("st.json")
        floor = st.floor()
        monkeypatch.undo()
        if done:
            seen_max = done[-1]
        assert floor >= seen_max, f"cut {n}: floor {floor} below the committed {seen_max}"
        assert floor <= floors[len(done)], n
        if len(done) >= 2:
            assert st.rolled_back(f"{done[-2]:064x}"), n


# -- weak keys ---------------------------------------------------------------------------------

def test_the_eight_small_order_points_are_weak_keys_and_real_keys_are_not():
    for raw in SMALL_ORDER:
        assert ed_mod.small_order(raw) and ed_mod.weak_key(raw)
    good = FileSigner(Ed25519PrivateKey.generate()).public_key.raw
    assert not ed_mod.weak_key(good) and not ed_mod.small_order(good)
    for raw in SMALL_ORDER:  # each is of small order: [8]P is the identity, computed
        pt = ed_mod._decode(raw)
        for _ in range(3):
            pt = ed_mod._add(pt, ed_mod._cached(pt))
        assert pt[0] % ed_mod._P == 0 and (pt[1] - pt[2]) % ed_mod._P == 0


def manifest_body(seq: int = 7, **kw) -> Manifest:
    return Manifest(sequence=seq, version="2.0.0", board="sim", chip_id=0, hw_revs=("A",), image_size=0,
                    image_sha256=b"", **kw)


class RawSigner:
    """A Signer whose public key is whatever bytes we say (to plant a small-order key)."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._real = Ed25519PrivateKey.generate()

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(self._raw)

    def sign(self, message: bytes) -> bytes:
        return b"\x00" * 64  # S = 0, R = identity: "valid" for a small-order A under cofactorless checks


def device_check(pkg: bytes, keys=(), roots=(), kl_version: int = 0):
    mlen = struct.unpack_from("<I", pkg, 8)[0]
    dev = manifest_mod.Device("sim", 0, "A", 0, "1.0.0", None, kl_version)
    try:
        manifest_mod.check(pkg[: 32 + mlen], pkg[32 + mlen : 96 + mlen], keys, dev, 1 << 20, roots)
    except errors.OtaError as e:
        return e.code, dev.kl_seen
    return 0, dev.kl_seen


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=[f"point{i}" for i in range(8)])
def test_device_refuses_a_small_order_trusted_key(raw):
    pkg = make_package(app_image("2.0.0"), manifest_body(), RawSigner(raw)).to_bytes()
    kid = PublicKey(raw).key_id
    assert device_check(pkg, keys=((kid, raw),))[0] == errors.WEAK_KEY
    with pytest.raises(KeyError_, match="small order"):
        trusted_keys_module([PublicKey(raw)])


def forge_key_list(root: FileSigner, version: int, keys: list[bytes], revoked=()) -> bytes:
    """A root-signed key list with whatever key bytes (the host tools refuse weak ones)."""
    from host_tools.image.keylist import KeyList, ListedKey

    kl = KeyList(version, root.public_key.key_id, [ListedKey(PublicKey(k)) for k in keys], list(revoked))
    kl.signature = root.sign(kl.body())
    return kl.to_bytes()


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=[f"point{i}" for i in range(8)])
def test_device_refuses_a_key_list_holding_a_small_order_key(raw):
    root = FileSigner(Ed25519PrivateKey.generate())
    release = FileSigner(Ed25519PrivateKey.generate())
    kl = forge_key_list(root, 1, [release.public_key.raw, raw])
    pkg = make_package(app_image("2.0.0"), manifest_body(key_list=kl), release).to_bytes()
    roots = ((root.public_key.key_id, root.public_key.raw),)
    assert device_check(pkg, roots=roots)[0] == errors.WEAK_KEY
    weak_root = ((PublicKey(raw).key_id, raw),)  # a small-order root baked in: refused too
    kl2 = forge_key_list(RawSigner(raw), 1, [release.public_key.raw])
    pkg2 = make_package(app_image("2.0.0"), manifest_body(key_list=kl2), release).to_bytes()
    assert device_check(pkg2, roots=weak_root)[0] == errors.WEAK_KEY


# -- the key hierarchy on the host and in the device's checks ----------------------------------

def hierarchy(tmp_path: Path):
    assert main(["keys", "root-init", str(tmp_path / "root.pem")]) == 0
    for name in ("a", "b"):
        assert main(["keygen", str(tmp_path / f"{name}.pem")]) == 0
        assert main(["keys", "add", str(tmp_path / f"{name}.pub"), "--list", str(tmp_path / "keylist.json")]) == 0
    assert main(["keys", "list-sign", "--root", str(tmp_path / "root.pem"), "--list", str(tmp_path / "keylist.json"),
                 "-o", str(tmp_path / "v1.bin")]) == 0
    assert main(["keys", "revoke", str(tmp_path / "a.pub"), "--list", str(tmp_path / "keylist.json")]) == 0
    assert main(["keys", "list-sign", "--root", str(tmp_path / "root.pem"), "--list", str(tmp_path / "keylist.json"),
                 "-o", str(tmp_path / "v2.bin")]) == 0
    root = PublicKey.load(tmp_path / "root.pub")
    return root, {n: FileSigner.load(tmp_path / f"{n}.pem") for n in ("a", "b")}


def refused(args: list[str], capsys, match: str) -> None:
    """`fota ...` exits non-zero with `match` in its error message."""
    capsys.readouterr()
    assert main(args) != 0
    assert match in capsys.readouterr().err


def test_key_lists_revocation_and_old_lists_on_host_and_device(tmp_path, capsys):
    root, keys = hierarchy(tmp_path)
    v1, v2 = (tmp_path / "v1.bin").read_bytes(), (tmp_path / "v2.bin").read_bytes()
    assert parse_key_list(v2).version == 2 and keys["a"].public_key.key_id in parse_key_list(v2).revoked
    image = tmp_path / "app.bin"
    image.write_bytes(app_image("2.0.0"))
    sign = ["sign", str(image), "--version", "2.0.0", "--hw-rev", "A", "--sequence", "3"]
    # the host refuses to sign with a revoked key
    refused([*sign, "--key", str(tmp_path / "a.pem"), "--key-list", str(tmp_path / "v2.bin"), "-o", str(tmp_path / "x.fota")],
            capsys, "revoked")
    assert main([*sign, "--key", str(tmp_path / "b.pem"), "--key-list", str(tmp_path / "v2.bin"), "-o", str(tmp_path / "b.fota")]) == 0
    good = (tmp_path / "b.fota").read_bytes()
    assert verify_package(parse_package(good), [root]).ok
    roots = ((root.key_id, root.raw),)
    # the device: the v2 list verifies, is reported for storing, and b's package passes
    assert device_check(good, roots=roots, kl_version=1) == (0, 2)
    # a's package under the old v1 list: refused once v2 was seen; accepted before
    old = make_package(app_image("2.0.0"), manifest_body(key_list=v1), keys["a"]).to_bytes()
    assert device_check(old, roots=roots, kl_version=2)[0] == errors.KEY_LIST_OLD
    assert device_check(old, roots=roots, kl_version=0) == (0, 1)
    # a's package carrying the v2 list (made with the library, past the host guard): revoked
    revoked = make_package(app_image("2.0.0"), manifest_body(key_list=v2), keys["a"]).to_bytes()
    assert device_check(revoked, roots=roots, kl_version=2)[0] == errors.KEY_REVOKED
    # no list at all once a list was seen: refused; a list from an unknown root: refused
    plain = make_package(app_image("2.0.0"), manifest_body(), keys["b"]).to_bytes()
    kb = ((keys["b"].public_key.key_id, keys["b"].public_key.raw),)
    assert device_check(plain, keys=kb, kl_version=2)[0] == errors.KEY_LIST_OLD
    assert device_check(plain, keys=kb, kl_version=0)[0] == 0
    assert device_check(good, roots=((b"\x01" * 8, root.raw),))[0] == errors.KEY_LIST
    # a tampered list (one byte of the revoked id flipped) fails the root signature
    bad = bytearray(v2)
    bad[-65] ^= 1
    tampered = make_package(app_image("2.0.0"), manifest_body(key_list=bytes(bad)), keys["b"]).to_bytes()
    assert device_check(tampered, roots=roots)[0] == errors.KEY_LIST
    state = json.loads((tmp_path / "keylist.json").read_text())
    assert state["version"] == 2 and [k["id"] for k in state["keys"]] == [keys["b"].public_key.key_id.hex()]
    assert KeyListState.load(tmp_path / "keylist.json").version == 2


# -- signing guards ----------------------------------------------------------------------------

def test_sign_guards_sequence_jump_hw_rev_and_key_mode(tmp_path, capsys):
    generate_key(tmp_path / "k.pem")
    image = tmp_path / "app.bin"
    image.write_bytes(app_image("2.0.0"))
    base = ["sign", str(image), "--key", str(tmp_path / "k.pem"), "--version", "2.0.0", "-o", str(tmp_path / "p.fota")]
    refused([*base, "--sequence", "1"], capsys, "hardware revision")
    refused([*base, "--sequence", "4294967295", "--hw-rev", "*"], capsys, "above the last")
    assert main([*base, "--sequence", "5", "--hw-rev", "*"]) == 0
    assert json.loads((tmp_path / "k.pem.sequences.json").read_text()) == {"sim": 5}
    refused([*base, "--sequence", "110", "--hw-rev", "A"], capsys, "105 above")
    assert main([*base, "--sequence", "105", "--hw-rev", "A"]) == 0
    assert main([*base, "--sequence", "900", "--hw-rev", "A", "--force"]) == 0
    pkg = parse_package((tmp_path / "p.fota").read_bytes())
    from host_tools.image.build import secure_version
    from host_tools.image.package import decode_payload

    assert pkg.manifest.sequence == 900 and secure_version(decode_payload(pkg)) == 900  # stamped
    (tmp_path / "k.pem").chmod(0o644)
    assert main([*base, "--sequence", "901", "--hw-rev", "A"]) == 0
    assert "readable by other users" in capsys.readouterr().err


def test_build_stamps_and_sign_refuses_a_different_secure_version(tmp_path, capsys):
    generate_key(tmp_path / "k.pem")
    image = tmp_path / "app.bin"
    assert main(["build", "--board", "sim", "--version", "2.0.0", "--trust", str(tmp_path / "k.pub"), "--sequence", "4",
                 "-o", str(image)]) == 0
    from host_tools.image.build import secure_version

    assert secure_version(image.read_bytes()) == 4
    refused(["sign", str(image), "--key", str(tmp_path / "k.pem"), "--version", "2.0.0", "--sequence", "5",
             "--hw-rev", "A", "-o", str(tmp_path / "p.fota")], capsys, "secure_version is 4")
