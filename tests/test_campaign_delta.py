"""Delta campaigns (issue 20): a full package plus deltas from bases in the fleet.

Each device is offered the delta whose base is the image it reports running, else the full
package; a delta it refuses as not fitting (BASE_MISMATCH 39, PATCH 40) is followed by the full
package once. Scripted at the registry level first, then over MQTT with virtual boards.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from host_tools.fleet.campaign import COMPLETED, CampaignError, CampaignRunner, CampaignSpec, report
from host_tools.fleet.render import render_report_data
from host_tools.image.package import Manifest, make_package
from host_tools.server.packages import PackageStore
from host_tools.server.registry import Registry
from simkit import session_signer

BASE_A = bytes(range(256)) * 40
BASE_B = bytes(reversed(range(256))) * 40
NEW = BASE_A[:3000] + b"the new release" + BASE_A[3000:]


def manifest(version="2.0.0", sequence=5) -> Manifest:
    return Manifest(sequence=sequence, version=version, board="sim", chip_id=0, hw_revs=("A",), image_size=0, image_sha256=b"")


def package(image=NEW, base=None, **kw) -> bytes:
    encoding = "delta" if base is not None else "zlib"
    return make_package(image, manifest(**kw), session_signer(), encoding=encoding, base=base).to_bytes()


class Fleet:
    """A registry with stored packages and devices whose running images and outcomes the test decides."""

    def __init__(self, target, tmp_path, images: dict[str, bytes | None]):
        self.reg = Registry(target)
        self.store = PackageStore(tmp_path / "packages")
        self.offers: list[tuple[str, str]] = []
        for dev, image in images.items():
            state = {"board": "sim", "hw_rev": "A", "version": "1.0.0", "seq": 1}
            self.reg.record_state(dev, state | ({"image": hashlib.sha256(image).hexdigest()} if image else {}))
        self.runner = CampaignRunner(self.reg, offer=self.offer, withdraw=lambda d: None)

    def add(self, data: bytes) -> str:
        pid, parsed = self.store.add(data)
        self.reg.add_package(pid, str(self.store.path(pid)), parsed.manifest)
        return pid

    def offer(self, device, package, *, chunk, policy, record=None):
        self.offers.append((device, package))
        return self.reg.create_offer(device, package, chunk=chunk, policy=0)

    def finish(self, device, status="SUCCEEDED", code=None, reason=None):
        self.reg.set_offer_status(self.reg.offers(device)[-1].id, status, code=code, reason=reason)

    def close(self):
        self.reg.close()


@pytest.fixture
def fleet(registry_target, tmp_path):
    made = []

    def make(images):
        made.append(Fleet(registry_target, tmp_path, images))
        return made[-1]

    yield make
    for f in made:
        f.close()


@pytest.mark.host
def test_each_device_gets_the_delta_from_its_image_or_the_full_package(fleet):
    f = fleet({"a": BASE_A, "b": BASE_B, "c": b"an image no delta is made from", "d": None})
    full, da, db = f.add(package()), f.add(package(base=BASE_A)), f.add(package(base=BASE_B))
    plan = f.runner.create(CampaignSpec(name="c", package=full, deltas=[da, db]))
    assert len(plan.targets) == 4
    f.runner.start("c")
    f.runner.tick()
    assert dict(f.offers) == {"a": da, "b": db, "c": full, "d": full}  # d: a factory image, its digest unknown
    for dev in "abcd":
        f.finish(dev)
    f.runner.tick()
    rep = report(f.reg, "c")
    assert f.reg.campaign("c")["status"] == COMPLETED and rep["by_status"] == {"SUCCEEDED": 4}
    assert rep["offered"] == {"delta": 2, "full": 2} and rep["fallbacks"] == {}


@pytest.mark.host
@pytest.mark.parametrize("code, name", [(39, "BASE_MISMATCH"), (40, "PATCH")])
def test_a_delta_that_does_not_fit_falls_back_to_the_full_package_once(fleet, code, name):
    f = fleet({"a": BASE_A, "b": BASE_A})
    full, da = f.add(package()), f.add(package(base=BASE_A))
    f.runner.create(CampaignSpec(name="c", package=full, deltas=[da], error_threshold=1.0, min_sample=1))
    f.runner.start("c")
    f.runner.tick()
    assert dict(f.offers) == {"a": da, "b": da}
    f.finish("a", "FAILED", code, f"{name}: base")  # a's reported image was stale
    f.finish("b")
    f.runner.tick()
    assert f.offers[-1] == ("a", full)
    f.finish("a", "FAILED", 17, "FLASH: x")  # the full package failing as well: a failure, no second fallback
    f.runner.tick()
    f.runner.tick()
    assert [p for d, p in f.offers if d == "a"] == [da, full]
    rep = report(f.reg, "c")
    assert rep["by_status"] == {"SUCCEEDED": 1, "FAILED": 1}
    assert list(rep["fallbacks"]) == ["a"] and rep["fallbacks"]["a"]["code"] == code
    assert rep["offered"] == {"delta": 1, "full": 1}
    text = render_report_data(rep, "c")
    assert "1 fell back from a delta to the full package" in text and f"a: delta {da} refused ({name}: base)" in text


@pytest.mark.host
def test_deltas_must_make_the_full_packages_image(fleet):
    f = fleet({"a": BASE_A})
    full = f.add(package())
    other = f.add(package(image=NEW + b"!", base=BASE_A))
    with pytest.raises(CampaignError, match="not the full package's"):
        f.runner.create(CampaignSpec(name="c", package=full, deltas=[other]))
    with pytest.raises(CampaignError, match="not a delta package"):
        f.runner.create(CampaignSpec(name="c", package=full, deltas=[f.add(package(version="2.0.1"))]))
    with pytest.raises(CampaignError, match="is a delta"):
        f.runner.create(CampaignSpec(name="c", package=f.add(package(base=BASE_B)), deltas=[f.add(package(base=BASE_A))]))
    with pytest.raises(CampaignError, match="sequence"):
        f.runner.create(CampaignSpec(name="c", package=full, deltas=[f.add(package(base=BASE_A, sequence=6))]))
    assert f.reg.campaign("c") is None


@pytest.mark.host
def test_cli_create_with_deltas_and_the_report(registry_target, tmp_path, capsys):
    from host_tools.cli import main

    if not isinstance(registry_target, type(tmp_path)):
        pytest.skip("the CLI reads the registry from the data directory (SQLite)")
    data = tmp_path
    for name, blob in (("full.fota", package()), ("da.fota", package(base=BASE_A)), ("wrong.fota", package(image=BASE_B, base=BASE_A))):
        (tmp_path / name).write_bytes(blob)
    reg = Registry(data / "registry.sqlite")
    try:
        reg.record_state("a", {"board": "sim", "hw_rev": "A", "version": "1.0.0", "seq": 1, "image": hashlib.sha256(BASE_A).hexdigest()})
        create = ["campaign", "create", "--package", str(tmp_path / "full.fota"), "--data", str(data)]
        assert main([*create[:2], "bad", *create[2:], "--delta", str(tmp_path / "wrong.fota")]) != 0
        assert "not the full package's" in capsys.readouterr().err
        assert main([*create[:2], "d1", *create[2:], "--delta", str(tmp_path / "da.fota")]) == 0
        assert "for devices running image " + hashlib.sha256(BASE_A).hexdigest()[:16] in capsys.readouterr().out
        spec = reg.campaign("d1")["spec"]
        assert list(spec["delta_bases"]) == [hashlib.sha256(BASE_A).hexdigest()] and len(spec["deltas"]) == 1
    finally:
        reg.close()


@pytest.mark.host
@pytest.mark.timeout(180)
def test_api_campaign_spec_takes_deltas(tmp_path):
    from apikit import ApiStack, device_specs
    from simkit import app_image

    stack = ApiStack(tmp_path / "server", device_specs({"q0": ("ok", "A")}))
    try:
        def upload(data: bytes) -> str:
            r = stack.op.post("/api/packages", content=data, headers={"Content-Type": "application/octet-stream"})
            r.raise_for_status()
            return r.json()["id"]

        v1, v2 = app_image("1.0.0"), app_image("2.0.0")
        full, delta = upload(package(image=v2)), upload(package(image=v2, base=v1))
        wrong = upload(package(image=v1, base=v2))
        body = {"name": "dapi", "package": full, "deltas": [wrong]}
        r = stack.op.post("/api/campaigns", json=body)
        assert r.status_code == 422 and "not the full package's" in r.text
        assert stack.op.post("/api/campaigns", json=body | {"deltas": ["NOT-AN-ID"]}).status_code == 422
        r = stack.op.post("/api/campaigns", json=body | {"deltas": [delta]})
        assert r.status_code == 201, r.text
        assert r.json()["spec"]["delta_bases"] == {hashlib.sha256(v1).hexdigest(): delta}
        assert stack.ro.get("/api/campaigns/dapi/report").json()["offered"] == {"delta": 0, "full": 0}
    finally:
        stack.close()


# -- virtual boards over MQTT ------------------------------------------------------------------
@pytest.mark.fw
def test_delta_campaign_on_virtual_boards(tmp_path, fota_mosquitto):
    """a runs v1 and reports it: its delta; b runs another base: the full package; c reports v1 but runs
    another image (its record is stale): the delta is refused (BASE_MISMATCH) and the full package follows."""
    from host_tools.sim.runtime import BoardRun
    from mqttkit import device_id, mqtt_board, start_server, wait_until
    from simkit import fw_image, fw_package

    m = fota_mosquitto
    v1, other = fw_image("1.0.0"), fw_image("1.0.0", pad=4096)
    full = fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2, encoding="zlib")
    delta_m = Manifest(sequence=2, version="2.0.0", board="sim", chip_id=0, hw_revs=("A",), image_size=0, image_sha256=b"")
    delta = make_package(fw_image("2.0.0"), delta_m, session_signer(), encoding="delta", base=v1).to_bytes()
    srv = start_server(tmp_path / "server", m.server_url, m)
    try:
        boards = {}
        for name, image, reports in (("a", v1, v1), ("b", other, other), ("c", other, v1)):
            board = mqtt_board(tmp_path, name, host=m.host, port=m.port, image=image, ids=srv.identities, broker=m)
            # what the board keeps after an update committed `reports` (c: then reflashed over USB with `other`)
            board.write_file("fota_state.json", json.dumps({"image": hashlib.sha256(reports).hexdigest()}))
            boards[name] = board
        ids = {name: device_id(b) for name, b in boards.items()}
        runs = [BoardRun(b) for b in boards.values()]
        for run in runs:
            run.__enter__()
        try:
            wait_until(lambda: all(srv.registry.running_image(i) for i in ids.values()), 60, "the boards' images")
            full_id, delta_id = srv.add_package(full), srv.add_package(delta)
            with srv.campaign_lock:
                srv.campaigns.create(CampaignSpec(name="dc", package=full_id, deltas=[delta_id], error_threshold=1.0,
                                                  min_sample=1, use_window=False))
                srv.campaigns.start("dc")
            wait_until(lambda: srv.registry.campaign("dc")["status"] == COMPLETED, 150, "the campaign to complete")
        finally:
            for run in runs:
                run.__exit__(None, None, None)
        rep = report(srv.registry, "dc")
        assert rep["by_status"] == {"SUCCEEDED": 3}, rep["devices"]
        packages = {ids[n]: [o.package for o in srv.registry.offers(ids[n])] for n in ids}
        assert packages == {ids["a"]: [delta_id], ids["b"]: [full_id], ids["c"]: [delta_id, full_id]}
        assert list(rep["fallbacks"]) == [ids["c"]] and rep["fallbacks"][ids["c"]]["code"] == 39
        image = srv.registry.package_image(full_id)  # the delta's as well (create checks it)
        assert all(srv.registry.running_image(i) == image for i in ids.values())
    finally:
        srv.stop()
