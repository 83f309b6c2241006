"""A package made by `fota sign` is accepted by the device code, and a tampered one is not."""

from __future__ import annotations

import pytest

from conftest import run_micropython
from host_tools.cli import main
from host_tools.image.keys import PublicKey
from simkit import app_image

pytestmark = pytest.mark.fw

DEVICE_CHECK = """
import sys
from fota.check import manifest
from fota.errors import OtaError
import trusted_keys
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        header = f.read(manifest.HEADER_SIZE)
        try:
            mlen, _ = manifest.parse_header(header)
            signed = header + f.read(mlen)
            sig = f.read(manifest.SIGNATURE_SIZE)
            dev = manifest.Device("sim", 0, "A", seq_floor=3, version="1.0.0", now=None)
            m = manifest.check(signed, sig, trusted_keys.KEYS, dev, 0x180000)
            print("OK", m.version, m.sequence, m.encoding)
        except OtaError as e:
            print("REFUSED", e.code)
"""


def test_fota_sign_output_verifies_on_the_device(tmp_path):
    key = tmp_path / "k.pem"
    assert main(["keygen", str(key)]) == 0
    assert main(["keys", "export", str(tmp_path / "k.pub"), "-o", str(tmp_path / "trusted_keys.py")]) == 0
    image = tmp_path / "app.bin"
    image.write_bytes(app_image("2.0.0"))
    pkgs = []
    for encoding in ("raw", "zlib"):
        pkg = tmp_path / f"{encoding}.fota"
        assert main(["sign", str(image), "--key", str(key), "--version", "2.0.0", "--sequence", "4", "--hw-rev", "A", "--encoding", encoding, "-o", str(pkg)]) == 0
        pkgs.append(pkg)
    tampered = tmp_path / "tampered.fota"
    data = bytearray(pkgs[0].read_bytes())
    data[40] ^= 0x04  # inside the manifest
    tampered.write_bytes(bytes(data))
    (tmp_path / "check.py").write_text(DEVICE_CHECK)
    out = run_micropython([str(tmp_path / "check.py"), *map(str, pkgs), str(tampered)], path=[tmp_path], heapsize="64k")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split("\n")[:3] == ["OK 2.0.0 4 0", "OK 2.0.0 4 1", "REFUSED 5"]
    assert PublicKey.load(tmp_path / "k.pub").key_id == PublicKey.load(key).key_id
