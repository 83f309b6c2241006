"""The HTTP API of `fota serve`: every endpoint, with no token, a read-only token and bad input.

Real parts throughout: the server with its embedded broker and SQLite registry, uvicorn on a free
loopback port, protocol-level devices (ProtoFleet) updating over MQTT, a webhook receiver on loopback.
"""

from __future__ import annotations

import json
import re
import threading

import paho.mqtt.client as mqtt
import pytest

from apikit import ApiStack, HookReceiver, device_specs, wait_until
from host_tools import protocol
from host_tools.errors import FotaError
from host_tools.server.api import ApiService
from simkit import app_image, fw_package

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]

DEVICES = {"p0": ("ok", "A"), "p1": ("ok", "A"), "p2": ("fail-self-test", "A"), "p3": ("ok", "A"), "p4": ("ok", "B")}
PKG = re.compile(r"^[0-9a-f]{16}$")


@pytest.fixture(scope="module")
def hooks():
    receiver = HookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, hooks):
    s = ApiStack(tmp_path_factory.mktemp("api") / "server", device_specs(DEVICES), webhooks=(hooks.url,))
    yield s
    s.close()


def package(version: str, sequence: int, **kw) -> bytes:
    return fw_package(app_image(version), version=version, sequence=sequence, **kw)


def upload(client, data: bytes):
    return client.post("/api/packages", content=data, headers={"Content-Type": "application/octet-stream"})


# (method, path, json body) of every endpoint; {pkg} is filled with a stored package id
READS = [("GET", "/api/devices", None), ("GET", "/api/devices/p0", None), ("GET", "/api/groups", None),
         ("GET", "/api/packages", None), ("GET", "/api/packages/{pkg}", None), ("GET", "/api/campaigns", None),
         ("GET", "/api/campaigns/c-ro", None), ("GET", "/api/campaigns/c-ro/report", None), ("GET", "/api/fleet", None),
         ("GET", "/api/audit", None), ("GET", "/api/webhooks", None), ("GET", "/api/server", None), ("GET", "/api/whoami", None),
         ("GET", "/metrics", None), ("GET", "/api/events/stream", None)]
WRITES = [("PUT", "/api/devices/p0/groups", {"names": ["x"]}), ("PUT", "/api/devices/p0/tags", {"names": ["x"]}),
          ("POST", "/api/packages", None), ("POST", "/api/deploy", {"package": "{pkg}", "devices": ["p0"]}),
          ("POST", "/api/campaigns", {"name": "c-new", "package": "{pkg}"}), ("POST", "/api/campaigns/c-ro/start", None),
          ("POST", "/api/campaigns/c-ro/pause", None), ("POST", "/api/campaigns/c-ro/resume", None),
          ("POST", "/api/campaigns/c-ro/abort", None)]


def _call(client, method, path, body, pkg):
    path = path.format(pkg=pkg)
    if body is not None:
        body = json.loads(json.dumps(body).replace("{pkg}", pkg))
    if path == "/api/packages" and method == "POST":
        return upload(client, package("9.0.0", 9))
    return client.request(method, path, json=body)


def snapshot(stack) -> tuple:
    reg = stack.server.registry
    return (json.dumps(reg.devices(), default=str), len(reg.offers()), json.dumps(reg.campaigns(), default=str),
            len(reg.packages()), len(stack.server.api.app.state.audit.entries(10000)))


@pytest.fixture(scope="module")
def pkg(stack):
    answer = upload(stack.op, package("2.0.0", 2))
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_openapi_document_lists_every_endpoint_and_health_needs_no_token(stack):
    doc = stack.anon.get("/openapi.json").json()
    paths = set(doc["paths"])
    for _, path, _ in READS + WRITES:
        templ = re.sub(r"/p0(/|$)", r"/{device}\1", path).replace("{pkg}", "{package}").replace("c-ro", "{name}")
        templ = re.sub(r"\{name\}/(start|pause|resume|abort)$", "{name}/{action}", templ)
        assert templ in paths, templ
    assert stack.anon.get("/healthz").json() == {"ok": True}
    assert stack.anon.get("/console/").status_code == 200


def test_every_endpoint_refuses_a_missing_or_unknown_token_and_changes_nothing(stack, pkg):
    before = snapshot(stack)
    bad = {"Authorization": "Bearer not-a-token"}
    for method, path, body in READS + WRITES:
        assert _call(stack.anon, method, path, body, pkg).status_code == 401, path
        stack.anon.headers.update(bad)
        try:
            assert _call(stack.anon, method, path, body, pkg).status_code == 401, path
        finally:
            stack.anon.headers.pop("Authorization")
    assert snapshot(stack) == before


def test_read_only_token_reads_but_every_change_is_403_and_changes_nothing(stack, pkg):
    # a campaign to read (over every device: an empty one is refused since issue 16); never started
    stack.op.post("/api/campaigns", json={"name": "c-ro", "package": pkg, "waves": ["100%"]}).raise_for_status()
    before = snapshot(stack)
    for method, path, body in WRITES:
        answer = _call(stack.ro, method, path, body, pkg)
        assert answer.status_code == 403 and "read-only" in answer.json()["detail"], path
    assert snapshot(stack) == before
    for method, path, _ in READS:
        if path != "/api/events/stream":
            assert stack.ro.request(method, path.format(pkg=pkg)).status_code == 200, path
    assert stack.ro.get("/api/whoami").json() == {"name": "viewer", "role": "read"}


def test_devices_filters_detail_groups_and_tags(stack):
    assert {d["id"] for d in stack.ro.get("/api/devices").json()} == set(DEVICES)
    assert [d["id"] for d in stack.ro.get("/api/devices", params={"hw_rev": "B"}).json()] == ["p4"]
    assert len(stack.ro.get("/api/devices", params={"version": "1.0.0", "state": "idle", "online": True}).json()) == 5
    for dev, group in (("p0", "canary"), ("p1", "canary"), ("p2", "canary")):
        answer = stack.op.put(f"/api/devices/{dev}/groups", json={"names": [group]})
        assert answer.status_code == 200 and answer.json()["groups"] == [group]
    stack.op.put("/api/devices/p3/tags", json={"names": ["outdoor"]}).raise_for_status()
    assert [d["id"] for d in stack.ro.get("/api/devices", params={"group": "canary"}).json()] == ["p0", "p1", "p2"]
    assert [d["id"] for d in stack.ro.get("/api/devices", params={"tag": "outdoor"}).json()] == ["p3"]
    assert stack.ro.get("/api/groups").json() == [{"name": "canary", "devices": 3, "versions": {"1.0.0": 3}}]
    one = stack.ro.get("/api/devices/p0").json()
    assert one["board"] == "sim" and one["online"] and one["in_flight"] is None and "events" in one and one["errors"] == []
    entry = stack.ro.get("/api/audit", params={"action": "device.groups"}).json()[0]
    assert entry["who"] == "operator" and entry["target"] == "p2" and entry["detail"]["after"] == ["canary"] and entry["t"] > 0
    before = snapshot(stack)
    assert stack.ro.get("/api/devices/nosuch").status_code == 404
    assert stack.ro.get("/api/devices", params={"state": "bogus"}).status_code == 422
    assert stack.op.put("/api/devices/nosuch/groups", json={"names": ["x"]}).status_code == 404
    assert stack.op.put("/api/devices/p0/groups", json={"names": ["bad name!"]}).status_code == 422
    assert stack.op.put("/api/devices/p0/groups", json={"groups": "x"}).status_code == 422
    assert stack.op.put("/api/devices/p0/groups", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    assert snapshot(stack) == before


def test_package_upload_is_checked_like_fota_verify(stack, pkg, tmp_path):
    listed = stack.ro.get("/api/packages").json()
    assert pkg in [p["id"] for p in listed]
    one = stack.ro.get(f"/api/packages/{pkg}").json()
    assert one["version"] == "2.0.0" and one["manifest"]["sequence"] == 2 and one["hw_revs"] == ["A"] and PKG.match(one["key_id"])
    before = snapshot(stack)
    assert upload(stack.op, b"not a package at all").status_code == 422
    good = bytearray(package("2.1.0", 21))
    good[-1] ^= 0xFF  # payload no longer matches the signed digest
    refused = upload(stack.op, bytes(good))
    assert refused.status_code == 422 and refused.json()["detail"]["problems"]
    assert stack.op.post("/api/packages", content=package("2.1.0", 21), headers={"Content-Type": "text/plain"}).status_code == 415
    assert stack.ro.get("/api/packages/0123456789abcdef").status_code == 404
    assert stack.ro.get("/api/packages/NOT-AN-ID").status_code == 422
    # with trusted keys on the server, a package signed by another key is refused
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from host_tools.image.keys import FileSigner

    trusted = stack.server.config.data_dir / "trusted"
    trusted.mkdir()
    try:
        from simkit import session_signer

        (trusted / "release.pub").write_bytes(session_signer().public_key.to_pem())
        other = FileSigner(Ed25519PrivateKey.generate())
        answer = upload(stack.op, package("2.2.0", 22, signer=other))
        assert answer.status_code == 422 and "unknown key id" in json.dumps(answer.json())
    finally:
        for p in trusted.iterdir():
            p.unlink()
        trusted.rmdir()
    assert snapshot(stack) == before


def test_key_list_push_refuses_malformed_hex_with_a_4xx(stack):
    before = snapshot(stack)
    for body in ({"keylist": "a" * 165, "devices": ["p3"]},  # odd length: not bytes
                 {"keylist": "ab" * 90, "devices": ["p3"]},  # bytes, but no root-signed key list
                 {"keylist": "ab" * 90, "devices": ["nosuch"]}):
        assert stack.op.post("/api/keylist", json=body).status_code == 422, body
    assert snapshot(stack) == before


def test_deploy_offers_now_and_refuses_bad_requests(stack, pkg):
    before = snapshot(stack)
    for body in ({"package": "0123456789abcdef", "devices": ["p3"]}, {"package": pkg, "devices": ["nosuch"]},
                 {"package": pkg, "devices": ["p3"], "group": "canary"}, {"package": pkg}, {"package": pkg, "group": "empty"},
                 {"package": pkg, "devices": ["p3"], "chunk": 10**6}, {"package": pkg, "devices": ["p3"], "policy": "now"}):
        assert stack.op.post("/api/deploy", json=body).status_code == 422, body
    assert snapshot(stack) == before
    answer = stack.op.post("/api/deploy", json={"package": pkg, "devices": ["p3"]})
    assert answer.status_code == 201 and answer.json()["offers"][0]["device"] == "p3"
    offer = answer.json()["offers"][0]["offer"]
    wait_until(lambda: stack.server.registry.offer(offer).status == "SUCCEEDED", 60, "p3 updated")
    wait_until(lambda: stack.ro.get("/api/devices/p3").json()["version"] == "2.0.0", 10, "p3 reports 2.0.0")
    assert "committed" in [e["event"] for e in stack.ro.get("/api/devices/p3").json()["events"]]
    assert stack.ro.get("/api/audit", params={"action": "deploy"}).json()[0]["detail"]["devices"] == ["p3"]


def _stream(stack, seen: list, stop: threading.Event) -> None:
    with stack.ro.stream("GET", "/api/events/stream", timeout=30) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
            if stop.is_set():
                return


def test_campaign_gate_pause_resume_report_webhooks_and_event_stream(stack, hooks):
    pkg3 = upload(stack.op, package("3.0.0", 3)).json()["id"]
    seen: list[dict] = []
    stop = threading.Event()
    reader = threading.Thread(target=_stream, args=(stack, seen, stop), daemon=True)
    reader.start()
    bad = [{"name": "c1", "package": pkg3, "waves": ["50x%"]}, {"name": "c1", "package": "0123456789abcdef"},
           {"name": "c1", "package": pkg3, "window": "0 2 * * *"}, {"name": "c1", "package": pkg3, "preset": "yolo"},
           {"name": "c 1", "package": pkg3}, {"name": "c1", "package": pkg3, "error_threshold": 2}]
    before = snapshot(stack)
    for body in bad:
        assert stack.op.post("/api/campaigns", json=body).status_code == 422, body
    assert snapshot(stack) == before
    spec = {"name": "c1", "package": pkg3, "waves": ["canary", "100%"], "error_threshold": 0.3, "min_sample": 3, "max_in_flight": 3}
    plan = stack.op.post("/api/campaigns", json=spec)
    assert plan.status_code == 201
    assert {"device": "p4", "reason": "hardware revision B not in A"} in plan.json()["excluded"]
    assert stack.op.post("/api/campaigns", json=spec).status_code == 409
    assert stack.op.post("/api/campaigns/c1/resume").status_code == 409  # CREATED: nothing to resume
    assert stack.op.post("/api/campaigns/nosuch/start").status_code == 404
    assert stack.op.post("/api/campaigns/c1/explode").status_code == 422
    assert stack.op.post("/api/campaigns/c1/start").json()["status"] == "RUNNING"
    paused = wait_until(lambda: (c := stack.ro.get("/api/campaigns/c1").json())["campaign"]["status"] == "PAUSED" and c, 60, "the gate")
    assert "1 of 3 finished devices failed" in paused["paused_because"]
    assert paused["waves"][0]["finished"] == 3 and paused["waves"][0]["failed"] == 1
    hook = wait_until(lambda: [h for h in hooks.received if h["event"] == "campaign.paused"], 10, "the paused webhook")[0]
    assert hook["campaign"] == "c1" and hook["by_gate"] is True
    assert stack.op.post("/api/campaigns/c1/resume").json()["status"] == "RUNNING"
    wait_until(lambda: stack.ro.get("/api/campaigns/c1").json()["campaign"]["status"] == "COMPLETED", 60, "completion")
    wait_until(lambda: [h for h in hooks.received if h["event"] == "campaign.completed"], 10, "the completed webhook")
    rep = stack.ro.get("/api/campaigns/c1/report").json()
    assert rep["by_status"] == {"SUCCEEDED": 3, "ROLLED_BACK": 1, "EXCLUDED": 1}
    assert rep["by_hw_rev"] == {"A": {"ROLLED_BACK": 1}, "B": {"EXCLUDED": 1}}
    assert rep["by_reason"]["ROLLED_BACK: SELF_TEST_FAILED: app"] == 1
    # the protocol devices here send `committed` without downtime_ms (as devices from before issue 22): not measured
    assert [(w["name"], w["devices"], w["worst_ms"]) for w in rep["downtime"]] == [("canary", 0, None), ("100%", 0, None)]
    assert rep["expected_downtime"] is None and all(r["downtime_ms"] is None for r in rep["devices"])
    assert paused["waves"][0]["downtime"] == {"devices": 0, "median_ms": None, "worst_ms": None} and paused["expected_downtime"] is None
    assert stack.op.post("/api/campaigns/c1/pause").status_code == 409
    stop.set()
    wait_until(lambda: any(m["type"] == "campaign" and m["status"] == "COMPLETED" for m in seen), 10, "the stream's campaign message")
    events = {m["event"] for m in seen if m["type"] == "event"}
    assert {"downloading", "progress", "committed", "rolled_back"} <= events
    # abort: another campaign, aborted by the operator, sends its webhook; the audit log has every step.
    # A newer package: every device took 3.0.0, rolled it back or cannot, and a campaign over no device is refused.
    pkg4 = upload(stack.op, package("4.0.0", 4)).json()["id"]
    stack.op.post("/api/campaigns", json={"name": "c2", "package": pkg4}).raise_for_status()
    assert stack.op.post("/api/campaigns/c2/abort").json()["status"] == "ABORTED"
    wait_until(lambda: [h for h in hooks.received if h["event"] == "campaign.aborted" and h["campaign"] == "c2"], 10, "aborted webhook")
    actions = [(e["action"], e["target"]) for e in stack.ro.get("/api/audit").json()]
    for step in ("create", "start", "resume"):
        assert (f"campaign.{step}", "c1") in actions
    assert ("campaign.abort", "c2") in actions
    assert stack.ro.get("/api/webhooks").json()["deliveries"][-1]["status"] == 204


def test_metrics_in_prometheus_text_format_count_chunks_and_malformed_messages(stack):
    # an enrolled device that sends junk on its own topics (the broker takes no anonymous login, docs/SECURITY.md):
    # a report with a valid MAC whose body is not JSON, and a chunk request that does not parse
    cred = stack.server.identities.enroll("garbage")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="garbage")
    client.username_pw_set(cred.user, cred.password)
    host, port = stack.server.broker_url.rsplit("/", 1)[1].split(":")
    client.connect(host, int(port))
    client.loop_start()
    try:
        client.publish("fota/garbage/state", protocol.seal_report(cred.key, "garbage", "state", 1, b"{not json"),
                       qos=1).wait_for_publish(5)
        client.publish("fota/garbage/get", b"\x01", qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()
    wait_until(lambda: stack.server.mqtt.malformed >= 2, 10, "the malformed messages counted")
    answer = stack.ro.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = answer.text
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+]+$')
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or sample.match(line), line
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values['fota_chunks_served_total{transport="mqtt"}'] > 0
    assert values['fota_malformed_messages_total{transport="mqtt"}'] >= 2
    assert values['fota_offers{status="SUCCEEDED"}'] >= 4
    assert values['fota_campaign_progress_ratio{campaign="c1"}'] == 1.0
    assert values['fota_devices{state="idle",version="3.0.0"}'] >= 2


def test_fleet_overview_and_adoption_history(stack):
    fleet = stack.ro.get("/api/fleet").json()
    assert fleet["devices"] == 5 and fleet["online"] == 5 and sum(fleet["by_version"].values()) == 5
    assert len(fleet["adoption"]) >= 2 and "3.0.0" in fleet["adoption"][-1]["counts"]


def test_a_port_in_use_is_a_clear_error(stack):
    port = int(stack.url.rsplit(":", 1)[1])
    with pytest.raises(FotaError, match="cannot listen"):
        ApiService(stack.server, port=port).start()
