"""The CLI's server commands as clients of the HTTP API, from "another machine" (an empty data directory).

A real server (embedded broker, SQLite, API on a free port) with protocol-level devices; the
commands get only --server URL and --token, never the registry file.
"""

from __future__ import annotations

import json

import pytest

from apikit import ApiStack, device_specs, wait_until
from host_tools.cli import main
from simkit import app_image, fw_package

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = ApiStack(tmp_path_factory.mktemp("cli-api") / "server",
                 device_specs({"c0": ("ok", "A"), "c1": ("ok", "A"), "c2": ("fail-self-test", "A")}))
    yield s
    s.close()


def fota(stack, tmp_path, *args, role="operator"):
    token = stack.server.api.tokens.token_for(role)
    return main([*args, "--data", str(tmp_path / "elsewhere"), "--server", stack.url, "--token", token])


def test_devices_deploy_and_campaign_from_another_machine(stack, tmp_path, capsys):
    assert fota(stack, tmp_path, "devices", "--assign", "c0", "canary") == 4  # a typo makes no group
    assert fota(stack, tmp_path, "devices", "--assign", "c0", "canary", "--create-group") == 0
    listing = capsys.readouterr().out
    assert "c0" in listing and "c2" in listing and "1.0.0" in listing
    assert stack.server.registry.device("c0")["groups"] == ["canary"]
    v2 = tmp_path / "v2.fota"
    v2.write_bytes(fw_package(app_image("2.0.0"), version="2.0.0", sequence=2))
    assert fota(stack, tmp_path, "deploy", str(v2), "--group", "canary") == 0
    assert "2.0.0 (seq 2) -> c0" in capsys.readouterr().out
    wait_until(lambda: stack.server.registry.device("c0")["version"] == "2.0.0", 60, "c0 on 2.0.0")
    assert fota(stack, tmp_path, "devices", "--json") == 0
    rows = {d["id"]: d for d in json.loads(capsys.readouterr().out)}
    assert rows["c0"]["version"] == "2.0.0"

    v3 = tmp_path / "v3.fota"
    v3.write_bytes(fw_package(app_image("3.0.0"), version="3.0.0", sequence=3))
    assert fota(stack, tmp_path, "campaign", "create", "cli-r3", "--package", str(v3), "--waves", "100%", "--error", "1", "--success", "0.5",
                "--min-sample", "5") == 0
    assert "wave 1 (100%): 3 device(s)" in capsys.readouterr().out
    assert fota(stack, tmp_path, "campaign", "start", "cli-r3") == 0
    wait_until(lambda: stack.server.registry.campaign("cli-r3")["status"] == "COMPLETED", 60, "the campaign completes")
    assert fota(stack, tmp_path, "campaign", "status", "cli-r3") == 0
    assert "COMPLETED" in capsys.readouterr().out
    assert fota(stack, tmp_path, "campaign", "report", "cli-r3") == 0
    rep = capsys.readouterr().out
    assert "SUCCEEDED    2" in rep and "1 x ROLLED_BACK: SELF_TEST_FAILED: app" in rep
    actions = [e["action"] for e in stack.server.api.app.state.audit.entries(100)]
    assert {"device.groups", "deploy", "package.upload", "campaign.create", "campaign.start"} <= set(actions)


def test_refusals_reach_the_operator_as_errors(stack, tmp_path, capsys):
    v2 = tmp_path / "v2.fota"
    v2.write_bytes(fw_package(app_image("2.0.0"), version="2.0.0", sequence=2))
    offers = len(stack.server.registry.offers())
    assert fota(stack, tmp_path, "deploy", str(v2), "--device", "c1", role="read") == 1
    assert "403" in capsys.readouterr().err
    assert fota(stack, tmp_path, "campaign", "pause", "nosuch") == 4
    assert "404 no campaign 'nosuch'" in capsys.readouterr().err
    assert fota(stack, tmp_path, "deploy", str(v2), "--device", "nosuch") == 4
    assert "unknown device(s): nosuch" in capsys.readouterr().err
    bad = tmp_path / "bad.fota"
    bad.write_bytes(b"garbage")
    assert fota(stack, tmp_path, "deploy", str(bad), "--device", "c1") == 1
    assert "422" in capsys.readouterr().err
    assert len(stack.server.registry.offers()) == offers
    assert main(["devices", "--data", str(tmp_path / "elsewhere"), "--server", stack.url]) == 1
    assert "no API token" in capsys.readouterr().err


def test_api_tokens_never_start_with_a_dash():
    # one in 64 did (URL-safe base64): `fota ... --token TOKEN` then took it for an option and refused the command
    from host_tools.server.api.auth import new_token

    assert not any(new_token().startswith("-") for _ in range(2000))
