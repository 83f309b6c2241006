"""Host side of signed packages: keys, build, sign, inspect, verify (CPython)."""

from __future__ import annotations

import hashlib
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from host_tools.cli import main
from host_tools.esp import boards
from host_tools.esp.app_image import ImageError, Segment, build_app_image
from host_tools.image.build import BuildSpec, build_image, check_app_image, stamp_secure_version
from host_tools.image.keys import FileSigner, KeyError_, PublicKey, generate_key
from host_tools.image.package import (
    MANIFEST_MAX,
    Manifest,
    PackageError,
    make_package,
    parse_package,
    sign_manifest,
    verify_package,
)
from simkit import app_image

pytestmark = pytest.mark.host


def manifest(**kw) -> Manifest:
    base = dict(sequence=5, version="1.0.0", board="sim", chip_id=0, hw_revs=("A",), image_size=0, image_sha256=b"")
    base.update(kw)
    return Manifest(**base)


def test_keygen_writes_0600_pem_and_public_key(tmp_path):
    signer = generate_key(tmp_path / "k.pem")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    pub = PublicKey.load(tmp_path / "k.pub")
    assert pub == signer.public_key and len(pub.key_id) == 8
    with pytest.raises(KeyError_, match="exists"):
        generate_key(tmp_path / "k.pem")


def test_passphrase_protected_key(tmp_path):
    generate_key(tmp_path / "k.pem", b"s3cret")
    with pytest.raises(KeyError_, match="passphrase"):
        FileSigner.load(tmp_path / "k.pem")
    assert FileSigner.load(tmp_path / "k.pem", b"s3cret").sign(b"x")


class KmsSigner:
    """A stand-in for an HSM/KMS: anything with public_key and sign() is a Signer."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.calls = 0

    @property
    def public_key(self) -> PublicKey:
        return FileSigner(self._key).public_key

    def sign(self, message: bytes) -> bytes:
        self.calls += 1
        return self._key.sign(message)


@pytest.mark.parametrize("encoding", ["raw", "zlib"])
def test_package_roundtrip_and_verify(encoding):
    signer = KmsSigner()
    image = app_image("2.0.0")
    pkg = make_package(image, manifest(), signer, encoding=encoding)
    assert signer.calls == 1
    back = parse_package(pkg.to_bytes())
    stamped = stamp_secure_version(image, 5)  # the manifest's sequence, in esp_app_desc_t.secure_version
    assert back.manifest == pkg.manifest and back.manifest.image_sha256 == hashlib.sha256(stamped).digest()
    report = verify_package(back, [signer.public_key])
    assert report.ok, report.problems
    if encoding == "zlib":
        assert back.manifest.encoded_size < len(image) and back.manifest.zlib_wbits == 10


def test_zlib_resume_points_are_signed_and_verify_checks_each():
    from dataclasses import replace

    from host_tools.image.package import sign_manifest

    signer = KmsSigner()
    image = app_image("2.0.0") + bytes(range(256)) * 600  # > 64 KiB of image: at least one resume point
    pkg = make_package(image, manifest(), signer, encoding="zlib")
    m = pkg.manifest
    assert m.resume_stride == 65536 and len(m.resume_points) == (m.image_size - 1) // 65536
    assert "resume points" in " ".join(verify_package(pkg, [signer.public_key]).notes)
    wrong = sign_manifest(replace(m, resume_points=tuple(p + 1 for p in m.resume_points)), pkg.payload, signer)
    report = verify_package(parse_package(wrong.to_bytes()), [signer.public_key])
    assert any("resume point 1" in p for p in report.problems), report.problems


@pytest.mark.parametrize("where", ["header", "manifest", "signature", "payload"])
def test_any_flipped_bit_fails_verification(where):
    signer = KmsSigner()
    pkg = make_package(app_image("2.0.0"), manifest(), signer)
    data = bytearray(pkg.to_bytes())
    offset = {"header": 14, "manifest": 40, "signature": 32 + len(pkg.manifest_bytes) + 3, "payload": len(data) - 40}[where]
    data[offset] ^= 0x01
    try:
        report = verify_package(parse_package(bytes(data)), [signer.public_key])
    except PackageError:
        return  # the header no longer parses: refused as well
    assert not report.ok


def test_unknown_key_and_oversized_manifest_are_refused():
    pkg = make_package(app_image("2.0.0"), manifest(), KmsSigner())
    assert any("unknown key" in p for p in verify_package(pkg, [KmsSigner().public_key]).problems)
    with pytest.raises(PackageError, match="cap"):
        make_package(app_image("2.0.0"), manifest(notes="x" * MANIFEST_MAX), KmsSigner())


def test_firmware_bin_is_refused_with_a_pointer_to_the_app_image():
    board = boards.load("esp32_generic")
    app = app_image("1.0.0")
    bootloader = build_app_image([Segment(0x3FFF0000, b"\x00" * 64)])
    merged = bytearray(b"\xff" * 0x10000 + app)  # as flashed at 0x1000: bootloader, table at 0x8000
    merged[: len(bootloader)] = bootloader
    merged[0x7000 : 0x7000 + 0xC00] = board.table.to_binary()
    with pytest.raises(ImageError) as err:
        check_app_image(bytes(merged), board)
    assert "firmware.bin" in err.value.message and "micropython.bin" in err.value.hint
    with pytest.raises(ImageError, match="esp_app_desc_t"):
        check_app_image(bootloader, board)


def test_wrong_chip_and_oversized_images_are_refused():
    board = boards.load("esp32_generic")
    s3 = build_app_image([Segment(0x3F400020, app_image("1.0.0")[0x20:0x120])], chip_id=9)
    with pytest.raises(ImageError, match="chip ID"):
        check_app_image(s3, board)
    big = build_app_image([Segment(0x3F400020, app_image("1.0.0")[0x20:0x120] + b"\x00" * (board.slot_size))])
    with pytest.raises(ImageError, match="(exceeds|beyond|holds)"):
        check_app_image(big, board)


def test_cli_keygen_build_sign_inspect_verify(tmp_path, capsys):
    k = tmp_path / "release.pem"
    assert main(["keygen", str(k)]) == 0
    assert main(["keys", "export", str(tmp_path / "release.pub"), "-o", str(tmp_path / "trusted_keys.py")]) == 0
    assert "KEYS = (" in (tmp_path / "trusted_keys.py").read_text()
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text("VERSION = '3.1.0'\n")
    image = tmp_path / "app.bin"
    assert main(["build", "--board", "sim", "--app", str(app), "--version", "3.1.0", "--trust", str(tmp_path / "release.pub"), "-o", str(image)]) == 0
    out = subprocess.run([str(Path(sys.executable).with_name("esptool")), "image-info", str(image)], capture_output=True, text=True).stdout
    assert "Checksum: " in out and "(valid)" in out.split("Checksum: ")[1].splitlines()[0]
    assert "(valid)" in out.split("Validation hash: ")[1].splitlines()[0]
    pkg = tmp_path / "app.fota"
    assert main(["sign", str(image), "--key", str(k), "--version", "3.1.0", "--sequence", "9", "--hw-rev", "A", "--encoding", "zlib", "-o", str(pkg)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(pkg)]) == 0
    shown = capsys.readouterr().out
    assert "sequence      9" in shown and "zlib" in shown and "checksum and SHA-256 valid" in shown
    assert main(["verify", str(pkg), "--pubkey", str(tmp_path / "release.pub")]) == 0
    main(["keygen", str(tmp_path / "other.pem")])
    assert main(["verify", str(pkg), "--pubkey", str(tmp_path / "other.pub")]) == 3
    assert "unknown key id" in capsys.readouterr().err


def test_build_for_real_board_needs_an_image():
    with pytest.raises(ImageError, match="micropython.bin"):
        build_image(BuildSpec(board="esp32_generic"))


def test_sign_manifest_header_binds_key_id():
    signer = KmsSigner()
    pkg = sign_manifest(manifest(image_size=4, image_sha256=b"\x00" * 32), b"abcd", signer)
    assert pkg.header[12:20] == signer.public_key.key_id
    assert signer.public_key.verify(pkg.signature, pkg.header + pkg.manifest_bytes)
