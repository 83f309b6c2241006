"""The CLI without surprises (issue 16): every expected failure is one line, a hint and a documented exit code.

Each command runs as a user runs it (a subprocess with a timeout, FOTA_HOME in a temporary directory);
a traceback anywhere fails the test. The silent surprises of issue 16 each have a test here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from host_tools.cli import build_parser
from host_tools.errors import EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE, EXIT_VERIFY_FAILED
from host_tools.server.registry import Registry
from mqttkit import wait_until
from simkit import fw_image, fw_package

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]
FOTA = [sys.executable, "-m", "host_tools.cli"]


def run(home: Path, *args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"FOTA_HOME": str(home)}
    env.pop("FOTA_SERVER", None)
    env.pop("FOTA_DEBUG", None)
    return subprocess.run([*FOTA, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd or home, env=env)


def assert_clean(out: subprocess.CompletedProcess[str], code: int | None = None) -> None:
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert out.returncode != 0, text
    if code is not None:
        assert out.returncode == code, text
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, out.stderr
    assert "hint:" in out.stderr, out.stderr


def subcommands() -> list[list[str]]:
    """Every leaf command of the parser: ["sim", "create"], ["deploy"], ..."""
    out = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append(path)
        for action in subs:
            for name, child in action.choices.items():
                walk(child, [*path, name])

    walk(build_parser(), [])
    return out


PENDING: tuple[str, ...] = ()  # commands still being written in the same tree (none now)


def test_every_option_of_every_command_has_help():
    missing = []
    for path in [p for p in subcommands() if p[0] not in PENDING]:
        parser = build_parser()
        for name in path:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        missing += [f"fota {' '.join(path)} {a.option_strings or a.dest}" for a in parser._actions
                    if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not missing


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A key, an image, a valid package and one whose image is corrupt."""
    work = tmp_path_factory.mktemp("files")
    from host_tools.image.keys import generate_key

    generate_key(work / "release.pem")
    image = fw_image("2.0.0")
    (work / "v2.bin").write_bytes(image)
    (work / "v2.fota").write_bytes(fw_package(image, version="2.0.0", sequence=2))
    (work / "bad").mkdir()
    (work / "bad" / "app.py").write_text("VERSION = '1.0.0'\ndef self_test(:\n")
    return work


def test_every_command_with_bad_arguments_fails_in_one_line(tmp_path, files):
    """Unknown options, missing files, missing directories, bad numbers: no traceback anywhere."""
    f = files
    nofile = str(tmp_path / "nosuch.bin")
    cases: list[tuple[list[str], int | None]] = [([*path, "--no-such-option"], EXIT_USAGE) for path in subcommands()]
    cases += [
        (["sign", nofile, "--key", str(f / "release.pem"), "--version", "1", "--sequence", "1", "-o", str(tmp_path / "x")], EXIT_NOT_FOUND),
        (["sign", str(f / "v2.bin"), "--key", nofile, "--sequence", "1", "-o", str(tmp_path / "x")], None),
        (["sign", str(f / "v2.bin"), "--key", str(f / "release.pem"), "--sequence", "-3", "-o", str(tmp_path / "x")], EXIT_USAGE),
        (["sign", str(f / "v2.bin"), "--key", str(f / "release.pem"), "--sequence", "3", "-o", str(tmp_path / "nodir" / "x")], EXIT_USAGE),
        (["inspect", nofile], EXIT_NOT_FOUND),
        (["verify", nofile, "--pubkey", str(f / "release.pub")], EXIT_NOT_FOUND),
        (["deploy", nofile, "--device", "d1"], EXIT_UNAVAILABLE),
        (["build", "--board", "sim", "--image", nofile, "-o", str(tmp_path / "x.bin")], EXIT_NOT_FOUND),
        (["build", "--board", "esp32_generic", "--image", nofile, "-o", str(tmp_path / "x.bin")], EXIT_NOT_FOUND),
        (["build", "--board", "sim", "--no-trust", "-o", str(tmp_path / "nodir" / "x.bin")], EXIT_USAGE),
        (["build", "--board", "sim", "--no-trust", "--app", str(f / "bad"), "-o", str(tmp_path / "x.bin")], None),
        (["build", "--board", "nosuch", "-o", str(tmp_path / "x.bin")], None),
        (["keys", "export", nofile, "-o", str(tmp_path / "k.py")], None),
        (["sim", "flash", "nosuch", nofile], None),
        (["sim", "run", "nosuch"], None),
        (["sim", "repl", "nosuch"], None),
        (["devices"], None),
        (["campaign", "report", "NOSUCH", "--json"], EXIT_NOT_FOUND),
        (["campaign", "status", "NOSUCH"], EXIT_NOT_FOUND),
        (["provision", "--port", "sim:nosuch"], None),
        (["flash", nofile, "--port", "sim:nosuch"], None),
    ]
    (tmp_path / "home").mkdir()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: (c, run(tmp_path / "home", *c[0])), cases))
    for (args, code), out in results:
        try:
            assert_clean(out, code)
        except AssertionError as exc:
            raise AssertionError(f"fota {' '.join(args)} (rc {out.returncode}): {exc}") from None


def test_version_and_help():
    out = subprocess.run([*FOTA, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("fota ")


def test_inspect_exits_non_zero_on_an_invalid_package(tmp_path, files):
    raw = bytearray((files / "v2.fota").read_bytes())
    raw[-100] ^= 0xFF  # inside the image: the header and signature still parse, the image does not verify
    bad = tmp_path / "bad.fota"
    bad.write_bytes(bytes(raw))
    out = run(tmp_path, "inspect", str(bad))
    assert out.returncode == EXIT_VERIFY_FAILED, out.stdout + out.stderr
    assert "INVALID" in out.stdout and "Traceback" not in out.stderr
    good = run(tmp_path, "inspect", str(files / "v2.fota"), "--json")
    assert good.returncode == 0 and json.loads(good.stdout)["version"] == "2.0.0"


def test_sign_refuses_a_version_other_than_the_images_own(tmp_path, files):
    args = ["sign", str(files / "v2.bin"), "--key", str(files / "release.pem"), "--sequence", "2", "--hw-rev", "A",
            "-o", str(tmp_path / "p.fota")]
    out = run(tmp_path, *args, "--version", "2.0.1")
    assert_clean(out, EXIT_USAGE)
    assert "2.0.0" in out.stderr
    out = run(tmp_path, *args)  # the default: the image's own version
    assert out.returncode == 0 and "2.0.0 seq 2" in out.stdout, out.stderr


def test_build_without_trusted_keys_is_refused(tmp_path):
    out = run(tmp_path, "build", "--board", "sim", "-o", str(tmp_path / "x.bin"))
    assert_clean(out, EXIT_USAGE)
    assert "--trust" in out.stderr and not (tmp_path / "x.bin").exists()


def test_build_takes_the_version_from_app_py(tmp_path):
    assert run(tmp_path, "init", "app", "--version", "1.2.3").returncode == 0
    out = run(tmp_path, "build", "--board", "sim", "--app", "app", "--no-trust", "-o", "v.bin")
    assert out.returncode == 0 and "version 1.2.3" in out.stdout, out.stderr
    assert_clean(run(tmp_path, "init", "app"))  # never overwrites


def test_sim_run_says_when_power_was_never_cut(tmp_path):
    assert run(tmp_path, "sim", "create", "b1").returncode == 0
    out = run(tmp_path, "sim", "run", "b1", "--cut-before", "100000", "--timeout", "1")
    assert_clean(out)
    assert "power was never cut" in out.stderr


# -- against a running fota serve ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_serve(home: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    log = open(home / f"serve-{time.monotonic_ns()}.log", "w")
    env = os.environ | {"FOTA_HOME": str(home)}
    proc = subprocess.Popen([*FOTA, "serve", "--no-coap", "--api-port", "0", *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    return proc, Path(log.name)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A fota serve on a home of its own (broker port remembered in the data dir) and one known device."""
    home = tmp_path_factory.mktemp("served")
    port = _free_port()
    proc, log = _start_serve(home, "--port", str(port))
    data = home / "server"
    try:
        wait_until(lambda: (data / "serve.json").exists(), 60, "serve.json")
        Registry(data / "registry.sqlite").record_state("d1", {"board": "sim", "hw_rev": "A", "version": "1.0.0", "seq": 1,
                                                              "errors": [[10, "offer refused", 1]]})
        yield home, proc, port
    finally:
        _stop(proc)


def test_deploy_to_an_unknown_device_or_group_is_refused(served, files):
    home = served[0]
    before = Registry(home / "server" / "registry.sqlite").devices()
    out = run(home, "deploy", str(files / "v2.fota"), "--device", "nosuch")
    assert_clean(out, EXIT_NOT_FOUND)
    assert "nosuch" in out.stderr and "--broker" not in out.stderr
    assert_clean(run(home, "deploy", str(files / "v2.fota"), "--group", "feild"), EXIT_NOT_FOUND)
    assert Registry(home / "server" / "registry.sqlite").devices() == before


def test_assign_to_a_new_group_needs_create_group(served):
    home = served[0]
    out = run(home, "devices", "--assign", "d1", "canary")
    assert_clean(out, EXIT_NOT_FOUND)
    assert "--create-group" in out.stderr
    assert run(home, "devices", "--assign", "d1", "canary", "--create-group").returncode == 0
    assert run(home, "devices", "--assign", "d1", "canary").returncode == 0  # it exists now
    assert_clean(run(home, "devices", "--group", "canray"), EXIT_NOT_FOUND)
    assert_clean(run(home, "devices", "--assign", "nosuch", "canary"), EXIT_NOT_FOUND)


def test_devices_json_is_real_json_and_the_table_has_names(served):
    home = served[0]
    rows = json.loads(run(home, "devices", "--json").stdout)
    d1 = next(r for r in rows if r["id"] == "d1")
    assert isinstance(d1["errors"], list) and d1["errors"][0]["name"] == "WRONG_HW_REV"
    table = run(home, "devices").stdout
    assert "WRONG_HW_REV" in table and "None" not in table and "heard" in table and "sent" in table and "groups" in table


def test_a_campaign_over_no_device_is_refused(served, files):
    home = served[0]
    out = run(home, "campaign", "create", "empty", "--package", str(files / "v2.fota"), "--board", "esp32_generic")
    assert_clean(out)
    assert "no device" in out.stderr
    assert "empty" not in run(home, "campaign", "list").stdout
    assert json.loads(run(home, "campaign", "list", "--json").stdout) == []
    assert_clean(run(home, "campaign", "report", "NOSUCH", "--json"), EXIT_NOT_FOUND)


def test_a_second_serve_on_the_same_data_directory_is_refused(served):
    home, first, _ = served
    proc, log = _start_serve(home)
    assert proc.wait(timeout=60) == EXIT_UNAVAILABLE
    text = log.read_text()
    assert "another fota serve" in text and "Traceback" not in text
    assert first.poll() is None and (home / "server" / "serve.json").exists()


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc, log = _start_serve(tmp_path, "--port", str(s.getsockname()[1]))
        assert proc.wait(timeout=60) == EXIT_UNAVAILABLE
    text = log.read_text()
    assert "in use" in text and "Traceback" not in text, text


def test_the_embedded_broker_keeps_its_port_across_restarts(tmp_path):
    port = _free_port()
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "ports.json").write_text(json.dumps({"broker": port}))  # as if 1883 had been chosen before
    for _ in range(2):
        proc, _log = _start_serve(tmp_path)
        try:
            info = wait_until(lambda: (tmp_path / "server" / "serve.json").exists()
                         and json.loads((tmp_path / "server" / "serve.json").read_text()), 60, "serve.json")
            assert info["broker"].endswith(f":{port}")
        finally:
            _stop(proc)


def test_the_default_broker_port_is_1883_unless_taken(tmp_path):
    from host_tools.server.ports import MQTT_PORT, _free, broker_port

    port, note = broker_port(tmp_path, "127.0.0.1")
    if _free("127.0.0.1", MQTT_PORT):
        assert port == MQTT_PORT and note is None
    else:
        assert port != MQTT_PORT and "1883" in note
    assert json.loads((tmp_path / "ports.json").read_text()) == {"broker": MQTT_PORT}
    assert broker_port(tmp_path, "127.0.0.1", 0)[0] != 0
